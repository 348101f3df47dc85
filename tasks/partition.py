"""Partitioners: which training samples each client holds.

All are pure functions of (labels, number of clients, spec, seed) that return one index
array per client; every sample is assigned to exactly one client. A client is its index
array until it trains, so 10,000 clients cost 10,000 small arrays, not 10,000 datasets.

For the built-in tasks we write these ourselves rather than use ``flwr-datasets``: its
partitioners operate on Hugging Face ``datasets.Dataset`` objects (a copy of the data),
while ours need only the label vector, are seedable and are property-tested. Hugging Face
datasets (``--dataset``, tasks/hf_data.py) are split by flwr-datasets' partitioners, by the
column a partition names (``natural:COLUMN``, ``dirichlet:ALPHA:COLUMN``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

PartitionKind = Literal["iid", "dirichlet", "shards", "natural"]


@dataclass(frozen=True)
class PartitionSpec:
    """A parsed ``--partition`` value: ``iid``, ``dirichlet:ALPHA[:COLUMN]``, ``shards:K``,
    ``natural[:COLUMN]``. ``column`` names the dataset column a Hugging Face dataset is
    split by (``""``: the dataset's default: its label, or its natural owner)."""

    kind: PartitionKind
    alpha: float = 0.0
    shards_per_client: int = 0
    column: str = ""

    @classmethod
    def parse(cls, text: str) -> PartitionSpec:
        """Parse the command-line form; the error says which forms are valid."""
        name, _, arg = text.strip().partition(":")
        hint = (
            "use iid, dirichlet:ALPHA[:COLUMN] (e.g. dirichlet:0.3), shards:K (e.g. shards:2) "
            "or natural[:COLUMN] (e.g. natural:writer_id)"
        )
        if name == "iid" and not arg:
            return cls("iid")
        if name == "natural":
            if arg.strip() != arg or ":" in arg:
                raise ValueError(f"partition {text!r}: COLUMN is one column name; {hint}")
            return cls("natural", column=arg)
        if name == "dirichlet":
            alpha_text, _, column = arg.partition(":")
            try:
                alpha = float(alpha_text)
            except ValueError:
                raise ValueError(f"partition {text!r}: ALPHA must be a number; {hint}") from None
            if not alpha > 0 or not np.isfinite(alpha):
                raise ValueError(f"partition {text!r}: ALPHA must be > 0; {hint}")
            if column.strip() != column or ":" in column or (arg.endswith(":") and not column):
                raise ValueError(f"partition {text!r}: COLUMN is one column name; {hint}")
            return cls("dirichlet", alpha=alpha, column=column)
        if name == "shards":
            try:
                k = int(arg)
            except ValueError:
                raise ValueError(f"partition {text!r}: K must be an integer; {hint}") from None
            if k < 1:
                raise ValueError(f"partition {text!r}: K must be >= 1; {hint}")
            return cls("shards", shards_per_client=k)
        raise ValueError(f"unknown partition {text!r}; {hint}")

    def __str__(self) -> str:
        column = f":{self.column}" if self.column else ""
        if self.kind == "dirichlet":
            return f"dirichlet:{self.alpha:g}{column}"
        if self.kind == "shards":
            return f"shards:{self.shards_per_client}"
        return f"{self.kind}{column}"


def partition_indices(
    labels: np.ndarray,
    num_clients: int,
    spec: PartitionSpec,
    *,
    seed: int,
    groups: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Split ``range(len(labels))`` into ``num_clients`` disjoint, sorted index arrays."""
    if num_clients < 1:
        raise ValueError("num_clients must be >= 1")
    if spec.column:
        raise ValueError(
            f"partition {spec}: a COLUMN names a column of a Hugging Face dataset; "
            "use it with --dataset, or leave ':COLUMN' out"
        )
    rng = np.random.default_rng(seed)
    n = len(labels)
    if spec.kind == "iid":
        parts = np.array_split(rng.permutation(n), num_clients)
    elif spec.kind == "dirichlet":
        parts = _dirichlet(labels, num_clients, spec.alpha, rng)
    elif spec.kind == "shards":
        parts = _shards(labels, num_clients, spec.shards_per_client, rng)
    elif spec.kind == "natural":
        if groups is None:
            raise ValueError(
                "partition 'natural' needs a task with natural users "
                "(synthetic-logreg); use iid or dirichlet:ALPHA instead"
            )
        parts = [np.flatnonzero(groups % num_clients == c) for c in range(num_clients)]
    else:  # pragma: no cover - PartitionSpec.parse guards this
        raise ValueError(f"unknown partition kind {spec.kind!r}")
    return [np.sort(p).astype(np.int64) for p in parts]


def _dirichlet(
    labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Label skew (Hsu et al. 2019): each class is split by proportions ~ Dir(alpha)."""
    buckets: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        proportions = rng.dirichlet(np.full(num_clients, alpha))
        cuts = (np.cumsum(proportions)[:-1] * len(idx)).astype(int)
        for client, chunk in enumerate(np.split(idx, cuts)):
            if len(chunk):
                buckets[client].append(chunk)
    return [np.concatenate(b) if b else np.empty(0, dtype=np.int64) for b in buckets]


def _shards(
    labels: np.ndarray, num_clients: int, k: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """McMahan et al. 2017: sort by label, cut into ``num_clients * k`` shards, deal k each."""
    order = np.argsort(labels, kind="stable")
    shards = np.array_split(order, num_clients * k)
    deal = rng.permutation(len(shards))
    return [
        np.concatenate([shards[s] for s in deal[c * k : (c + 1) * k]]) for c in range(num_clients)
    ]
