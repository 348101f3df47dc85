"""``simulate --app`` ClientApps in worker processes (simulation/app_calls.py): the same
results as in process for the same seed, a worker's exception whole, workers that end
with the run (also on SIGTERM), and the auto choice measured per message type.

The app is written here, in a tmp dir; it draws from the global random generators
without seeding them, so only fedfleet's per-call random state makes it repeat.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from simulation.app_calls import Calibration, own_random_state, parse_app_workers

FEDFLEET = [sys.executable, "-c", "from fedfleet.cli import main; main()"]

PYPROJECT = """
[project]
name = "rng-app"
version = "1.0.0"

[tool.flwr.app]
publisher = "example"

[tool.flwr.app.components]
serverapp = "rng_app.server_app:app"
clientapp = "rng_app.client_app:app"

[tool.flwr.app.config]
num-server-rounds = 2
raise-in = "none"
sleep-s = 0.0
"""

SERVER_APP = """
import hashlib
import json

import numpy as np
import torch
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    # unseeded on purpose: the model and FedAvg's sampling draw from the global generators
    model = torch.nn.Linear(4, 3)
    strategy = FedAvg(fraction_train=0.5, fraction_evaluate=0.5, min_available_nodes=2,
                      min_train_nodes=2, min_evaluate_nodes=2)
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()),
                            num_rounds=context.run_config["num-server-rounds"])
    digest = hashlib.sha256()
    for array in result.arrays.to_numpy_ndarrays():
        digest.update(array.tobytes())
    with open("result.json", "w") as fh:
        json.dump({
            "train": {str(r): dict(m) for r, m in result.train_metrics_clientapp.items()},
            "evaluate": {str(r): dict(m) for r, m in result.evaluate_metrics_clientapp.items()},
            "model": digest.hexdigest(),
        }, fh, sort_keys=True)
"""

CLIENT_APP = """
import random
import time

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context):
    time.sleep(context.run_config["sleep-s"])
    if context.run_config["raise-in"] == "client" and context.node_config["partition-id"] == 1:
        table = {}
        value = table["missing-key"]  # the failing line of the user's ClientApp
    model = torch.nn.Linear(4, 3)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    x = torch.randn(32, 4) + float(np.random.normal())
    loss = model(x).pow(2).mean()
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.1 * p.grad * random.random()
    calls = context.state["calls"]["n"] + 1 if "calls" in context.state else 1
    context.state["calls"] = MetricRecord({"n": calls})  # kept across rounds
    metrics = MetricRecord({"loss": float(loss), "num-examples": 32 + calls})
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}),
                   reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context):
    metrics = MetricRecord({"draw": float(np.random.random()) + random.random(),
                            "num-examples": 10})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
"""


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    root = tmp_path / "rng-app"
    package = root / "rng_app"
    package.mkdir(parents=True)
    (root / "pyproject.toml").write_text(PYPROJECT)
    (package / "__init__.py").write_text("")
    (package / "server_app.py").write_text(SERVER_APP)
    (package / "client_app.py").write_text(CLIENT_APP)
    return root


def _simulate(
    app: Path, out: Path, *extra: str, timeout: float = 120
) -> subprocess.CompletedProcess:
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0")
    command = [*FEDFLEET, "simulate", "--app", str(app), "--out", str(out), *extra]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_workers_give_the_same_results_as_in_process_for_the_same_seed(
    app_dir: Path, tmp_path: Path
) -> None:
    runs = {}
    for name, workers, seed in [("in", "0", "3"), ("work", "2", "3"), ("other", "2", "4")]:
        out = tmp_path / name
        done = _simulate(app_dir, out, "--clients", "8", "--seed", seed, "--app-workers", workers)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[name] = json.loads((out / "result.json").read_text())
        calls = {
            row["calls"] for row in json.loads((out / "exchanges.json").read_text())["exchanges"]
        }
        assert calls == ({"inprocess"} if workers == "0" else {"workers"})
    assert runs["in"] == runs["work"]  # bit for bit: metrics and the model's bytes
    assert runs["other"]["model"] != runs["in"]["model"]  # the seed matters
    # Context state came back from the workers: second-round examples count two calls
    assert runs["work"]["train"]["2"] != runs["work"]["train"]["1"]


@pytest.mark.slow
def test_a_clientapp_raising_in_a_worker_prints_its_traceback_and_exits_1(
    app_dir: Path, tmp_path: Path
) -> None:
    done = _simulate(
        app_dir,
        tmp_path / "run",
        "--clients",
        "4",
        "--app-workers",
        "2",
        "--run-config",
        'raise-in="client"',
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback (most recent call last)" in done.stderr
    assert 'value = table["missing-key"]' in done.stderr  # the user's failing line
    assert "KeyError" in done.stderr


def _descendants(pid: int) -> dict[int, int]:
    """The process tree under ``pid`` (the forkserver and the workers it started):
    pid -> its parent."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: dict[int, int] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, of in parents.items():
            if of == parent and child not in found:
                found[child] = parent
                frontier.append(child)
    return found


def _running(pid: int) -> bool:
    try:
        return "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_workers_end_with_the_run_on_a_stop_signal(
    app_dir: Path, tmp_path: Path, signum: signal.Signals
) -> None:
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0")
    command = [
        *FEDFLEET,
        "simulate",
        "--app",
        str(app_dir),
        "--out",
        str(tmp_path / "run"),
        "--clients",
        "8",
        "--app-workers",
        "2",
        "--run-config",
        "sleep-s=30.0",
    ]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        tree: dict[int, int] = {}
        workers: list[int] = []
        while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            tree = _descendants(proc.pid)
            workers = [pid for pid, parent in tree.items() if parent != proc.pid]
        assert len(workers) >= 2, f"the two workers never started: {tree}"
        time.sleep(1.0)  # the ServerApp is running; the workers are in their calls
        proc.send_signal(signum)
        proc.wait(timeout=20)
        # interrupted, as Ctrl-C; killed outright, the workers end mid-call by themselves
        assert proc.returncode == (-signal.SIGKILL if signum == signal.SIGKILL else 130)
        gone = time.monotonic() + 10  # no orphans: workers and forkserver end with the run
        while any(_running(pid) for pid in tree) and time.monotonic() < gone:
            time.sleep(0.2)
        assert not [pid for pid in tree if _running(pid)], tree
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_auto_measures_in_process_then_workers_then_keeps_the_faster() -> None:
    calibration = Calibration(workers=2)
    assert calibration.mode("train", 3) == "inprocess"  # too small to fill the workers
    assert calibration.mode("train", 10) == "inprocess"  # first: measured in process
    calibration.record("train", "inprocess", 1.0, 10)
    assert calibration.mode("train", 10) == "workers"  # then in workers
    calibration.record("train", "workers", 0.6, 10)
    assert calibration.mode("train", 10) == "workers"  # faster: kept
    assert calibration.mode("evaluate", 10) == "inprocess"  # each message type on its own
    calibration.record("evaluate", "inprocess", 0.1, 10)
    calibration.record("evaluate", "workers", 0.2, 10)
    assert calibration.mode("evaluate", 10) == "inprocess"


@pytest.mark.parametrize("text", ["-1", "two", "1.5"])
def test_bad_app_workers_say_what_to_give(text: str) -> None:
    with pytest.raises(ValueError, match="give auto, 0"):
        parse_app_workers(text)


def test_a_calls_random_state_is_its_own_and_the_callers_comes_back() -> None:
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    expected = (random.random(), np.random.random(), torch.rand(1).item())
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    draws = []
    for _ in range(2):
        with own_random_state(99):
            draws.append((random.random(), np.random.random(), torch.rand(1).item()))
    assert draws[0] == draws[1]  # the same seed: the same draws, whatever ran before
    assert (random.random(), np.random.random(), torch.rand(1).item()) == expected
