"""The Ray engine against the in-process engine, side by side in one run.

One workload — digits-cnn, 1,000 clients, 100 a round, 4 rounds, 1 local epoch, FedAvg,
seed 0, one torch thread per process — run as ``fedfleet simulate`` in a fresh process
per engine, one after the other:

- ``inprocess``: the in-process engine (the whole cohort one batched computation);
- ``ray-N``: ``--engine ray --ray-workers N`` (each round's cohort cut into N slices,
  each a batched computation in its own Ray actor), for each N of ``--workers``; on a
  local Ray started by the run, or on a cluster with ``--ray-address``.

Measured from outside each process, as ``bench/simulation.py`` does: start-up (launch
until round 1 begins: imports, data, Ray and its actors), each round's time (the
coordinator's ``duration_s``), the steady round (mean of rounds 2..), throughput
(clients trained per second of steady round), the peak memory of the process tree
(Ray's processes included) and the final accuracy; and whether the final model is the
in-process one byte for byte. Ray's overhead is what ``ray-1`` costs over
``inprocess`` (the same single batched computation, plus shipping messages and Contexts
to an actor and back): per steady round and at start-up. The machine's load average is
printed before and after: on a shared machine, N workers can only go faster than one
when N cores are free.

    python bench/ray_engine.py [--clients 1000] [--per-round 100] [--rounds 4]
                               [--workers 1,2] [--ray-address ADDR] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from proc_tree import Sampler  # bench/ is the script's folder

FEDFLEET = [sys.executable, "-c", "from fedfleet.cli import main; main()"]
GOAL_OVERHEAD = 0.25  # Ray's steady-round overhead at one worker: at most +25%


@dataclass
class Result:
    engine: str
    startup_s: float
    rounds_s: list[float]
    steady_s: float
    clients_per_s: float
    peak_mib: float
    wall_s: float
    final_accuracy: float
    same_model: bool | None = None


def run_engine(
    engine: str, extra: list[str], args: argparse.Namespace, out: Path, env: dict[str, str]
) -> Result:
    """``fedfleet simulate`` in a subprocess; round 1's start seen from outside."""
    run_dir = out / f"run-{engine}"
    command = [
        *FEDFLEET,
        "simulate",
        "--task",
        "digits-cnn",
        "--clients",
        str(args.clients),
        "--clients-per-round",
        str(args.per_round),
        "--rounds",
        str(args.rounds),
        "--local-epochs",
        "1",
        "--seed",
        "0",
        "--threads",
        "1",
        *extra,
        "--out",
        str(run_dir),
        "--quiet",
    ]
    launch = time.time()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sampler = Sampler(proc.pid)
    thread = threading.Thread(target=sampler.run, daemon=True)
    thread.start()
    first_seen: float | None = None
    metrics = run_dir / "metrics.json"
    while proc.poll() is None:
        if first_seen is None:
            try:
                if json.loads(metrics.read_text())["rounds"]:
                    first_seen = time.time()
            except (OSError, ValueError, KeyError):
                pass
        time.sleep(0.05)
    wall = time.time() - launch
    sampler.stop()
    thread.join()
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{engine} failed: {stderr[-2000:]}")
    doc = json.loads(metrics.read_text())
    durations = [float(r["duration_s"]) for r in doc["rounds"]]
    steady = sum(durations[1:]) / max(1, len(durations) - 1)
    startup = (first_seen or launch + wall) - durations[0] - launch
    return Result(
        engine=engine,
        startup_s=startup,
        rounds_s=durations,
        steady_s=steady,
        clients_per_s=args.per_round / steady,
        peak_mib=sampler.peak_bytes / 2**20,
        wall_s=wall,
        final_accuracy=float(doc["final_accuracy"]),
    )


def print_table(results: list[Result]) -> list[str]:
    base = results[0]
    lines = [
        "| engine | start-up s | round 1 s | steady round s | clients/s | vs inprocess "
        "(steady) | peak MiB | final accuracy | same model |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        same = "—" if r.same_model is None else ("yes" if r.same_model else "NO")
        lines.append(
            f"| {r.engine} | {r.startup_s:.2f} | {r.rounds_s[0]:.2f} | {r.steady_s:.3f} | "
            f"{r.clients_per_s:.0f} | {r.steady_s / base.steady_s:.2f}x | {r.peak_mib:.0f} | "
            f"{r.final_accuracy:.4f} | {same} |"
        )
    one = next((r for r in results if r.engine == "ray-1"), None)
    if one is not None:
        overhead = one.steady_s / base.steady_s - 1
        met = "met" if overhead <= GOAL_OVERHEAD else "not met"
        lines.append(
            f"Ray's overhead (ray-1 vs inprocess): {one.steady_s - base.steady_s:+.3f} s per "
            f"steady round ({overhead:+.0%}; goal <= +{GOAL_OVERHEAD:.0%}: {met}), "
            f"{one.startup_s - base.startup_s:+.2f} s at start-up"
        )
    for r in results:
        if r.engine.startswith("ray-") and r.engine != "ray-1" and one is not None:
            lines.append(
                f"{r.engine} vs ray-1: {one.steady_s / r.steady_s:.2f}x throughput per steady round"
            )
    return lines


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--per-round", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--workers", default="1,2", help="Ray worker counts, comma-separated")
    parser.add_argument("--ray-address", default="", help="a running cluster (default: local)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-ray-"))
    out.mkdir(parents=True, exist_ok=True)
    root = Path(__file__).resolve().parent.parent
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH", "")])),
        FLWR_TELEMETRY_ENABLED="0",
        OMP_NUM_THREADS="1",
        RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0",
    )
    print(f"before: {load()}", flush=True)
    address = ["--ray-address", args.ray_address] if args.ray_address else []
    runs: list[tuple[str, list[str]]] = [("inprocess", [])]
    for n in (int(w) for w in args.workers.split(",")):
        runs.append((f"ray-{n}", ["--engine", "ray", "--ray-workers", str(n), *address]))
    results = []
    for engine, extra in runs:
        result = run_engine(engine, extra, args, out, env)
        print(f"{engine}: steady round {result.steady_s:.3f} s ({load()})", flush=True)
        results.append(result)
    reference = (out / "run-inprocess" / "model.pt").read_bytes()
    for r in results[1:]:
        r.same_model = (out / f"run-{r.engine}" / "model.pt").read_bytes() == reference
    print(f"after: {load()}")
    print(
        f"digits-cnn, {args.clients} clients, {args.per_round} a round, {args.rounds} rounds, "
        "1 local epoch, seed 0, --threads 1"
    )
    lines = print_table(results)
    print("\n".join(lines))
    (out / "ray_engine.json").write_text(
        json.dumps({"results": [asdict(r) for r in results], "table": lines}, indent=2)
    )
    print(f"written: {out / 'ray_engine.json'}")


if __name__ == "__main__":
    main()
