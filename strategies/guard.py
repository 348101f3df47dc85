"""The update guard: a reply filter every strategy runs behind.

Before any strategy sees a round's replies, the coordinator's loop passes them through
its reply filters (``RoundLoop.reply_filters``). :class:`UpdateGuard` drops a reply
whose update (reply weights minus the weights that client started from) is not
finite, whose L2 norm exceeds ``max_norm``, or that is malformed (missing or
mismatched arrays, a missing, negative or non-finite ``num-examples``). The counts go
into the round's metrics (``rejected``, ``rejected_nonfinite``, ``rejected_norm``,
``rejected_malformed``) with the largest and median kept norm, to calibrate the bound.

Doing it once in the loop, not in each strategy, means every registered strategy —
Flower's or ours — gets the same protection.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord
from numpy.typing import NDArray

from strategies.aggregation import BLOCK
from strategies.streaming import DecodedArrays

BaseLookup = Callable[[Message], ArrayRecord | None]
"""Returns the global weights the reply's client started from (``None``: unknown)."""


class Verdict(Enum):
    """Why a reply was kept or rejected."""

    OK = "ok"
    NON_FINITE = "nonfinite"
    NORM = "norm"
    MALFORMED = "malformed"


class BaseArrays:
    """The weights a round's clients started from, decoded once to float64.

    A round's replies mostly share one base (the global model the strategy sent), so
    the guard decodes it once per round, not once per reply. :meth:`distance` is
    :func:`strategies.aggregation.update_norm` with the base side precomputed: the same
    float64 differences summed block by block in the same order, so the same value.
    """

    def __init__(self, record: ArrayRecord) -> None:
        self._flat: dict[str, NDArray[np.float64]] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._slices: dict[str, slice] = {}
        offset = 0
        for name in record:
            array = record[name].numpy()
            self._shapes[name] = tuple(array.shape)
            self._flat[name] = array.reshape(-1).astype(np.float64)
            self._slices[name] = slice(offset, offset + array.size)
            offset += array.size
        self._diff = np.empty(offset, dtype=np.float64)  # scratch for one update

    def distance(self, update: Mapping[str, NDArray[Any]]) -> float:
        """L2 norm of ``update - base``; ``nan`` if not finite; ``ValueError`` if the
        names or shapes differ."""
        if set(update) != set(self._flat):
            raise ValueError("update and base carry different array names")
        for name in update:
            x = update[name]
            if tuple(x.shape) != self._shapes[name]:
                raise ValueError(
                    f"array {name!r}: shape {x.shape} differs from {self._shapes[name]}"
                )
            np.subtract(x.reshape(-1), self._flat[name], out=self._diff[self._slices[name]])
        if not np.isfinite(self._diff).all():
            return math.nan
        total = 0.0
        for name in update:  # per array, block by block: update_norm's order of sums
            diff = self._diff[self._slices[name]]
            for i in range(0, diff.shape[0], BLOCK):
                part = diff[i : i + BLOCK]
                total += float(np.dot(part, part))
        return math.sqrt(total)


@dataclass(frozen=True)
class UpdateGuard:
    """Reject non-finite, oversized (``‖update‖₂ > max_norm``) and malformed updates.

    ``max_norm`` is in the units of the model's parameters (an L2 norm over all of
    them); ``None`` disables the norm bound but not the other checks.
    ``weight_key`` is the metric strategies weight by.
    """

    max_norm: float | None = None
    weight_key: str = "num-examples"

    def __post_init__(self) -> None:
        if self.max_norm is not None and not (self.max_norm > 0 and math.isfinite(self.max_norm)):
            raise ValueError("max_norm must be a positive number (or None for no bound)")

    def verdict(
        self, reply: Message, base: ArrayRecord | BaseArrays | None
    ) -> tuple[Verdict, float]:
        """Check one reply against the weights its client started from."""
        # One pass over the records: Flower's ``array_records``/``metric_records``
        # properties build a new dict on every access.
        array_records = [r for r in reply.content.values() if isinstance(r, ArrayRecord)]
        metric_records = [r for r in reply.content.values() if isinstance(r, MetricRecord)]
        if len(array_records) != 1 or len(metric_records) != 1:
            return Verdict.MALFORMED, math.nan
        weight = metric_records[0].get(self.weight_key)
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            return Verdict.MALFORMED, math.nan
        if not (math.isfinite(weight) and weight >= 0):
            return Verdict.MALFORMED, math.nan
        arrays = DecodedArrays(array_records[0])
        if base is None:
            finite = all(np.isfinite(arrays[name]).all() for name in arrays)
            return (Verdict.OK if finite else Verdict.NON_FINITE), math.nan
        if isinstance(base, ArrayRecord):
            base = BaseArrays(base)
        try:
            norm = base.distance(arrays)
        except ValueError:
            return Verdict.MALFORMED, math.nan
        if math.isnan(norm):
            return Verdict.NON_FINITE, norm
        if self.max_norm is not None and norm > self.max_norm:
            return Verdict.NORM, norm
        return Verdict.OK, norm

    def filter(
        self, server_round: int, replies: Sequence[Message], *, base_of: BaseLookup
    ) -> tuple[list[Message], dict[str, float]]:
        """The kept replies (order preserved) and the round's rejection counts."""
        kept: list[Message] = []
        counts = dict.fromkeys(Verdict, 0)
        norms: list[float] = []
        decoded: dict[int, tuple[ArrayRecord, BaseArrays]] = {}  # one decode per base
        for reply in replies:
            record = base_of(reply)
            base: BaseArrays | None = None
            if record is not None:
                entry = decoded.get(id(record))
                if entry is None:
                    entry = decoded[id(record)] = (record, BaseArrays(record))
                base = entry[1]
            verdict, norm = self.verdict(reply, base)
            counts[verdict] += 1
            if verdict is Verdict.OK:
                kept.append(reply)
                if not math.isnan(norm):
                    norms.append(norm)
        stats: dict[str, float] = {
            "rejected": float(len(replies) - len(kept)),
            **{f"rejected_{v.value}": float(counts[v]) for v in Verdict if v is not Verdict.OK},
        }
        if norms:
            stats["update_norm_max"] = max(norms)
            stats["update_norm_median"] = float(np.median(norms))
        return kept, stats
