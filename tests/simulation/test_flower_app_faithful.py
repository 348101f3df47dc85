"""``fedfleet simulate --app``: a third-party Flower App runs as it would on Flower.

Its errors come back whole (traceback, exit 1), fedfleet's defaults never constrain it,
nothing is written into its records or metrics, its own INFO logs are shown, and a
server's ``send_and_receive`` timeout is honoured. The app is written here, in a tmp
dir: it knows nothing about fedfleet.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from simulation.settings import SimulateSettings

FEDFLEET = [sys.executable, "-c", "from fedfleet.cli import main; main()"]

PYPROJECT = """
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "tiny-app"
version = "1.0.0"
dependencies = ["flwr>=1.22", "numpy"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "example"

[tool.flwr.app.components]
serverapp = "tiny_app.server_app:app"
clientapp = "tiny_app.client_app:app"

[tool.flwr.app.config]
num-server-rounds = 2
timeout = 3600.0
sleep-client = -1
sleep-s = 0.0
raise-in = "none"
examples = 10
"""

SERVER_APP = '''
"""A FedAvg ServerApp, quickstart-numpy style."""
import json
from logging import INFO
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    log(INFO, "TINY-APP says: %s rounds", cfg["num-server-rounds"])
    if cfg["raise-in"] == "server":
        nodes = []
        first = nodes[0]  # the failing line of the user's ServerApp
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=1,
                      min_available_nodes=1)
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord([np.zeros(3)]),
        num_rounds=cfg["num-server-rounds"],
        timeout=cfg["timeout"],
    )
    metrics = {str(r): dict(m) for r, m in result.train_metrics_clientapp.items()}
    Path("app_metrics.json").write_text(json.dumps(metrics))
'''

CLIENT_APP = '''
"""A ClientApp: adds one to the weights; its train_loss is its partition id."""
import time

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = context.run_config
    pid = context.node_config["partition-id"]
    if pid == cfg["sleep-client"]:
        time.sleep(cfg["sleep-s"])
    if cfg["raise-in"] == "client" and pid == 1:
        ratio = 1 / 0  # the failing line of the user's ClientApp
    weights = msg.content["arrays"].to_numpy_ndarrays()[0] + 1.0
    metrics = MetricRecord({"train_loss": float(pid), "num-examples": cfg["examples"]})
    content = RecordDict({"arrays": ArrayRecord([weights]), "metrics": metrics})
    return Message(content=content, reply_to=msg)
'''


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    root = tmp_path / "tiny-app"
    (root / "tiny_app").mkdir(parents=True)
    (root / "pyproject.toml").write_text(PYPROJECT)
    (root / "tiny_app" / "__init__.py").write_text("")
    (root / "tiny_app" / "server_app.py").write_text(SERVER_APP)
    (root / "tiny_app" / "client_app.py").write_text(CLIENT_APP)
    return root


# Every ClientApp call in this process: these tests are about what an app sees, not about
# worker processes (tests/simulation/test_app_workers*.py). Under the default `auto` each
# run also starts a forkserver and two workers, 2-4x its wall time on 2 busy cores.
IN_PROCESS = ("--app-workers", "0")


def _simulate(app: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", COLUMNS="200", OMP_NUM_THREADS="1")
    return subprocess.run(
        [*FEDFLEET, "simulate", "--app", str(app), "--out", str(out), *args],
        cwd=out.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _exchanges(out: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads((out / "exchanges.json").read_text())["exchanges"]
    return rows


# -- 1. errors ----------------------------------------------------------------------------
def test_a_raising_server_app_prints_its_whole_traceback_and_exits_1(
    app_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    proc = _simulate(
        app_dir, out, "--clients", "4", "--run-config", 'raise-in="server"', *IN_PROCESS
    )
    assert proc.returncode == 1, proc.stderr
    # every frame down to the user's failing line, and the line itself
    assert "Traceback (most recent call last)" in proc.stderr
    assert 'server_app.py", line' in proc.stderr and "first = nodes[0]" in proc.stderr
    assert "simulation/inprocess.py" in proc.stderr  # the outer frames are there too
    assert "IndexError: list index out of range" in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the app's ServerApp raised IndexError"), last
    assert (out / "exchanges.json").is_file()  # the run folder is kept


def test_a_raising_client_app_is_an_error_reply_then_exit_1_with_its_traceback(
    app_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    proc = _simulate(
        app_dir, out, "--clients", "3", "--run-config", 'raise-in="client"', *IN_PROCESS
    )
    assert proc.returncode == 1, proc.stderr
    # the run went on (as on Flower): each round one error reply and two results
    assert [(e["replies"], e["errors"]) for e in _exchanges(out)] == [(2, 1), (2, 1)]
    # the traceback is shown once for the failing line, with the line of the user's code
    assert proc.stderr.count("ratio = 1 / 0") == 1, proc.stderr
    assert 'client_app.py", line' in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "ClientApp raised ZeroDivisionError" in last and "in 2 call(s)" in last, last


def test_an_app_module_raising_on_import_prints_its_traceback_and_exits_1(
    app_dir: Path, tmp_path: Path
) -> None:
    client = app_dir / "tiny_app" / "client_app.py"
    client.write_text("import json\nSETTINGS = json.loads('{bad')\n" + client.read_text())
    out = tmp_path / "run"
    proc = _simulate(app_dir, out, "--clients", "2", *IN_PROCESS)
    assert proc.returncode == 1, proc.stderr
    assert 'client_app.py", line 2' in proc.stderr and "json.loads('{bad')" in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the app's ClientApp raised JSONDecodeError"), last
    assert "while being imported" in last and not out.exists()


def test_a_component_reference_naming_no_module_is_bad_input(app_dir: Path, tmp_path: Path) -> None:
    pyproject = app_dir / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("tiny_app.client_app", "tiny_app.clnt"))
    out = tmp_path / "run"
    proc = _simulate(app_dir, out, "--clients", "2", *IN_PROCESS)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no module 'tiny_app.clnt'" in lines[0], proc.stderr


def _build(**overrides: Any) -> SimulateSettings:
    return SimulateSettings.build(config_file=None, overrides=overrides)


@pytest.mark.parametrize("devices", ["", "rpi5=1"])
def test_round_deadline_advice_is_the_same_with_or_without_devices(
    app_dir: Path, devices: str
) -> None:
    with pytest.raises(ValueError) as caught:
        _build(app=str(app_dir), deadline=5.0, devices=devices)
    assert "--round-deadline is the deadline of fedfleet's own apps" in str(caught.value)
    assert "send_and_receive(timeout=...)" in str(caught.value)


# -- 2. fedfleet's defaults never constrain an --app run; 4. the app's output ------------
def test_four_clients_run_and_the_apps_own_info_logs_are_shown(
    app_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    proc = _simulate(app_dir, out, "--clients", "4", *IN_PROCESS)
    assert proc.returncode == 0, proc.stderr
    assert [e["messages"] for e in _exchanges(out)] == [4, 4]
    assert "TINY-APP says: 2 rounds" in proc.stderr  # the app's own log(INFO, ...)
    assert "Aggregated MetricRecord" in proc.stderr  # FedAvg's per-round metrics
    assert "exchange   1: train to 4 clients" in proc.stderr  # fedfleet's progress beside


def test_quiet_silences_the_apps_info_logs(app_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _simulate(app_dir, out, "--clients", "1", "--quiet", *IN_PROCESS)
    assert proc.returncode == 0, proc.stderr
    assert "TINY-APP says" not in proc.stderr and "Aggregated" not in proc.stderr
    assert "exchange" not in proc.stderr


def test_clients_below_one_is_bad_input(app_dir: Path) -> None:
    with pytest.raises(ValueError, match="--clients must be >= 1"):
        _build(app=str(app_dir), clients=0)


# -- 3. nothing injected into the app's records or metrics ------------------------------
def test_devices_leave_the_apps_metrics_as_they_are(app_dir: Path, tmp_path: Path) -> None:
    plain, fleet = tmp_path / "plain", tmp_path / "fleet"
    assert _simulate(app_dir, plain, "--clients", "6", *IN_PROCESS).returncode == 0
    proc = _simulate(app_dir, fleet, "--clients", "6", "--devices", "cpu-x86=1", *IN_PROCESS)
    assert proc.returncode == 0, proc.stderr
    without = json.loads((plain / "app_metrics.json").read_text())
    with_devices = json.loads((fleet / "app_metrics.json").read_text())
    assert {r: sorted(m) for r, m in with_devices.items()} == {
        r: sorted(m) for r, m in without.items()
    }
    assert all("sim-seconds" not in m for m in with_devices.values())
    # the simulated clock is fedfleet's record: exchanges.json
    rows = _exchanges(fleet)
    assert all(r["sim_time_s"] > 0 and "sim_slowest_s" in r for r in rows), rows
    assert rows[1]["sim_time_s"] > rows[0]["sim_time_s"]


# -- 5. server timeouts honoured ----------------------------------------------------------
def test_a_client_sleeping_past_the_servers_timeout_is_left_out(
    app_dir: Path, tmp_path: Path
) -> None:
    # Prepare: client 0 sleeps 90 s each round; the server waits 1 s (Flower's
    # flower-secure-aggregation pattern). The sleep is far longer than the run takes
    # even under heavy load, so the wall-clock bound below cannot be missed by a slow
    # machine, only by a run that waited for the sleeper.
    out = tmp_path / "run"
    sleep_s = 90.0
    config = f"sleep-client=0 sleep-s={sleep_s} timeout=1.0"
    t0 = time.perf_counter()
    proc = _simulate(app_dir, out, "--clients", "4", "--run-config", config, *IN_PROCESS)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr
    # Assert: each round the server got the 3 others (client 0 never arrives, as on
    # Flower), their mean train_loss (1+2+3)/3, and the run never waited for the sleep.
    assert [(e["replies"], e["timed_out"]) for e in _exchanges(out)] == [(3, 1), (3, 1)]
    metrics = json.loads((out / "app_metrics.json").read_text())
    assert [m["train_loss"] for m in metrics.values()] == pytest.approx([2.0, 2.0])
    assert wall < sleep_s, wall  # not even one round waited for the sleep in full


def test_a_device_slower_than_the_timeout_is_left_out_without_waiting(
    app_dir: Path, tmp_path: Path
) -> None:
    # Prepare: cpu-x86 answers in ~0.1 simulated s, rpi4 in ~0.6 s; the server waits 0.3 s.
    out = tmp_path / "run"
    config = "timeout=0.3 examples=1"
    t0 = time.perf_counter()
    proc = _simulate(
        app_dir,
        out,
        *("--clients", "8", "--devices", "cpu-x86=0.5,rpi4=0.5", "--run-config", config),
        *IN_PROCESS,
    )
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr
    rows = _exchanges(out)
    assert all(r["timed_out"] > 0 and r["replies"] > 0 for r in rows), rows
    # the server waited its whole timeout each exchange, in simulated time only
    assert rows[-1]["sim_time_s"] == pytest.approx(0.3 * len(rows))
    assert wall < 60.0
