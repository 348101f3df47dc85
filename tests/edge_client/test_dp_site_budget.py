"""``fedfleet site budget``: spent and remaining per task, from the ledger."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge_client.site_cli import app
from privacy.dp import Mechanism, epsilon
from privacy.ledger import LEDGER_FILE, Budget, PrivacyLedger

ROUND = Mechanism(0.05, 1.0, 20)


def _fill(state: Path, site: str) -> float:
    ledger = PrivacyLedger(state / LEDGER_FILE, site=site)
    budget = Budget(epsilon([ROUND] * 2, delta=1e-5) * 1.001, 1e-5)
    for r in (1, 2, 3):
        decision = ledger.check_and_reserve(
            task="breast-cancer-mlp", run_id="1", server_round=r, mechanism=ROUND, budget=budget
        )
        if decision.granted:
            ledger.commit(decision.entry_id)
    return budget.epsilon or 0.0


def test_budget_from_a_state_dir_lists_each_site(tmp_path: Path) -> None:
    budget = _fill(tmp_path, "client-0")
    _fill(tmp_path, "client-1")
    result = CliRunner().invoke(app, ["budget", "--state-dir", str(tmp_path), "--no-prv"])
    assert result.exit_code == 0, result.output
    spent = epsilon([ROUND] * 2, delta=1e-5)
    assert "client-0" in result.output and "client-1" in result.output
    assert "breast-cancer-mlp" in result.output
    assert f"{spent:.3f}*" in result.output and f"{budget - spent:.3f}" in result.output


def test_budget_from_site_toml_uses_its_policy(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from site_testkit import make_site

    config = make_site(tmp_path, {"epsilon = 8.0": "epsilon = 5.0"})
    _fill(tmp_path / "state", "st-marys")
    result = CliRunner().invoke(app, ["budget", "--config", str(config)])
    assert result.exit_code == 0, result.output
    prv = epsilon([ROUND] * 2, delta=1e-5, accountant="prv")
    assert "st-marys" in result.output and f"{prv:.3f}" in result.output
    assert f"{5.0 - epsilon([ROUND] * 2, delta=1e-5):.3f}" in result.output


def test_budget_json_is_one_object_per_site_and_task(tmp_path: Path) -> None:
    """`--json` (what `fedfleet report --site` reads): the same numbers, machine-readable."""
    # Prepare
    budget = _fill(tmp_path, "client-0")
    # Execute
    result = CliRunner().invoke(app, ["budget", "--state-dir", str(tmp_path), "--json"])
    # Assert
    assert result.exit_code == 0, result.output
    (row,) = [json.loads(line) for line in result.output.splitlines()]
    spent = epsilon([ROUND] * 2, delta=1e-5)
    assert row["site"] == "client-0" and row["task"] == "breast-cancer-mlp"
    assert (row["completed"], row["refused"], row["in_flight"]) == (2, 1, 0)
    assert row["spent"] == pytest.approx(spent) and row["budget_epsilon"] == pytest.approx(budget)
    assert row["remaining"] == pytest.approx(budget - spent)
    assert row["epsilon_prv"] == pytest.approx(epsilon([ROUND] * 2, delta=1e-5, accountant="prv"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "exactly one of --config"),
        (["--state-dir", "/nonexistent/fedfleet"], "does not exist"),
        (["--config", "/nonexistent/site.toml"], "does not exist"),
    ],
)
def test_bad_input_is_one_clear_line(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["budget", *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_a_site_that_never_trained_is_told_so(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["budget", "--state-dir", str(tmp_path)])
    assert result.exit_code == 0 and "no DP training recorded yet" in result.output
    assert not (tmp_path / LEDGER_FILE).exists()
