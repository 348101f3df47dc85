"""Flower's FedAvg family with the streaming weighted average.

Flower's ``FedAvg.aggregate_train`` multiplies each decoded update into a fresh
temporary before adding it, and decodes each with ``np.load`` (a copy of the bytes and
a ``literal_eval`` of the header). :class:`StreamingAverage` overrides that one hook
with :class:`strategies.aggregation.StreamingMean` (in place into preallocated buffers)
fed by read-only views of the reply bytes (:func:`tasks.npy.array_view`: no copy, each
distinct header parsed once), and :func:`with_streaming_average` slots it under any FedAvg subclass, so
FedAvgM's momentum and FedOpt's adaptive steps (which call ``super().aggregate_train``)
run on top of it unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import TypeVar, cast

from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg
from numpy.typing import NDArray

from strategies.aggregation import StreamingMean
from tasks.npy import array_view

log = logging.getLogger(__name__)

F = TypeVar("F", bound=FedAvg)


class DecodedArrays(Mapping[str, NDArray]):
    """A read-only view of an ``ArrayRecord``: each access is a read-only view of that
    array's bytes (no copy)."""

    def __init__(self, record: ArrayRecord) -> None:
        self._record = record

    def __getitem__(self, key: str) -> NDArray:
        return array_view(self._record[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._record)

    def __len__(self) -> int:
        return len(self._record)


def reply_arrays(message: Message) -> ArrayRecord:
    """The (single) ArrayRecord of a train reply."""
    return next(iter(message.content.array_records.values()))


def reply_weight(message: Message, key: str) -> float:
    """The weighting metric (``num-examples``) of a train reply."""
    metrics = next(iter(message.content.metric_records.values()))
    return float(cast(float, metrics[key]))


class StreamingAverage(FedAvg):
    """FedAvg whose weighted average of updates is streamed (O(model size) memory)."""

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        mean = StreamingMean()
        for message in valid:
            mean.add(
                DecodedArrays(reply_arrays(message)), reply_weight(message, self.weighted_by_key)
            )
        if mean.total_weight <= 0:
            log.warning(
                "round %d: every reply reports %s = 0; the global model is unchanged",
                server_round,
                self.weighted_by_key,
            )
            return None, None
        arrays = ArrayRecord({name: Array(value) for name, value in mean.result().items()})
        metrics = self.train_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key)
        return arrays, metrics


def with_streaming_average(cls: type[F]) -> type[F]:
    """``cls`` (a Flower FedAvg subclass) with :class:`StreamingAverage` below it."""
    if cls is FedAvg:
        return cast(type[F], StreamingAverage)
    if not issubclass(cls, FedAvg):
        raise TypeError(f"{cls.__name__} is not a FedAvg subclass")
    return cast(
        type[F],
        type(
            f"Streaming{cls.__name__}",
            (cls, StreamingAverage),
            {"__doc__": cls.__doc__, "__module__": __name__},
        ),
    )
