"""Partitioners: which training samples each client holds.

All are pure functions of (labels, number of clients, spec, seed) that return one index
array per client; every sample is assigned to exactly one client. A client is its index
slice of one flat index array (``Partitions``) until it trains: a million clients cost
two numpy arrays, not a million arrays or datasets.

For the built-in tasks we write these ourselves rather than use ``flwr-datasets``: its
partitioners operate on Hugging Face ``datasets.Dataset`` objects (a copy of the data),
while ours need only the label vector, are seedable and are property-tested. Hugging Face
datasets (``--dataset``, tasks/hf_data.py) are split by flwr-datasets' partitioners, by the
column a partition names (``natural:COLUMN``, ``dirichlet:ALPHA:COLUMN``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, overload

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


class Partitions(Sequence[np.ndarray]):
    """Every client's index array, stored as two flat arrays (CSR): ``order`` holds the
    sample indices client by client, ``offsets[c]:offsets[c + 1]`` is client ``c``'s
    slice. A million clients cost ``offsets`` (8 MB), not a million array objects;
    ``parts[c]`` is a read-only view made when asked for."""

    def __init__(self, order: np.ndarray, offsets: np.ndarray) -> None:
        self.order = np.asarray(order, dtype=np.int64)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.order.flags.writeable = False
        self.offsets.flags.writeable = False

    @classmethod
    def from_owners(cls, owners: np.ndarray, num_clients: int) -> Partitions:
        """Client ``owners[i]`` holds sample ``i``; each client's indices ascending."""
        order = np.argsort(owners, kind="stable")
        counts = np.bincount(owners, minlength=num_clients)
        return cls(order, np.concatenate(([0], np.cumsum(counts))))

    @classmethod
    def from_arrays(cls, parts: Sequence[np.ndarray]) -> Partitions:
        """Pack index arrays given one by one (each client's order kept)."""
        sizes = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
        order = np.concatenate(parts) if len(parts) else np.empty(0, np.int64)
        return cls(order, np.concatenate(([0], np.cumsum(sizes))))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, index: slice) -> list[np.ndarray]: ...
    def __getitem__(self, index: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"client {index} is outside 0..{n - 1}")
        index %= n
        return self.order[self.offsets[index] : self.offsets[index + 1]]

    def sizes(self) -> np.ndarray:
        """Each client's number of samples."""
        return np.diff(self.offsets)


def partition_indices(
    labels: np.ndarray,
    num_clients: int,
    spec: PartitionSpec,
    *,
    seed: int,
    groups: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Split ``range(len(labels))`` into ``num_clients`` disjoint, sorted index arrays."""
    return list(partition(labels, num_clients, spec, seed=seed, groups=groups))


def partition(
    labels: np.ndarray,
    num_clients: int,
    spec: PartitionSpec,
    *,
    seed: int,
    groups: np.ndarray | None = None,
) -> Partitions:
    """:func:`partition_indices` as compact :class:`Partitions`: time and memory
    O(samples + clients), whatever the number of clients (a million included)."""
    if num_clients < 1:
        raise ValueError("num_clients must be >= 1")
    if spec.column:
        raise ValueError(
            f"partition {spec}: a COLUMN names a column of a Hugging Face dataset; "
            "use it with --dataset, or leave ':COLUMN' out"
        )
    rng = np.random.default_rng(seed)
    n = len(labels)
    owners = np.empty(n, dtype=np.int64)
    if spec.kind == "iid":
        owners[rng.permutation(n)] = _split_sections(n, num_clients)
    elif spec.kind == "dirichlet":
        _dirichlet(labels, num_clients, spec.alpha, rng, owners)
    elif spec.kind == "shards":
        _shards(labels, num_clients, spec.shards_per_client, rng, owners)
    elif spec.kind == "natural":
        if groups is None:
            raise ValueError(
                "partition 'natural' needs a task with natural users "
                "(synthetic-logreg); use iid or dirichlet:ALPHA instead"
            )
        owners[:] = np.asarray(groups, dtype=np.int64) % num_clients
    else:  # pragma: no cover - PartitionSpec.parse guards this
        raise ValueError(f"unknown partition kind {spec.kind!r}")
    return Partitions.from_owners(owners, num_clients)


def _split_sections(length: int, sections: int) -> np.ndarray:
    """The section of each position of ``np.array_split(range(length), sections)``."""
    each, extras = divmod(length, sections)
    # The first ``extras`` sections hold ``each + 1`` positions, the rest ``each``.
    big = extras * (each + 1)
    pos = np.arange(length, dtype=np.int64)
    if each == 0:
        return pos  # every position is its own section
    return np.where(pos < big, pos // (each + 1), extras + (pos - big) // each)


def _dirichlet(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    rng: np.random.Generator,
    owners: np.ndarray,
) -> None:
    """Label skew (Hsu et al. 2019): each class is split by proportions ~ Dir(alpha)."""
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        proportions = rng.dirichlet(np.full(num_clients, alpha))
        cuts = (np.cumsum(proportions)[:-1] * len(idx)).astype(int)
        # np.split(idx, cuts): position j goes to the client whose cut range holds it.
        owners[idx] = np.searchsorted(cuts, np.arange(len(idx)), side="right")


def _shards(
    labels: np.ndarray,
    num_clients: int,
    k: int,
    rng: np.random.Generator,
    owners: np.ndarray,
) -> None:
    """McMahan et al. 2017: sort by label, cut into ``num_clients * k`` shards, deal k each."""
    order = np.argsort(labels, kind="stable")
    shards = num_clients * k
    deal = rng.permutation(shards)
    holder = np.empty(shards, dtype=np.int64)
    holder[deal] = np.arange(shards) // k  # client c holds shards deal[c*k:(c+1)*k]
    owners[order] = holder[_split_sections(len(labels), shards)]
