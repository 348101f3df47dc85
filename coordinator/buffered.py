"""Asynchronous rounds: keep K clients training, aggregate every M replies (FedBuff).

Nguyen et al., "Federated Learning with Buffered Asynchronous Aggregation", AISTATS
2022. The round loop stays the only loop: with an asynchronous strategy it is given

- :class:`BufferedExchange` as its train exchange: it pushes the round's new
  instructions without waiting for them and returns as soon as ``buffer_size``
  successful replies have arrived — from whichever clients, started in whichever
  round. Instructions still training stay in flight into later rounds.
- :class:`TopUpSelector` as its selector: it starts clients only on idle nodes, as
  many as keep ``concurrency`` in flight.

Each loop round is then one server model version. Arrival order comes from one of
two clocks: ``wall`` (deployment, and any engine: replies count when they are
pulled) or ``simulated`` (each reply reports the simulated seconds its device took
under ``sim-seconds``; a reply arrives at its send time plus those seconds, and the
exchange keeps the simulated time). With the simulated clock the exchange waits for
every in-flight reply before ordering them, so the result does not depend on how
fast the engine ran the clients.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from flwr.app import Message
from flwr.serverapp import Grid

from strategies.selection import SIM_SECONDS_KEY, CountSelector

log = logging.getLogger(__name__)

Clock = Literal["wall", "simulated"]


@dataclass(frozen=True)
class Flight:
    """An instruction still out: to which node, in which round, at which time."""

    node_id: int
    server_round: int
    sent_s: float


@dataclass
class BufferedExchange:
    """A ``TrainExchange`` that keeps instructions in flight across rounds.

    ``exchange`` returns once ``buffer_size`` successful replies are in (error replies
    that arrived meanwhile come along, so the loop counts them as failures), or when
    ``timeout`` seconds pass. ``in_flight`` and ``busy_nodes`` say what is still out.
    """

    buffer_size: int
    clock: Clock = "wall"
    seconds_key: str = SIM_SECONDS_KEY
    poll_s: float = 0.02
    now_s: float = 0.0  # simulated seconds since the first round (simulated clock)
    _flights: dict[str, Flight] = field(default_factory=dict)
    _arrived: list[tuple[float, int, int, Message]] = field(default_factory=list)
    _seq: int = 0

    def __post_init__(self) -> None:
        if self.buffer_size < 1:
            raise ValueError("buffer_size must be >= 1")
        if self.clock not in ("wall", "simulated"):
            raise ValueError("clock must be 'wall' or 'simulated'")

    @property
    def in_flight(self) -> int:
        """Instructions sent whose reply has not been handed to the loop yet."""
        return len(self._flights) + len(self._arrived)

    @property
    def busy_nodes(self) -> set[int]:
        """Nodes that are training (or whose reply waits in the buffer)."""
        return {f.node_id for f in self._flights.values()} | {a[1] for a in self._arrived}

    def exchange(
        self, grid: Grid, messages: Iterable[Message], *, server_round: int, timeout: float
    ) -> list[Message]:
        """Start the new instructions; return the next buffer of replies."""
        outgoing = list(messages)
        if outgoing:
            ids = list(grid.push_messages(outgoing))
            for message_id, message in zip(ids, outgoing, strict=True):
                self._flights[message_id] = Flight(
                    node_id=message.metadata.dst_node_id,
                    server_round=server_round,
                    sent_s=self.now_s,
                )
        deadline = time.monotonic() + timeout
        if self.clock == "simulated":
            self._pull(grid, deadline, until=lambda: not self._flights)
            self._drop_lost()
        else:
            self._pull(grid, deadline, until=lambda: self._successes() >= self.buffer_size)
        return self._take_buffer()

    def _pull(self, grid: Grid, deadline: float, *, until: Callable[[], bool]) -> None:
        while True:
            if self._flights:
                for reply in grid.pull_messages(list(self._flights)):
                    self._arrive(reply)
            if until() or not self._flights or time.monotonic() >= deadline:
                return
            time.sleep(self.poll_s)

    def _arrive(self, reply: Message) -> None:
        flight = self._flights.pop(reply.metadata.reply_to_message_id, None)
        if flight is None:
            return  # not ours (or already handled)
        if self.clock == "simulated":
            at = flight.sent_s + _seconds(reply, self.seconds_key)
        else:
            at = float(self._seq)  # pull order
        heapq.heappush(self._arrived, (at, flight.node_id, self._seq, reply))
        self._seq += 1

    def _drop_lost(self) -> None:
        if self._flights:
            log.warning(
                "%d in-flight clients never replied within the timeout; dropping them",
                len(self._flights),
            )
            self._flights.clear()

    def _successes(self) -> int:
        return sum(1 for a in self._arrived if not a[3].has_error())

    def _take_buffer(self) -> list[Message]:
        buffer: list[Message] = []
        successes = 0
        while self._arrived and successes < self.buffer_size:
            at, _, _, reply = heapq.heappop(self._arrived)
            buffer.append(reply)
            if not reply.has_error():
                successes += 1
            if self.clock == "simulated":
                self.now_s = max(self.now_s, at)
        return buffer

    def round_stats(
        self, server_round: int, replies: list[Message]
    ) -> tuple[list[Message], dict[str, float]]:
        """Reply filter recording the exchange's state (keeps every reply)."""
        stats = {"in_flight": float(self.in_flight)}
        if self.clock == "simulated":
            stats["sim_time_s"] = self.now_s
        return replies, stats


def _seconds(reply: Message, key: str) -> float:
    if reply.has_error():
        return 0.0  # a failure is known when it happens; count it at once
    for metrics in reply.content.metric_records.values():
        value = metrics.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return max(0.0, float(value))
    return 0.0


@dataclass
class TopUpSelector:
    """Start clients only on idle nodes, as many as keep ``concurrency`` training."""

    inner: CountSelector
    exchange: BufferedExchange
    concurrency: int

    def select(self, server_round: int, node_ids: Sequence[int]) -> list[int]:
        busy = self.exchange.busy_nodes
        idle = [n for n in node_ids if n not in busy]
        free = self.concurrency - len(busy)
        if free <= 0 or not idle:
            return []
        return self.inner.select_count(server_round, idle, min(free, len(idle)))
