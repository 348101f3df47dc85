"""A run never fails in silence: the cause of a failed run, and the checks made before
a run is submitted (unit tests; the real processes are in tests/e2e/test_run_failure.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from coordinator.cli import run_app
from coordinator.preflight import check_run_config
from coordinator.run_outcome import failure_cause, recorded_failure
from coordinator.run_state import RunState
from coordinator.run_tracker import RunTracker
from coordinator.superlink import CoordinatorSettings

# What `flwr log N --show` printed for a ServerApp that raised (Flower 1.42, abridged).
FLOWER_LOG = """\
Using SuperLink: fedfleet (127.0.0.1:25527)
\x1b[92mINFO \x1b[0m:      Start `flwr-serverapp` process
\x1b[91mERROR \x1b[0m:     ServerApp raised an exception
Traceback (most recent call last):
  File "/site-packages/flwr/server/run_serverapp.py", line 60, in run
    server_app(grid=grid, context=context)
  File "/work/coordinator/secagg_exchange.py", line 57, in secagg_from_run_config
    secagg.params_for(config.clients_per_round)  # T > K+1, overflow, too few clients
privacy.secagg.errors.ProtocolError: stage one failed
During handling of the above exception, another exception occurred:
ValueError: secure aggregation needs at least 3 clients per round (got 2); raise it
\x1b[91mERROR \x1b[0m:     Exit Code: 201
An unhandled exception occurred in the ServerApp.
"""


def test_failure_cause_is_the_last_exception_line_without_colours() -> None:
    assert failure_cause(FLOWER_LOG) == (
        "ValueError: secure aggregation needs at least 3 clients per round (got 2); raise it"
    )


def test_failure_cause_keeps_the_class_name_of_a_dotted_exception() -> None:
    assert failure_cause("x\nprivacy.secagg.errors.ProtocolError: stage one failed\n") == (
        "ProtocolError: stage one failed"
    )


def test_a_log_without_an_exception_has_no_cause() -> None:
    assert failure_cause("INFO: round 1\nERROR: Exit Code: 201\n    raise ValueError(\n") is None


def test_tracker_records_a_failure_that_belongs_to_its_flower_run(tmp_path: Path) -> None:
    # Prepare: the tracker of a deployment run (run-id and out-dir set).
    tracker = RunTracker.for_run({"run-id": "run-x", "out-dir": str(tmp_path)})
    # Execute: the ServerApp of Flower run 42 raised.
    tracker.record_failure(ValueError("unknown strategy 'x';\n choose fedavg"), flower_run=42)
    status = RunState(tmp_path, "run-x", {}, "", [42]).status()
    # Assert: one line with the type; a resumed attempt (Flower run 43) is not judged by it.
    assert recorded_failure(status, 42) == "ValueError: unknown strategy 'x'; choose fedavg"
    assert recorded_failure(status, 43) is None
    assert recorded_failure({"phase": "waiting-for-sites"}, 42) is None


def _never_asked() -> int:
    raise AssertionError("the registered sites are counted only for secure aggregation")


def test_preflight_accepts_a_plain_run_without_asking_the_superlink() -> None:
    check_run_config({"clients-per-round": 2, "num-clients": 2}, registered=_never_asked)


@pytest.mark.parametrize(
    ("run_config", "registered", "message"),
    [
        ({"secagg": True, "clients-per-round": 2, "num-clients": 2}, 5, "at least 3 clients"),
        ({"secagg": True, "clients-per-round": 4, "num-clients": 4}, 3, "the SuperLink has 3"),
    ],
)
def test_preflight_refuses_secure_aggregation_without_enough_sites(
    run_config: dict[str, Any], registered: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        check_run_config(run_config, registered=lambda: registered)


def test_preflight_accepts_secure_aggregation_with_enough_registered_sites() -> None:
    check_run_config(
        {"secagg": True, "clients-per-round": 3, "num-clients": 3}, registered=lambda: 3
    )


def test_status_of_a_run_whose_serverapp_failed_exits_1_with_the_cause(tmp_path: Path) -> None:
    # Prepare: a run folder whose ServerApp (Flower run 7) wrote its failure.
    (tmp_path / "coordinator.toml").write_text('[superlink]\naddress = "127.0.0.1:9"\n')
    settings = CoordinatorSettings.load(tmp_path / "coordinator.toml")
    state = RunState.create(settings.state_dir, {"num-server-rounds": 5})
    state.flower_runs.append(7)
    state.save()
    RunTracker.for_run(state.run_config).record_failure(RuntimeError("boom"), flower_run=7)
    # Execute
    result = CliRunner().invoke(
        run_app, ["status", state.run_id, "--coordinator", str(tmp_path / "coordinator.toml")]
    )
    # Assert: exit 1, the round count and one error line with the cause.
    assert result.exit_code == 1
    assert f"run {state.run_id}: round 0/5 failed" in result.stdout
    assert result.stderr.strip() == f"error: run {state.run_id} failed: RuntimeError: boom"
