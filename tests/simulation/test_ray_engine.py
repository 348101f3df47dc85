"""``fedfleet simulate --engine ray``: the same model as in process, on a real two-node
Ray cluster (Ray's own ``cluster_utils.Cluster``: a head and a second node, each its own
raylet, on this machine), its refusals of bad input, and a local Ray that is shut down
when the run is stopped."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from simulation.ray_engine import slices
from simulation.ray_settings import host_port

ROOT = Path(__file__).resolve().parents[2]
FEDFLEET = [sys.executable, "-c", "from fedfleet.cli import main; main()"]
# 12 clients, 6 a round, 2 rounds: every worker gets a slice of 3 and trains them batched
RUN = ["--task", "digits-cnn", "--clients", "12", "--clients-per-round", "6", "--rounds", "2"]


def _env() -> dict[str, str]:
    """This checkout first on the path (the driver's and Ray's workers' imports), one
    torch thread, no Flower telemetry, a wide terminal (lines are matched)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return dict(
        os.environ,
        PYTHONPATH=path,
        FLWR_TELEMETRY_ENABLED="0",
        OMP_NUM_THREADS="1",
        COLUMNS="200",
        TERMINAL_WIDTH="200",
        RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0",
    )


def _simulate(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FEDFLEET, "simulate", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --- pure parts ---------------------------------------------------------------------


def test_slices_cover_the_cohort_in_order_and_near_equal() -> None:
    # Prepare/Execute
    cuts = slices(7, 3)
    # Assert: contiguous, in order, sizes differ by at most one; never an empty slice
    assert [list(c) for c in cuts] == [[0, 1, 2], [3, 4], [5, 6]]
    assert slices(2, 5) == [range(0, 1), range(1, 2)]
    assert slices(0, 3) == [range(0, 0)]


def test_ray_addresses_parse_with_rays_default_ports() -> None:
    assert host_port("10.0.0.5") == ("10.0.0.5", 6379)
    assert host_port("head:6380") == ("head", 6380)
    assert host_port("ray://head") == ("head", 10001)
    assert host_port("ray://head:10002") == ("head", 10002)


# --- bad input: one line, exit 2, no run folder, Ray never imported -------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--ray-address", "127.0.0.1:6379"], "--ray-address needs --engine ray"),
        (["--ray-workers", "2"], "--ray-workers needs --engine ray"),
        (["--engine", "ray", "--ray-address", "127.0.0.1:1"], "no Ray cluster answers"),
        (["--engine", "ray", "--ray-address", "head:notaport"], "is not HOST:PORT"),
        (["--engine", "ray", "--ray-workers", "-1"], "--ray-workers must be >= 1"),
    ],
)
def test_bad_ray_flags_one_clear_line_no_run_folder(
    tmp_path: Path, args: list[str], needle: str
) -> None:
    out = tmp_path / "run"
    t0 = time.perf_counter()
    proc = _simulate([*args, "--out", str(out)], tmp_path, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert not out.exists()
    assert time.perf_counter() - t0 < 20  # refused up front, not after Ray's retries


def test_a_port_that_is_not_ray_is_refused_at_once(tmp_path: Path) -> None:
    # Prepare: something listening that is not a gRPC server (Ray would wait minutes)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        # Execute
        proc = _simulate(["--engine", "ray", "--ray-address", address, "--out", "run"], tmp_path)
    # Assert
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "answers, but not as a Ray cluster" in lines[0], proc.stderr
    assert not (tmp_path / "run").exists()


def test_inprocess_engine_never_imports_ray(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path\n"
        "from simulation.settings import SimulateSettings\n"
        "from simulation.runner import run_simulation\n"
        "s = SimulateSettings.build(config_file=None, overrides=dict(task='breast-cancer-mlp',"
        " clients=4, clients_per_round=2, rounds=1))\n"
        f"run_simulation(s, out_dir=Path({str(tmp_path / 'run')!r}), quiet=True)\n"
        "print('ray' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False"


# --- a real two-node cluster ----------------------------------------------------------


@pytest.fixture(scope="module")
def two_node_cluster() -> Iterator[str]:
    """A Ray head and a second node (one CPU each) on this machine; their workers import
    this checkout. Ray's own utility starts and stops their processes."""
    from ray.cluster_utils import Cluster

    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "OMP_NUM_THREADS")}
    os.environ.update({k: _env()[k] for k in saved})  # inherited by the nodes' workers
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster.address
    finally:
        cluster.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.mark.slow
@pytest.mark.e2e
def test_two_node_cluster_gives_the_in_process_model(tmp_path: Path, two_node_cluster: str) -> None:
    # Prepare: the in-process reference, same seed. SecAgg+ (its stages keep state in
    # each client's Context, which travels to the workers and back), dropouts and
    # device profiles (admitted in the driver) ride along: one run covers them all.
    run = [*RUN, "--secagg", "--dropout", "0.2", "--devices", "rpi5=0.5,cpu-x86=0.5"]
    ref = _simulate([*run, "--out", str(tmp_path / "inprocess")], tmp_path)
    assert ref.returncode == 0, ref.stderr
    # Execute: the same run on the cluster, one worker per node
    proc = _simulate(
        [
            *run,
            "--engine",
            "ray",
            "--ray-address",
            two_node_cluster,
            "--ray-workers",
            "2",
            "--out",
            str(tmp_path / "ray"),
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    # Assert: the same final model, byte for byte, and the same per-round metrics
    ray_model = (tmp_path / "ray" / "model.pt").read_bytes()
    assert ray_model == (tmp_path / "inprocess" / "model.pt").read_bytes()

    def rounds(name: str) -> list[tuple[float, float, int]]:
        doc = json.loads((tmp_path / name / "metrics.json").read_text())
        return [(r["accuracy"], r["loss"], r["clients"]) for r in doc["rounds"]]

    assert rounds("ray") == rounds("inprocess")
    assert any(clients < 6 for _, _, clients in rounds("ray"))  # some did drop out
    # ... and the slices ran on both nodes: "slices per Ray node: aaaa: 2, bbbb: 2"
    log = proc.stderr + proc.stdout
    assert "Ray: 2 workers on 2 nodes" in log, log
    spread = log.split("slices per Ray node:")[1].splitlines()[0]
    counts = [int(part.split(":")[1]) for part in spread.split(",")]
    assert len(counts) == 2 and all(c >= 2 for c in counts), spread


@pytest.mark.slow
@pytest.mark.e2e
def test_local_ray_is_shut_down_when_the_run_is_terminated(tmp_path: Path) -> None:
    # Prepare: a run long enough to be stopped midway, on its own local Ray
    args = [*RUN[:6], "--rounds", "50", "--engine", "ray", "--ray-workers", "1"]
    proc = subprocess.Popen(
        [*FEDFLEET, "simulate", *args, "--out", str(tmp_path / "run")],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    ray_procs: list[psutil.Process] = []
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:  # wait for round 1: Ray's processes are all up
            seen.append(line)
            if line.startswith("round   1"):
                break
        ray_procs = psutil.Process(proc.pid).children(recursive=True)
        assert ray_procs, "".join(seen)
        # Execute
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        # Assert: the driver is gone and so is every Ray process it started
        _gone, alive = psutil.wait_procs(ray_procs, timeout=30)
        assert not alive, [p.pid for p in alive]
        assert proc.returncode != 0
    finally:  # whatever failed above, nothing of this test outlives it
        for child in ray_procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
