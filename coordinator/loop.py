"""The round loop: sample → train → (secure) aggregate → evaluate → checkpoint → record.

This is the only place rounds happen. Strategies fill the configure/aggregate hooks,
an exchange moves the train messages (plain, or a secure-aggregation protocol), a
selector picks the round's clients, reply filters drop unusable updates; the loop owns
ordering, quorum, timeouts, checkpoints and records.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from coordinator.checkpoint import Checkpoint, CheckpointStore
from coordinator.fairness import EqualOpportunityWeights, FairnessAudit
from coordinator.grid_view import SelectedNodesGrid
from coordinator.results import RoundRecord
from edge_client.protocol.keys import EVAL_FAIRNESS_COUNTS, FAIRNESS_POSITIVE_WEIGHTS, METRICS
from edge_client.protocol.secagg import AGGREGATED_CLIENTS

log = logging.getLogger(__name__)

EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]


def _carries_counts(reply: Message) -> bool:
    """Whether a train reply carries fairness counts (only SecAgg+'s aggregated one does)."""
    metrics = reply.content.metric_records.get(METRICS)
    return metrics is not None and EVAL_FAIRNESS_COUNTS in metrics


class Selector(Protocol):
    """Chooses the clients of a round from the connected node ids."""

    def select(self, server_round: int, node_ids: Sequence[int]) -> list[int]: ...


class TrainExchange(Protocol):
    """Delivers train instructions and returns the replies the strategy aggregates.

    The plain exchange returns every client's reply; a secure-aggregation exchange
    runs its protocol stages and returns replies whose sum is all the server learns.
    An exchange that keeps instructions in flight across rounds (the buffered
    asynchronous one) exposes their number as ``in_flight``, so the loop does not count
    them as failures.
    """

    def exchange(
        self, grid: Grid, messages: Iterable[Message], *, server_round: int, timeout: float
    ) -> list[Message]: ...


ReplyFilter = Callable[[int, list[Message]], tuple[list[Message], dict[str, float]]]


def represented_clients(reply: Message) -> int:
    """How many clients' updates one reply stands for: 1, or — for the single reply of a
    secure-aggregation exchange — the number of clients in its sum (``aggregated-clients``)."""
    for record in reply.content.metric_records.values():
        value = record.get(AGGREGATED_CLIENTS)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return 1


@dataclass
class UniformSelector:
    """``k`` clients uniformly at random, reproducible from (seed, round)."""

    clients_per_round: int
    seed: int

    def select(self, server_round: int, node_ids: Sequence[int]) -> list[int]:
        ordered = sorted(node_ids)
        k = min(self.clients_per_round, len(ordered))
        rng = np.random.default_rng([self.seed, server_round, 0x5E1EC7])
        return sorted(int(ordered[i]) for i in rng.choice(len(ordered), size=k, replace=False))


class PlainExchange:
    """Send the instructions, wait up to ``timeout`` for replies."""

    def exchange(
        self, grid: Grid, messages: Iterable[Message], *, server_round: int, timeout: float
    ) -> list[Message]:
        return list(grid.send_and_receive(messages, timeout=timeout))


@dataclass
class LoopResult:
    """The final global model and every round's record."""

    arrays: ArrayRecord
    rounds: list[RoundRecord] = field(default_factory=list)


def wait_for_nodes(grid: Grid, *, minimum: int, timeout: float, poll: float = 0.5) -> list[int]:
    """Block until ``minimum`` nodes are connected; raise with a clear reason if not."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= minimum:
            return nodes
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"only {len(nodes)} of the {minimum} clients needed connected within "
                f"{timeout:.0f} s; start more SuperNodes or lower clients-per-round"
            )
        time.sleep(poll)


@dataclass
class RoundLoop:
    """Runs rounds ``start_round .. num_rounds`` of one federated run."""

    strategy: Strategy
    selector: Selector
    num_rounds: int
    train_config: ConfigRecord
    evaluate_fn: EvaluateFn | None = None
    exchange: TrainExchange = field(default_factory=PlainExchange)
    reply_filters: list[ReplyFilter] = field(default_factory=list)
    checkpoints: CheckpointStore | None = None
    on_round: Callable[[RoundRecord], None] | None = None
    timeout: float = 3600.0
    min_clients: int = 1
    fraction_evaluate: float = 0.0
    evaluate_config: ConfigRecord = field(default_factory=ConfigRecord)
    fairness: FairnessAudit = field(default_factory=FairnessAudit)
    equal_opportunity: EqualOpportunityWeights | None = None

    def run(self, grid: Grid, arrays: ArrayRecord) -> LoopResult:
        """Run the remaining rounds (resuming from the checkpoint store if it has one)."""
        result = LoopResult(arrays=arrays)
        start = 1
        if self.checkpoints is not None and (ckpt := self.checkpoints.load()) is not None:
            result.arrays, result.rounds = ckpt.arrays, list(ckpt.rounds)
            start = ckpt.round + 1
            if self.equal_opportunity is not None and result.rounds:
                self.equal_opportunity.restore(result.rounds[-1].extra)
            log.info("resuming after round %d from %s", ckpt.round, self.checkpoints.path)
        for server_round in range(start, self.num_rounds + 1):
            record, new_arrays = self._one_round(grid, server_round, result.arrays)
            if new_arrays is not None:
                result.arrays = new_arrays
            result.rounds.append(record)
            if self.checkpoints is not None:
                self.checkpoints.save(
                    Checkpoint(round=server_round, arrays=result.arrays, rounds=result.rounds)
                )
            if self.on_round is not None:
                self.on_round(record)
        return result

    def _one_round(
        self, grid: Grid, server_round: int, arrays: ArrayRecord
    ) -> tuple[RoundRecord, ArrayRecord | None]:
        t0 = time.perf_counter()
        node_ids = sorted(grid.get_node_ids())
        selected = self.selector.select(server_round, node_ids)
        view = SelectedNodesGrid(grid, selected)
        train_config = ConfigRecord(dict(self.train_config))
        if self.equal_opportunity is not None:
            train_config[FAIRNESS_POSITIVE_WEIGHTS] = self.equal_opportunity.weights()
        messages = self.strategy.configure_train(server_round, arrays, train_config, view)
        in_flight_before = getattr(self.exchange, "in_flight", 0)
        replies = self.exchange.exchange(
            view, messages, server_round=server_round, timeout=self.timeout
        )
        # Instructions this round resolved: its own, plus (for an exchange that keeps
        # some in flight across rounds, e.g. FedBuff's) earlier ones that came back now.
        resolved = len(selected) + in_flight_before - getattr(self.exchange, "in_flight", 0)
        replies.sort(key=lambda m: m.metadata.src_node_id)
        ok = [m for m in replies if not m.has_error()]
        extra: dict[str, float] = {}
        for reply_filter in self.reply_filters:
            ok, stats = reply_filter(server_round, ok)
            extra.update(stats)
        contributors = sum(represented_clients(m) for m in ok)
        failures = resolved - contributors
        new_arrays: ArrayRecord | None = None
        if contributors >= self.min_clients:
            new_arrays, train_metrics = self.strategy.aggregate_train(server_round, ok)
            if train_metrics is not None:
                extra.update(
                    {
                        f"train_{k}": float(v)
                        for k, v in train_metrics.items()  # type: ignore[arg-type]
                        if isinstance(v, int | float)
                    }
                )
        else:
            log.warning(
                "round %d: %d usable replies, quorum is %d; the global model is unchanged",
                server_round,
                contributors,
                self.min_clients,
            )
        current = new_arrays if new_arrays is not None else arrays
        audit: dict[str, Any] | None = None
        if self.fraction_evaluate > 0:
            # under secure aggregation the audit's counts came back inside the masked sum
            secure = next((m for m in ok if _carries_counts(m)), None)
            fed, audit = self._federated_evaluate(
                grid, server_round, current, node_ids, secure_counts=secure
            )
            extra.update(fed)
            if self.equal_opportunity is not None:
                self.equal_opportunity.update(audit)  # the next round's weights
                extra.update(self.equal_opportunity.round_stats())
        accuracy, loss = float("nan"), float("nan")
        if self.evaluate_fn is not None:
            metrics = self.evaluate_fn(server_round, current)
            if metrics is not None:
                accuracy = float(metrics.get("accuracy", float("nan")))  # type: ignore[arg-type]
                loss = float(metrics.get("loss", float("nan")))  # type: ignore[arg-type]
        record = RoundRecord(
            round=server_round,
            accuracy=accuracy,
            loss=loss,
            duration_s=time.perf_counter() - t0,
            clients=contributors,
            selected=len(selected),
            failures=failures,
            applied=new_arrays is not None,
            extra=extra,
            fairness=audit,
        )
        return record, new_arrays

    def _federated_evaluate(
        self,
        grid: Grid,
        server_round: int,
        arrays: ArrayRecord,
        node_ids: list[int],
        *,
        secure_counts: Message | None = None,
    ) -> tuple[dict[str, float], dict[str, Any] | None]:
        """The strategy's aggregated evaluate metrics (``fed_*``) and the round's
        fairness audit (:mod:`coordinator.fairness`)."""
        k = max(1, int(len(node_ids) * self.fraction_evaluate))
        rng = np.random.default_rng([server_round, 0xE7A1])
        chosen = sorted(int(node_ids[i]) for i in rng.choice(len(node_ids), size=k, replace=False))
        view = SelectedNodesGrid(grid, chosen)
        messages = self.strategy.configure_evaluate(
            server_round, arrays, ConfigRecord(dict(self.evaluate_config)), view
        )
        replies = sorted(
            grid.send_and_receive(messages, timeout=self.timeout),
            key=lambda m: m.metadata.src_node_id,
        )
        ok = [m for m in replies if not m.has_error()]
        audit = self.fairness.summarize(ok, secure_counts=secure_counts)
        metrics = self.strategy.aggregate_evaluate(server_round, ok)
        if metrics is None:
            return {}, audit
        fed = {f"fed_{k}": float(v) for k, v in metrics.items() if isinstance(v, int | float)}  # type: ignore[arg-type]
        return fed, audit
