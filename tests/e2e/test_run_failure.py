"""A run never fails in silence, with real processes: a TLS SuperLink started by
``fedfleet coordinator up`` and ``fedfleet run submit/status`` as the operator runs them.

No site is needed: the ServerApp refuses its config before waiting for sites, and the
checks made at submit time count the sites registered with the SuperLink (none here).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from silo_testkit import FEDFLEET, TASK, SiloFederation, _env

from coordinator.run_outcome import flower_failure
from coordinator.run_state import RunState

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CAUSE = "ValueError: unknown strategy 'no-such-strategy'; choose one of: "


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SiloFederation]:
    federation = SiloFederation(tmp_path_factory.mktemp("runfail"))
    try:
        yield federation.start(num_sites=0)
    finally:
        federation.stop()


def fedfleet(
    fed: SiloFederation, *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FEDFLEET, *args, "--coordinator", str(fed.coordinator_toml)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=fed.root,
    )


def run_toml(fed: SiloFederation, name: str, body: str) -> Path:
    path = fed.root / f"{name}.toml"
    path.write_text(f'[run]\ntask = "{TASK}"\nnum-server-rounds = 5\n{body}')
    return path


def test_serverapp_error_reaches_submit_wait_and_status_in_seconds(fed: SiloFederation) -> None:
    # Prepare: a config the ServerApp refuses when it starts (submit does not know strategies).
    config = run_toml(fed, "bad-strategy", 'sites = 1\nstrategy = "no-such-strategy"\n')
    # Execute: submit and wait, as an operator would.
    t0 = time.monotonic()
    result = fedfleet(fed, "run", "submit", "--config", str(config), "--wait")
    elapsed = time.monotonic() - t0
    # Assert: exit 1 with one line naming the cause, long before --timeout (3,600 s).
    assert result.returncode == 1, result.stdout + result.stderr
    run_id = result.stdout.strip().splitlines()[0]
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: run {run_id} failed: {CAUSE}"), result.stderr
    assert elapsed < 60, f"the failure took {elapsed:.0f} s to surface"

    status = fedfleet(fed, "run", "status", run_id)
    assert status.returncode == 1, status.stdout + status.stderr
    assert f"run {run_id}: round 0/5 failed" in status.stdout
    assert status.stderr.strip() == error

    # Flower's own record (flwr ls + flwr log) names the same cause: the path used when
    # the ServerApp dies before it can write status.json.
    state = RunState.load(fed.settings.state_dir, run_id)
    cause = flower_failure(fed.settings, state.flower_runs[-1], done=lambda: False)
    assert cause is not None and cause.startswith(CAUSE)


@pytest.mark.parametrize(
    ("sites", "message"),
    [
        (2, "secure aggregation needs at least 3 clients per round (got 2)"),
        (
            3,
            "secure aggregation with sites = 3 needs that many registered sites, and the "
            "SuperLink has 0",
        ),
    ],
)
def test_secure_aggregation_without_enough_sites_is_refused_at_submit(
    fed: SiloFederation, sites: int, message: str
) -> None:
    config = run_toml(fed, f"secagg-{sites}", f"sites = {sites}\nsecagg = true\n")
    runs_before = set((fed.settings.state_dir / "runs").glob("*"))

    result = fedfleet(fed, "run", "submit", "--config", str(config), "--wait")

    assert result.returncode == 2, result.stdout + result.stderr
    [line] = result.stderr.strip().splitlines()  # one line
    assert line.startswith("error: run config refused: ") and message in line, line
    assert set((fed.settings.state_dir / "runs").glob("*")) == runs_before  # nothing submitted
