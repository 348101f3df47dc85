"""10,000 and 100,000 simulated clients on one machine: peak memory measured, not guessed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

FEDFLEET = [sys.executable, "-c", "from fedfleet.cli import main; main()"]
# A wrapper process whose only child is the simulation: its RUSAGE_CHILDREN maximum
# resident set size is the simulation's peak, whatever ran before in this test session.
MEASURE = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:]).returncode\n"
    "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, flush=True)\n"
    "sys.exit(code)\n"
)
LIMIT_BYTES = 1.5 * 1024**3


def _simulate_measured(clients: int, out: Path) -> tuple[subprocess.CompletedProcess[str], int]:
    """digits-cnn with ``clients`` registered, 100 a round, 2 rounds; the run and its peak
    resident set size in bytes."""
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", COLUMNS="200")
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            MEASURE,
            *FEDFLEET,
            "simulate",
            "--clients",
            str(clients),
            "--clients-per-round",
            "100",
            "--rounds",
            "2",
            "--out",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak_kb = int(re.search(r"MAXRSS_KB (\d+)", proc.stdout).group(1))  # type: ignore[union-attr]
    return proc, peak_kb * 1024


@pytest.mark.slow
def test_ten_thousand_clients_stay_under_one_and_a_half_gib(tmp_path: Path) -> None:
    # Execute: digits-cnn, 10,000 registered clients, 100 a round.
    out = tmp_path / "run"
    proc, peak = _simulate_measured(10_000, out)
    # Assert: it stayed small, and only the clients that trained were built.
    assert peak < LIMIT_BYTES, f"peak RSS {peak / 1024**2:.0f} MiB"
    rows = json.loads((out / "metrics.json").read_text())["rounds"]
    assert [r["selected"] for r in rows] == [100, 100]
    materialised = int(re.search(r"(\d+) clients materialised", proc.stderr).group(1))  # type: ignore[union-attr]
    assert 100 <= materialised <= 200
    # Trained in waves of the batched-training memory budget (~57 digits clients at the
    # default 128 MiB): two a round.
    steps = int(re.search(r"200 local trainings in (\d+) batched", proc.stderr).group(1))  # type: ignore[union-attr]
    assert 2 <= steps <= 4


@pytest.mark.slow
def test_hundred_thousand_clients_stay_under_one_gib(tmp_path: Path) -> None:
    # Execute: digits-cnn, 100,000 registered clients (lazy partitions), 100 a round.
    out = tmp_path / "run"
    proc, peak = _simulate_measured(100_000, out)
    # Assert: it stayed below 1 GiB (measured 0.5 GiB; 1M clients: docs/simulation.md).
    assert peak < 1024**3, f"peak RSS {peak / 1024**2:.0f} MiB"
    rows = json.loads((out / "metrics.json").read_text())["rounds"]
    assert [r["selected"] for r in rows] == [100, 100]
    assert "100000 clients" in proc.stderr
