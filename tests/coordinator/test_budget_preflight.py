"""The budget pre-flight (coordinator/budget_preflight.py): sites asked through the
federation, each answering from its own ledger (the real ClientApp handler); the run is
held when fewer than its quorum have budget, with a reason that says how many."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict

from coordinator.budget_preflight import (
    HELD_PREFIX,
    BudgetHeld,
    asked_for,
    check_site_budgets,
    count_answers,
)
from coordinator.retrain import RetrainPlan
from edge_client.budget_query import handle_budget_query
from edge_client.protocol import keys as k
from edge_client.protocol.site import NC_DP_BUDGET_EPSILON, NC_SITE_NAME, NC_STATE_DIR
from privacy.dp.config import RC_DP, RC_DP_NOISE_MULTIPLIER

TASK = "breast-cancer-mlp"
RUN = {"task": TASK, "num-server-rounds": 3, RC_DP: "local", RC_DP_NOISE_MULTIPLIER: 1.1}
TRAIN = ConfigRecord({k.LOCAL_EPOCHS: 1, k.BATCH_SIZE: 32, k.LEARNING_RATE: 0.1})


@pytest.fixture(autouse=True)
def _identity():
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID


class SitesGrid:
    """Delivers each message to the real ``query.budget`` handler of the site it names
    (a SuperLink's routing, in process); nodes in ``silent`` never answer."""

    def __init__(self, contexts: dict[int, Context], silent: frozenset[int] = frozenset()):
        self.contexts, self.silent, self.sent = contexts, silent, list[Message]()

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str
    ) -> Message:
        return Message(
            content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id
        )

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        self.sent = list(messages)
        return [
            handle_budget_query(m, self.contexts[m.metadata.dst_node_id])
            for m in self.sent
            if m.metadata.dst_node_id not in self.silent
        ]


def _sites(tmp_path: Path, budgets: list[float]) -> dict[int, Context]:
    return {
        node: Context(
            run_id=7,
            node_id=node,
            node_config={
                k.NC_PARTITION_ID: i,
                k.NC_NUM_PARTITIONS: len(budgets),
                NC_STATE_DIR: str(tmp_path / f"site-{node}"),
                NC_SITE_NAME: f"site-{node}",
                NC_DP_BUDGET_EPSILON: budget,
            },
            state=RecordDict(),
            run_config=dict(RUN),
        )
        for i, budget in enumerate(budgets)
        for node in [101 + i]
    }


def _check(grid: SitesGrid, *, minimum: int):  # type: ignore[no-untyped-def]
    return check_site_budgets(
        grid,  # type: ignore[arg-type]
        node_ids=sorted(grid.contexts),
        train_config=TRAIN,
        minimum=minimum,
        rounds=3,
        timeout=10.0,
    )


def test_a_run_is_held_when_fewer_sites_than_its_quorum_have_budget(tmp_path: Path) -> None:
    # Prepare: one site's budget cannot cover a round; two have plenty.
    grid = SitesGrid(_sites(tmp_path, [0.01, 1000.0, 1000.0]))

    # Execute / Assert: a quorum of 3 is held, with the count and what to change.
    with pytest.raises(BudgetHeld) as held:
        _check(grid, minimum=3)
    reason = str(held.value)
    assert reason.startswith(HELD_PREFIX)
    assert "2 of 3 sites have privacy budget for this run's 3 rounds" in reason
    assert "1 not enough, 0 no answer" in reason and "a round needs 3" in reason
    # A quorum of 2 starts; the query carried the run's train config, before round 1.
    count = _check(grid, minimum=2)
    assert (count.asked, count.enough, count.not_enough) == (3, 2, 1)
    sent = grid.sent[0].content.config_records[k.CONFIG]
    assert sent[k.BATCH_SIZE] == 32 and sent[k.SERVER_ROUND] == 0
    assert {m.metadata.message_type for m in grid.sent} == {k.MT_BUDGET_QUERY}


def test_silence_errors_and_repeated_or_odd_answers_are_not_enough(tmp_path: Path) -> None:
    # Prepare: site 103 never answers; its quorum-making "enough" must not be invented.
    grid = SitesGrid(_sites(tmp_path, [1000.0, 1000.0, 1000.0]), silent=frozenset({103}))
    with pytest.raises(BudgetHeld, match=r"2 of 3 sites .*\(0 not enough, 1 no answer\)"):
        _check(grid, minimum=3)
    query = Message(RecordDict(), dst_node_id=5, message_type=k.MT_BUDGET_QUERY)

    def reply(value: object) -> Message:
        return Message(
            RecordDict({k.METRICS: MetricRecord({k.BUDGET_ENOUGH: value})}), reply_to=query
        )  # type: ignore[dict-item]

    # Execute: one node answering "enough" twice, an error, a 2, a float 1.0.
    error = Message(Error(code=1, reason="site policy refused: task"), reply_to=query)
    count = count_answers([reply(1), reply(1)], asked=4)
    odd = count_answers([error], asked=1), count_answers([reply(2)], asked=1)

    # Assert: a node counts once; anything but an integer 1 is not enough.
    assert (count.enough, count.not_enough, count.no_answer) == (1, 0, 3)
    assert all(c.enough == 0 and c.not_enough == 1 for c in odd)


def test_retraining_runs_ask_for_the_preflight_unless_run_toml_turns_it_off(
    tmp_path: Path,
) -> None:
    plan = RetrainPlan(fleet_run_id=4, task=TASK, parent_version=2, checkpoint=tmp_path / "m.pt")
    assert asked_for(plan.run_config({})) is True
    assert asked_for(plan.run_config({k.RC_BUDGET_PREFLIGHT: False})) is False
    assert asked_for({}) is False  # a plain `run submit`: unchanged
    with pytest.raises(ValueError, match="budget-preflight"):
        asked_for({k.RC_BUDGET_PREFLIGHT: "maybe"})


def test_the_serverapp_holds_a_run_before_round_1_and_starts_one_with_its_quorum(
    tmp_path: Path,
) -> None:
    # The real ServerApp and ClientApp over the in-process engine (Flower's message
    # routing of `query.budget` included): client 0's budget fits one of the run's two
    # trainings.
    from coordinator.app import build_server_app
    from edge_client.app import build_client_app
    from edge_client.dp_training import plan_dp_training
    from edge_client.settings import ClientSettings
    from privacy.dp.accounting import epsilon
    from privacy.ledger import LEDGER_FILE, PrivacyLedger
    from simulation.inprocess import run_inprocess

    def run_config(out: Path, quorum: int) -> dict[str, bool | int | float | str]:
        return {
            "task": TASK,
            "num-server-rounds": 2,
            "num-clients": 3,
            "clients-per-round": 3,
            "min-clients": quorum,
            "local-epochs": 1,
            "batch-size": 32,
            "out-dir": str(out),
            RC_DP: "local",
            RC_DP_NOISE_MULTIPLIER: 1.1,
            k.RC_BUDGET_PREFLIGHT: True,
        }

    probe = Context(
        run_id=1,
        node_id=1,
        node_config={k.NC_PARTITION_ID: 0, k.NC_NUM_PARTITIONS: 3},
        state=RecordDict(),
        run_config=run_config(tmp_path / "probe", 3),
    )
    settings = ClientSettings.from_message(probe, TRAIN)
    from edge_client.app import load_client_data

    n = len(load_client_data(settings).x_train)
    _dp, where, mech = plan_dp_training(probe, settings=settings, num_examples=n, dp=None)
    one_round = epsilon([mech], delta=where.budget.delta) * 1.01

    def node_config(i: int) -> dict[str, bool | int | float | str]:
        extra = {NC_DP_BUDGET_EPSILON: one_round} if i == 0 else {}
        return {k.NC_PARTITION_ID: i, k.NC_NUM_PARTITIONS: 3, **extra}

    # Execute / Assert: a quorum of 3 is held before anything trains.
    held = tmp_path / "held"
    with pytest.raises(BudgetHeld, match="2 of 3 sites have privacy budget"):
        run_inprocess(
            server_app=build_server_app(),
            client_app=build_client_app(),
            num_nodes=3,
            run_config=run_config(held, 3),
            node_config_fn=node_config,
        )
    assert not (held / LEDGER_FILE).exists() and not (held / "metrics.json").exists()

    # A quorum of 2 starts; client 0 then refuses round 2, as its answer said it would.
    ran = tmp_path / "ran"
    run_inprocess(
        server_app=build_server_app(),
        client_app=build_client_app(),
        num_nodes=3,
        run_config=run_config(ran, 2),
        node_config_fn=node_config,
    )
    entries = PrivacyLedger(ran / LEDGER_FILE, site="client-0").entries()
    assert [(e.server_round, e.status) for e in entries] == [(1, "completed"), (2, "refused")]
