"""The persistent privacy ledger: decisions, persistence, concurrency, properties."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from privacy.dp import Mechanism, epsilon
from privacy.ledger import LEDGER_FILE, Budget, PrivacyLedger

ROUND = Mechanism(sample_rate=0.05, noise_multiplier=1.2, steps=20)


def reserve(ledger: PrivacyLedger, budget: Budget, server_round: int = 1, task: str = "t"):
    return ledger.check_and_reserve(
        task=task, run_id="run-1", server_round=server_round, mechanism=ROUND, budget=budget
    )


def test_grants_until_the_budget_then_refuses_and_records_it(tmp_path: Path) -> None:
    # Prepare: a budget that fits exactly three rounds
    three = epsilon([ROUND] * 3, delta=1e-5)
    ledger = PrivacyLedger.in_state_dir(tmp_path, site="st-marys")
    budget = Budget(epsilon=three * 1.0001, delta=1e-5)
    # Execute
    decisions = []
    for r in range(1, 6):
        decision = reserve(ledger, budget, r)
        if decision.granted:
            ledger.commit(decision.entry_id)
        decisions.append(decision)
    # Assert
    assert [d.granted for d in decisions] == [True, True, True, False, False]
    assert decisions[2].epsilon_after == pytest.approx(three)
    assert "would be exceeded" in decisions[3].reason and "st-marys" in decisions[3].reason
    rows = ledger.entries()
    assert [r.status for r in rows] == ["completed"] * 3 + ["refused"] * 2
    assert ledger.spent(task="t", delta=1e-5) == pytest.approx(three)
    assert decisions[3].remaining == pytest.approx(budget.epsilon - three)


def test_reservation_counts_before_commit_and_abort_releases_it(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / LEDGER_FILE, site="a")
    budget = Budget(epsilon=epsilon([ROUND], delta=1e-5) * 1.01, delta=1e-5)
    first = reserve(ledger, budget)
    assert first.granted
    # A second request while the first is still in flight must not fit.
    assert not reserve(ledger, budget, 2).granted
    ledger.abort(first.entry_id, reason="training crashed")
    assert reserve(ledger, budget, 3).granted
    assert [r.status for r in ledger.entries()] == ["aborted", "refused", "reserved"]


def test_commit_of_unknown_or_finished_entry_is_an_error(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / LEDGER_FILE)
    decision = reserve(ledger, Budget(None, 1e-5))
    ledger.commit(decision.entry_id)
    with pytest.raises(ValueError, match="not a pending reservation"):
        ledger.commit(decision.entry_id)
    with pytest.raises(ValueError, match="not a pending reservation"):
        ledger.abort(999, reason="x")


def test_sites_and_tasks_are_kept_apart(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILE
    budget = Budget(None, 1e-5)
    a, b = PrivacyLedger(path, site="a"), PrivacyLedger(path, site="b")
    reserve(a, budget, task="x")
    reserve(a, budget, task="y")
    reserve(b, budget, task="x")
    assert a.tasks() == ["x", "y"] and b.tasks() == ["x"]
    assert PrivacyLedger.sites_in(path) == ["a", "b"]
    assert len(a.history("x")) == 1


def test_survives_reopening_and_summarises(tmp_path: Path) -> None:
    budget = Budget(epsilon=50.0, delta=1e-5)
    first = PrivacyLedger.in_state_dir(tmp_path, site="s")
    for r in (1, 2):
        first.commit(reserve(first, budget, r).entry_id)
    reopened = PrivacyLedger.in_state_dir(tmp_path, site="s")
    (summary,) = reopened.summary(with_prv=False)
    assert summary.completed == 2 and summary.refused == 0 and summary.in_flight == 0
    assert summary.epsilon_rdp == pytest.approx(epsilon([ROUND, ROUND], delta=1e-5))
    assert summary.remaining == pytest.approx(50.0 - summary.epsilon_rdp)


def test_refuses_a_ledger_of_another_schema_version(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILE
    PrivacyLedger(path)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(ValueError, match="schema version 99"):
        PrivacyLedger(path)


def test_budget_refuses_meaningless_values() -> None:
    with pytest.raises(ValueError, match="epsilon"):
        Budget(epsilon=0.0, delta=1e-5)
    with pytest.raises(ValueError, match="delta"):
        Budget(epsilon=1.0, delta=1.0)
    with pytest.raises(ValueError, match="site"):
        PrivacyLedger(":memory:", site="")


REQUESTS = st.lists(
    st.tuples(
        st.sampled_from([0.01, 0.05, 0.2, 1.0]),
        st.sampled_from([0.7, 1.0, 2.0, 5.0]),
        st.integers(1, 60),
        st.sampled_from(["commit", "abort", "leave"]),
    ),
    min_size=1,
    max_size=12,
)


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(budget_eps=st.sampled_from([0.3, 1.0, 3.0, 8.0]), requests=REQUESTS)
def test_total_epsilon_never_exceeds_the_budget(
    tmp_path_factory: pytest.TempPathFactory, budget_eps: float, requests: list
) -> None:
    """Property: whatever the requests and what happens to them, the counted ε stays
    within the budget, and every granted request was within it when granted."""
    ledger = PrivacyLedger(tmp_path_factory.mktemp("ledger") / LEDGER_FILE)
    budget = Budget(budget_eps, 1e-5)
    for i, (q, sigma, steps, outcome) in enumerate(requests):
        decision = ledger.check_and_reserve(
            task="t",
            run_id="r",
            server_round=i,
            mechanism=Mechanism(q, sigma, steps),
            budget=budget,
        )
        if decision.granted:
            assert decision.epsilon_after <= budget_eps
            if outcome == "commit":
                ledger.commit(decision.entry_id)
            elif outcome == "abort":
                ledger.abort(decision.entry_id, reason="failed")
        assert ledger.spent(task="t", delta=1e-5) <= budget_eps


def _race(path: str, site: str, budget_eps: float, tries: int, out: multiprocessing.Queue) -> None:
    ledger = PrivacyLedger(path, site=site)
    granted = 0
    for i in range(tries):
        decision = ledger.check_and_reserve(
            task="t",
            run_id="r",
            server_round=i,
            mechanism=ROUND,
            budget=Budget(budget_eps, 1e-5),
        )
        if decision.granted:
            ledger.commit(decision.entry_id)
            granted += 1
    out.put(granted)


def test_concurrent_processes_never_overspend_together(tmp_path: Path) -> None:
    """Four processes race for one site's budget of exactly five rounds."""
    # Prepare
    path = str(tmp_path / LEDGER_FILE)
    PrivacyLedger(path, site="s")
    budget_eps = epsilon([ROUND] * 5, delta=1e-5) * 1.0001
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue = ctx.Queue()
    procs = [ctx.Process(target=_race, args=(path, "s", budget_eps, 4, out)) for _ in range(4)]
    # Execute
    for p in procs:
        p.start()
    try:
        granted = sum(out.get(timeout=120) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    # Assert
    ledger = PrivacyLedger(path, site="s")
    assert granted == 5
    statuses = [r.status for r in ledger.entries()]
    assert statuses.count("completed") == 5 and statuses.count("refused") == 11
    assert ledger.spent(task="t", delta=1e-5) <= budget_eps
