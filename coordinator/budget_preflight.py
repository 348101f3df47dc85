"""The budget pre-flight: before round 1, ask the sites whether their ε budgets cover the run.

Sites keep their own privacy ledgers; the coordinator and the fleet never see them. A
drift-started retraining run (``fedfleet run autopilot``, ``run submit --retrain``:
run config ``budget-preflight = true``) therefore asks through the federation itself:
one ``query.budget`` message to every connected site, carrying the run's train
instruction config (the same local epochs and batch size round 1 would send). Each site
answers from its own ledger, read-only, with one bit (``budget-enough``; the site's
side is :mod:`edge_client.budget_query`, which gives the verdict its ledger would give
at training time for every round of the run). A refusal, an error or no answer counts
as not enough.

When fewer sites have enough than the run's quorum (``min_clients``: the replies a
round needs to change the model), no round could ever apply: the run is **held** —
:class:`BudgetHeld` is raised before anything trains, the ServerApp records it as the
run's failure, and ``run submit --retrain`` marks the fleet run ``failed`` with this
reason (on the timeline, ``GET /api/v1/timeline``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from edge_client.protocol import keys as k
from tasks.run_config import as_bool

HELD_PREFIX = "held by the budget pre-flight: "


class BudgetHeld(RuntimeError):
    """Too few sites have privacy budget for the run; the message says how many."""


@dataclass(frozen=True, slots=True)
class BudgetCount:
    """The pre-flight's answers: sites asked, with enough budget, without (a ``0``, a
    refusal or an error), and that did not answer in time."""

    asked: int
    enough: int
    not_enough: int

    @property
    def no_answer(self) -> int:
        return self.asked - self.enough - self.not_enough


def count_answers(replies: Iterable[Message], *, asked: int) -> BudgetCount:
    """Tally the replies to ``asked`` queries: only a reply saying ``budget-enough = 1``
    counts as enough (one reply per site: later duplicates of a node are ignored)."""
    enough: set[int] = set()
    seen: set[int] = set()
    for reply in replies:
        node = reply.metadata.src_node_id
        if node in seen:
            continue
        seen.add(node)
        if reply.has_error():
            continue
        metrics = reply.content.metric_records.get(k.METRICS)
        value = metrics.get(k.BUDGET_ENOUGH) if metrics is not None else None
        if value == 1 and not isinstance(value, bool):
            enough.add(node)
    answered = min(len(seen), asked)
    return BudgetCount(asked=asked, enough=len(enough), not_enough=answered - len(enough))


def held_reason(count: BudgetCount, *, minimum: int, rounds: int) -> str | None:
    """Why the run must not start (None: enough sites have budget)."""
    if count.enough >= minimum:
        return None
    return (
        f"{HELD_PREFIX}{count.enough} of {count.asked} sites have privacy budget for this "
        f"run's {rounds} round{'s' if rounds != 1 else ''} ({count.not_enough} not enough, "
        f"{count.no_answer} no answer); a round needs {minimum}. Lower the run's epsilon "
        "or rounds, or wait for sites with budget"
    )


def check_site_budgets(
    grid: Grid,
    *,
    node_ids: Sequence[int],
    train_config: ConfigRecord,
    minimum: int,
    rounds: int,
    timeout: float,
) -> BudgetCount:
    """Ask ``node_ids`` (module doc); raise :class:`BudgetHeld` when fewer than
    ``minimum`` have budget for the run's ``rounds``, else return the count."""
    # server-round 0: an instruction before round 1 (no training; the tracker's rounds
    # and refusals stay those of the run's real rounds).
    config = ConfigRecord({**dict(train_config), k.SERVER_ROUND: 0})
    messages = [
        grid.create_message(
            RecordDict({k.CONFIG: ConfigRecord(dict(config))}),
            k.MT_BUDGET_QUERY,
            node,
            "budget-preflight",
        )
        for node in node_ids
    ]
    replies = list(grid.send_and_receive(messages, timeout=timeout)) if messages else []
    count = count_answers(replies, asked=len(messages))
    reason = held_reason(count, minimum=minimum, rounds=rounds)
    if reason is not None:
        raise BudgetHeld(reason)
    return count


def asked_for(run_config: Mapping[str, Any]) -> bool:
    """Whether the run asks for the pre-flight (``budget-preflight``, default off)."""
    return as_bool(k.RC_BUDGET_PREFLIGHT, run_config.get(k.RC_BUDGET_PREFLIGHT, False))
