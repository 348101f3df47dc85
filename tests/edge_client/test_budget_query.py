"""The site's answer to the budget pre-flight (edge_client/budget_query.py): the verdict
its ledger gives at training time, one bit, and nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_client.app import load_client_data
from edge_client.budget_query import handle_budget_query
from edge_client.dp_training import plan_dp_training, train_with_dp
from edge_client.protocol import keys as k
from edge_client.protocol.site import NC_DP_BUDGET_EPSILON, NC_SITE_NAME, NC_STATE_DIR
from edge_client.settings import ClientSettings
from privacy.dp.accounting import Mechanism, epsilon
from privacy.dp.config import RC_DP, RC_DP_DELTA, RC_DP_EPSILON, RC_DP_NOISE_MULTIPLIER
from privacy.ledger import LEDGER_FILE, Budget, PrivacyLedger
from tasks import get_task

TASK = "breast-cancer-mlp"
ROUNDS = 2
LOCAL = {RC_DP: "local", RC_DP_NOISE_MULTIPLIER: 1.1}


@pytest.fixture(autouse=True)
def _setup():
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _context(state: Path, *, run_config: dict, budget: float | None) -> Context:
    node: dict = {k.NC_PARTITION_ID: 0, k.NC_NUM_PARTITIONS: 4, NC_STATE_DIR: str(state)}
    node[NC_SITE_NAME] = "st-marys"
    if budget is not None:
        node[NC_DP_BUDGET_EPSILON] = budget
    return Context(
        run_id=7,
        node_id=1001,
        node_config=node,
        state=RecordDict(),
        run_config={"task": TASK, "num-server-rounds": ROUNDS, **run_config},
    )


def _message(message_type: str, server_round: int, *, arrays: bool) -> Message:
    config = ConfigRecord(
        {k.SERVER_ROUND: server_round, k.LEARNING_RATE: 0.1, k.LOCAL_EPOCHS: 1, k.BATCH_SIZE: 64}
    )
    content = RecordDict({k.CONFIG: config})
    if arrays:
        torch.manual_seed(0)
        content[k.ARRAYS] = ArrayRecord(get_task(TASK).build_model().state_dict())
    return Message(content, dst_node_id=1001, message_type=message_type)


def _ask(context: Context) -> int:
    reply = handle_budget_query(_message(k.MT_BUDGET_QUERY, 0, arrays=False), context)
    assert not reply.has_error()
    metrics = reply.content.metric_records[k.METRICS]
    assert set(metrics) == {k.BUDGET_ENOUGH}  # one bit, nothing about ε spent or left
    return int(metrics[k.BUDGET_ENOUGH])  # type: ignore[call-overload]


def _train(context: Context, server_round: int) -> bool:
    message = _message("train", server_round, arrays=True)
    settings = ClientSettings.from_message(context, message.content.config_records[k.CONFIG])
    model = get_task(TASK).build_model()
    reply = train_with_dp(
        message, context, settings=settings, data=load_client_data(settings), model=model
    )
    return not reply.has_error()


def _round_epsilons(tmp_path: Path) -> tuple[float, float]:
    """ε after one and after both rounds of this run at this site (its mechanism)."""
    context = _context(tmp_path / "plan", run_config=LOCAL, budget=None)
    message = _message("train", 1, arrays=False)
    settings = ClientSettings.from_message(context, message.content.config_records[k.CONFIG])
    n = len(load_client_data(settings).x_train)
    _dp, where, mech = plan_dp_training(context, settings=settings, num_examples=n, dp=None)
    one = epsilon([mech], delta=where.budget.delta, accountant=where.accountant)
    return one, epsilon([mech] * ROUNDS, delta=where.budget.delta, accountant=where.accountant)


def test_the_preflight_verdict_is_the_training_time_verdict(tmp_path: Path) -> None:
    # Prepare: budgets below one round, between one and both rounds, above both.
    one, both = _round_epsilons(tmp_path)
    budgets = [one * 0.9, (one + both) / 2, both * 1.01]
    for i, budget in enumerate(budgets):
        state = tmp_path / f"site-{i}"
        context = _context(state, run_config=LOCAL, budget=budget)

        # Execute: ask first (read-only), then train every round of the run.
        enough = _ask(context)
        asked_wrote = (state / LEDGER_FILE).exists()
        granted = [_train(context, r) for r in range(1, ROUNDS + 1)]

        # Assert: "enough" exactly when every round is granted; the query wrote nothing.
        assert enough == int(all(granted)), (budget, one, both, granted)
        assert not asked_wrote
        # Asked again after the run: the spent budget is seen (a second run would not fit).
        assert _ask(context) == 0
    assert [
        _ask(_context(tmp_path / f"fresh-{i}", run_config=LOCAL, budget=b))
        for i, b in enumerate(budgets)
    ] == [0, 0, 1]


def test_the_query_reads_the_ledger_and_writes_no_row(tmp_path: Path) -> None:
    # Prepare: one round spent of a budget that fits exactly two.
    _one, both = _round_epsilons(tmp_path)
    state = tmp_path / "site"
    context = _context(state, run_config=LOCAL, budget=both * 1.01)
    assert _train(context, 1)
    before = PrivacyLedger(state / LEDGER_FILE, site="st-marys").entries()

    # Execute
    enough = _ask(context)

    # Assert: one round left, the run needs two: not enough; the ledger is unchanged.
    assert enough == 0
    assert PrivacyLedger(state / LEDGER_FILE, site="st-marys").entries() == before


def test_a_site_without_dp_spends_nothing_and_bad_dp_settings_are_not_enough(
    tmp_path: Path,
) -> None:
    plain = _context(tmp_path / "plain", run_config={}, budget=0.01)
    bad = _context(
        tmp_path / "bad",
        run_config={RC_DP: "local", RC_DP_EPSILON: 1.0, RC_DP_DELTA: 0.2},
        budget=None,
    )
    assert _ask(plain) == 1 and not (tmp_path / "plain").exists()
    assert _ask(bad) == 0


@settings(max_examples=30, deadline=None)
@given(
    spent=st.integers(0, 3),
    rounds=st.integers(1, 4),
    sigma=st.floats(0.6, 3.0),
    budget=st.floats(0.05, 20.0),
)
def test_preview_is_every_sequential_reservation_granted(
    spent: int, rounds: int, sigma: float, budget: float
) -> None:
    # The ledger's read-only preview of a run's trainings against what check_and_reserve
    # then decides for each of them, one after the other, from any history.
    import tempfile

    mech = Mechanism(sample_rate=0.1, noise_multiplier=sigma, steps=10)
    limit = Budget(budget, 1e-5)
    with tempfile.TemporaryDirectory() as folder:
        ledger = PrivacyLedger(Path(folder) / LEDGER_FILE, site="s")
        for r in range(spent):  # history, granted or refused
            decision = ledger.check_and_reserve(
                task=TASK, run_id="old", server_round=r, mechanism=mech, budget=limit
            )
            if decision.granted:
                ledger.commit(decision.entry_id)
        rows = len(ledger.entries())
        preview = ledger.preview(task=TASK, requested=[mech] * rounds, budget=limit)
        assert len(ledger.entries()) == rows  # read-only
        granted = [
            ledger.check_and_reserve(
                task=TASK, run_id="new", server_round=r, mechanism=mech, budget=limit
            ).granted
            for r in range(rounds)
        ]
    assert preview == all(granted)
