"""``fedfleet run autopilot``: which fleet runs it executes, and its bad input."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from coordinator.autopilot import waiting_retrains
from coordinator.cli import run_app
from fleet.client import RunInfo

runner = CliRunner()


def _run(run_id: int, status: str = "created", reason: str | None = "drift") -> RunInfo:
    config = {} if reason is None else {"reason": reason, "parent_model_version_id": 3}
    return RunInfo(
        id=run_id,
        name="",
        task="digits-cnn",
        strategy="",
        status=status,
        config=config,
        final_model_version_id=None,
    )


def test_only_created_drift_runs_not_tried_before_are_executed_oldest_first() -> None:
    runs = [
        _run(9),
        _run(4),
        _run(5, status="running"),  # another coordinator took it
        _run(6, reason=None),  # an operator's own run: not the autopilot's
        _run(7, reason="manual"),
        _run(2),  # tried before and failed to start: not retried blindly
    ]
    assert waiting_retrains(runs, tried={2}) == [4, 9]
    assert waiting_retrains([], tried=set()) == []


def test_bad_input_is_one_line_and_exit_2_before_the_fleet_is_asked(tmp_path: Path) -> None:
    missing = runner.invoke(
        run_app,
        ["autopilot", "--config", str(tmp_path / "run.toml"), "-c", str(tmp_path / "c.toml")],
    )
    assert missing.exit_code == 2
    lines = [line for line in missing.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    interval = runner.invoke(run_app, ["autopilot", "--config", "run.toml", "--interval", "0"])
    assert interval.exit_code == 2
