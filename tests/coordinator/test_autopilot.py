"""``fedfleet run autopilot``: which fleet runs it executes, and its bad input."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
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


class _Stop(Exception):
    """Ends the polling loop from its sleep (the test's way out of `while True`)."""


def test_a_fleet_that_does_not_answer_is_retried_and_a_refusal_ends_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from coordinator.autopilot import retry_later
    from fleet.client import FleetError, FleetUnreachableError

    # Prepare: a run.toml, a coordinator.toml, a fleet URL where nothing listens.
    (tmp_path / "run.toml").write_text("[run]\nnum-server-rounds = 1\n")
    (tmp_path / "c.toml").write_text(
        '[superlink]\naddress = "127.0.0.1:9092"\ncontrol-address = "127.0.0.1:9093"\n'
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            raise _Stop

    monkeypatch.setattr(time, "sleep", sleep)
    args = ["autopilot", "--config", str(tmp_path / "run.toml"), "-c", str(tmp_path / "c.toml")]
    url = ["--fleet-url", f"http://127.0.0.1:{closed}", "--interval", "5"]

    # Execute: the polling loop with nothing answering; then --once.
    polled = runner.invoke(run_app, [*args, *url], env={"FEDFLEET_TOKEN": "t"})
    once = runner.invoke(run_app, [*args, *url, "--once"], env={"FEDFLEET_TOKEN": "t"})

    # Assert: two looks, each one line, the process still polling; --once fails at once.
    assert isinstance(polled.exception, _Stop), polled.output
    tries = [line for line in polled.output.splitlines() if line.strip()]
    assert len(tries) == 2 and sleeps == [5.0, 5.0]
    assert all(t.startswith("autopilot: cannot reach the fleet") for t in tries)
    assert tries[0].endswith("trying again in 5 s")
    assert once.exit_code == 1 and "cannot reach the fleet" in once.output
    assert retry_later(FleetUnreachableError("down"), once=False)
    assert not retry_later(FleetError("HTTP 401: the token was revoked"), once=False)
