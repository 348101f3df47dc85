"""FedBuff: buffered asynchronous aggregation with staleness weighting.

Nguyen, Malik, Zhan, Yousefpour, Rabbat, Malek, Huba: "Federated Learning with
Buffered Asynchronous Aggregation", AISTATS 2022 (arXiv:2106.06639), Algorithm 1.

Clients train from whatever global model version they received; the server keeps a
buffer, and each time it holds ``M`` updates it applies

    x ← x + η_g · (1/M) · Σᵢ s(τᵢ) · Δᵢ,      s(τ) = (1 + τ)^(−a)

where Δᵢ is client *i*'s update relative to the version it started from and τᵢ its
staleness: how many server versions were published since it started (the paper's
``s(τ) = 1/√(1+τ)`` is ``a = 1/2``). Updates staler than ``max_staleness`` are dropped.

The strategy only combines; keeping ``K`` clients in flight and handing it buffers of
``M`` replies is the coordinator's buffered exchange (``coordinator/buffered.py``).
Each round of the loop is one server version.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from numpy.typing import NDArray

from strategies.aggregation import StreamingMean
from strategies.streaming import reply_arrays

log = logging.getLogger(__name__)

STALENESS_MEAN = "staleness-mean"
STALENESS_MAX = "staleness-max"
STALE_DROPPED = "stale-dropped"


def staleness_weight(staleness: int, exponent: float) -> float:
    """``s(τ) = (1 + τ)^(−a)``: 1 for a fresh update, decreasing with staleness."""
    if staleness < 0:
        raise ValueError(f"staleness must be >= 0, got {staleness}")
    return float((1.0 + staleness) ** (-exponent))


class _Deltas(Mapping[str, NDArray]):
    """``reply − base`` one array at a time (each difference decoded on access)."""

    def __init__(self, reply: ArrayRecord, base: ArrayRecord) -> None:
        if set(reply) != set(base):
            raise ValueError("the reply's arrays do not match the model it started from")
        self._reply, self._base = reply, base

    def __getitem__(self, key: str) -> NDArray:
        x, b = self._reply[key].numpy(), self._base[key].numpy()
        return np.subtract(x, b, dtype=np.result_type(x.dtype, np.float32))

    def __iter__(self) -> Iterator[str]:
        return iter(self._reply)

    def __len__(self) -> int:
        return len(self._reply)


class FedBuff(FedAvg):
    """Buffered asynchronous aggregation (Nguyen et al. 2022) on Flower's Message API.

    ``server_lr`` is η_g; ``staleness_exponent`` is *a* in ``s(τ) = (1+τ)^-a``;
    ``max_staleness`` is the largest τ still applied. Other keyword arguments go to
    Flower's ``FedAvg`` (sampling, record keys).
    """

    def __init__(
        self,
        *,
        server_lr: float = 1.0,
        staleness_exponent: float = 0.5,
        max_staleness: int = 20,
        **fedavg_kwargs: Any,
    ) -> None:
        super().__init__(**fedavg_kwargs)
        if not server_lr > 0:
            raise ValueError("FedBuff server_lr must be > 0")
        if staleness_exponent < 0 or max_staleness < 0:
            raise ValueError("FedBuff staleness_exponent and max_staleness must be >= 0")
        self.server_lr = server_lr
        self.staleness_exponent = staleness_exponent
        self.max_staleness = max_staleness
        self._versions: dict[int, ArrayRecord] = {}  # round → global model sent that round
        self._started: dict[int, int] = {}  # node id → round its current training started

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember this round's model version; instruct the (newly free) clients."""
        self._versions[server_round] = arrays
        if not list(grid.get_node_ids()):
            return []  # every client is still busy: nothing new to start this round
        messages = list(super().configure_train(server_round, arrays, config, grid))
        for message in messages:
            self._started[message.metadata.dst_node_id] = server_round
        self._forget_before(server_round - self.max_staleness)
        return messages

    def _forget_before(self, oldest: int) -> None:
        self._started = {n: r for n, r in self._started.items() if r >= oldest}
        keep = set(self._started.values()) | {max(self._versions)}
        self._versions = {r: a for r, a in self._versions.items() if r in keep}

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Apply ``(η_g / M) Σ s(τᵢ) Δᵢ`` to the current version."""
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        current = self._versions.get(server_round)
        if not valid or current is None:
            return None, None
        total = StreamingMean()
        used: list[Message] = []
        stalenesses: list[int] = []
        dropped = 0
        for message in valid:
            started = self._started.pop(message.metadata.src_node_id, None)
            if started is None or started not in self._versions:
                dropped += 1  # unknown or forgotten start version: too stale to apply
                continue
            tau = server_round - started
            if tau > self.max_staleness:
                dropped += 1
                continue
            total.add(
                _Deltas(reply_arrays(message), self._versions[started]),
                staleness_weight(tau, self.staleness_exponent),
            )
            used.append(message)
            stalenesses.append(tau)
        if not used:
            log.warning("round %d: every buffered update was too stale", server_round)
            return None, None
        step = self.server_lr / total.count
        new_arrays = ArrayRecord()
        sums = total.weighted_sum()
        for name, array in current.items():
            base = array.numpy()
            new_arrays[name] = Array(np.asarray(base + step * sums[name], dtype=base.dtype))
        metrics = self.train_metrics_aggr_fn([m.content for m in used], self.weighted_by_key)
        metrics[STALENESS_MEAN] = float(np.mean(stalenesses))
        metrics[STALENESS_MAX] = int(max(stalenesses))
        metrics[STALE_DROPPED] = dropped
        return new_arrays, metrics
