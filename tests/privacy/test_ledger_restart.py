"""Restart: kill -9 a site process mid-run; its ledger still holds every completed
training, stays consistent, and keeps counting the training that was in flight."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from privacy.dp import Mechanism
from privacy.ledger import LEDGER_FILE, Budget, PrivacyLedger

CHILD = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(1)
    from coordinator.app import build_server_app
    from edge_client.app import build_client_app
    from simulation.inprocess import run_inprocess

    def on_round(record):
        print(f"round {record.round} done", flush=True)

    run_inprocess(
        server_app=build_server_app(on_round=on_round),
        client_app=build_client_app(),
        num_nodes=1,
        run_config={
            "task": "breast-cancer-mlp", "num-server-rounds": 50, "num-clients": 1,
            "clients-per-round": 1, "out-dir": sys.argv[1], "dp": "local",
            "dp-noise-multiplier": 1.0, "dp-clip": 1.0,
        },
    )
    """
)


@pytest.mark.slow
def test_kill_minus_nine_mid_run_keeps_every_completed_training(tmp_path: Path) -> None:
    # Prepare: a site process training round after round with DP-SGD
    script = tmp_path / "site.py"
    script.write_text(CHILD)
    out_dir = tmp_path / "run"
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(out_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    done: list[int] = []
    try:
        # Execute: wait for two finished rounds, then kill -9 while it trains more
        deadline = time.monotonic() + 240
        assert proc.stdout is not None
        while len(done) < 2 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("round "):
                done.append(int(line.split()[1]))
        assert len(done) == 2, "the site process did not finish two rounds"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    # Assert: every round the coordinator saw finish is a completed ledger row
    path = out_dir / LEDGER_FILE
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    ledger = PrivacyLedger(path, site="client-0")
    rows = ledger.entries()
    completed = {e.server_round for e in rows if e.status == "completed"}
    assert set(done) <= completed
    assert all(e.status in ("completed", "reserved") for e in rows)
    assert [e.server_round for e in rows] == list(range(1, len(rows) + 1))
    # The ledger is usable after the crash, and a training left in flight still counts.
    in_flight = [e for e in rows if e.status == "reserved"]
    history = ledger.history("breast-cancer-mlp")
    assert len(history) == len(rows) and len(in_flight) <= 1
    decision = ledger.check_and_reserve(
        task="breast-cancer-mlp",
        run_id="after-restart",
        server_round=1,
        mechanism=Mechanism(0.05, 1.0, 1),
        budget=Budget(None, 1e-5),
    )
    assert decision.granted and decision.epsilon_before > 0
