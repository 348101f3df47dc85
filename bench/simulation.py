"""Simulation engines side by side: Flower's engine, a plain loop, and fedfleet's.

One workload — digits-cnn, 1,000 clients, 100 a round, 3 rounds, 1 local epoch, FedAvg,
seed 0 — run three ways, one after the other, each in a fresh process:

- ``flower``: ``fedfleet simulate --engine flower`` — fedfleet's ServerApp and
  ClientApp on Flower's simulation runtime (a SuperLink started with ``--simulation``,
  ``flwr run``, Ray), with Flower's default client resources;
- ``plain``: a sequential loop with no framework at all (this file, ``--plain``): the
  same client data, the same ``tasks.train_local``, the same uniform sampling, a
  weighted average in torch, central evaluation — the floor any framework adds to;
- ``fedfleet``: ``fedfleet simulate`` — the in-process engine (batched local training),
  running the same unchanged ServerApp and ClientApp as the Flower engine;
- ``fedfleet-first``: the same, as the very first run on a machine: an empty dataset
  cache (``FEDFLEET_CACHE_DIR``), so digits is prepared with scikit-learn (imported).

Every engine reads its data through ``tasks``, so all but ``fedfleet-first`` find the
prepared digits in the dataset cache (``tasks/dataset_cache.py``).

Measured from outside each process: start-up (launch until round 1 begins: imports,
data, engine start), each round's time, the one-time cost ``cold start`` (start-up
plus the first round's excess over a steady round), and the peak memory of the whole
process tree (sum of resident set sizes, sampled every 0.2 s; Flower's SuperLink,
SuperExec, Ray and app processes included). The import floors — a fresh interpreter,
one importing torch, one importing torch and ``flwr.serverapp`` — are measured too,
so the engine's own cold start shows apart from Python's and torch's. Prints a table
with ratios and writes ``simulation.json`` and ``simulation.png`` to ``--out``.

Against pfl-research (Apple's pfl 0.6, in its own venv): bench/vs_pfl.py, the same
digits workload and a CIFAR-10-shaped one, cohorts 10/100/1,000 and 1/5 local epochs.
Registered clients at scale (100,000 and 1,000,000): bench/scale.py.

Any Flower App instead (``--app DIR``): fedfleet's ``simulate --app`` against Flower's
own simulation engine on that app, side by side (bench/app_vs_flower.py), with the
ratio and the goal (>= 5x end to end at 100 clients for a quickstart-pytorch-style app,
e.g. bench/apps/quickstart_pytorch):

    python bench/simulation.py --app DIR [--clients 100] [--run-config "k=v ..."]
                               [--app-workers auto|0|N] [--out runs/bench-simulation]

    python bench/simulation.py [--clients 1000] [--per-round 100] [--rounds 3]
                               [--engines flower,plain,fedfleet,fedfleet-first]
                               [--repeats N]
                               [--threads T] [--out runs/bench-simulation]
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
from typing import Any

from proc_tree import Sampler  # bench/ is the script's folder

FEDFLEET = [sys.executable, "-c", "from fedfleet.cli import main; main()"]
ENGINES = ("flower", "plain", "fedfleet", "fedfleet-first")


# -- the plain loop (runs in its own process) ------------------------------------------
def plain_loop(clients: int, per_round: int, rounds: int, seed: int, epochs: int = 1) -> None:
    """FedAvg as a for-loop: no Flower, no coordinator, no messages. Prints one JSON
    line per round: {"round", "start", "end", "accuracy"} (absolute times)."""
    import numpy as np
    import torch

    from edge_client.data import partition_data
    from tasks import evaluate, get_task, train_local

    spec = get_task("digits-cnn")
    data = spec.load_data(seed)
    torch.manual_seed(seed)
    global_model = spec.build_model()
    state = {k: v.detach().clone() for k, v in global_model.state_dict().items()}
    for server_round in range(1, rounds + 1):
        start = time.time()
        rng = np.random.default_rng([seed, server_round, 0x5E1EC7])
        chosen = sorted(int(i) for i in rng.choice(clients, size=per_round, replace=False))
        total = {k: torch.zeros_like(v) for k, v in state.items()}
        weight = 0
        for client in chosen:
            local = partition_data(
                task_name="digits-cnn",
                partition_id=client,
                num_partitions=clients,
                partition="iid",
                seed=seed,
            )
            model = spec.build_model()
            model.load_state_dict(state)
            seed_seq = np.random.SeedSequence([seed, server_round, client])
            result = train_local(
                model,
                local.x_train,
                local.y_train,
                epochs=epochs,
                batch_size=spec.defaults.batch_size,  # the task's defaults, as the
                learning_rate=spec.defaults.learning_rate,  # engines' (only the epochs
                momentum=spec.defaults.momentum,  # are given, --local-epochs)
                seed=int(seed_seq.generate_state(1)[0]),
            )
            for k, v in model.state_dict().items():
                total[k] += v * result.num_examples
            weight += result.num_examples
        state = {k: v / max(weight, 1) for k, v in total.items()}
        global_model.load_state_dict(state)
        accuracy = evaluate(global_model, data.x_test, data.y_test).accuracy
        line = {"round": server_round, "start": start, "end": time.time(), "accuracy": accuracy}
        print(json.dumps(line), flush=True)


# -- measuring from outside ------------------------------------------------------------
@dataclass
class EngineResult:
    engine: str
    startup_s: float
    rounds_s: list[float]
    steady_s: float
    cold_start_s: float
    peak_mib: float
    processes: int
    wall_s: float
    final_accuracy: float | None


def _summarise(
    engine: str,
    launch: float,
    starts: list[float],
    durations: list[float],
    sampler: Sampler,
    wall: float,
    accuracy: float | None,
) -> EngineResult:
    startup = starts[0] - launch
    steady = sum(durations[1:]) / max(1, len(durations) - 1) if len(durations) > 1 else durations[0]
    return EngineResult(
        engine=engine,
        startup_s=startup,
        rounds_s=durations,
        steady_s=steady,
        cold_start_s=startup + max(0.0, durations[0] - steady),
        peak_mib=sampler.peak_bytes / 2**20,
        processes=sampler.peak_processes,
        wall_s=wall,
        final_accuracy=accuracy,
    )


def run_fedfleet(
    engine: str, args: argparse.Namespace, out: Path, env: dict[str, str]
) -> EngineResult:
    """``fedfleet simulate`` in a subprocess; rounds timed by watching metrics.json."""
    run_dir = out / f"run-{engine}"
    command = [
        *FEDFLEET,
        "simulate",
        "--clients",
        str(args.clients),
        "--clients-per-round",
        str(args.per_round),
        "--rounds",
        str(args.rounds),
        "--seed",
        str(args.seed),
        "--local-epochs",
        str(args.local_epochs),
        "--engine",
        "flower" if engine == "flower" else "inprocess",
        "--out",
        str(run_dir),
        "--quiet",
    ]
    launch = time.time()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sampler = Sampler(proc.pid)
    thread = threading.Thread(target=sampler.run, daemon=True)
    thread.start()
    seen: dict[int, float] = {}
    metrics = run_dir / "metrics.json"
    while proc.poll() is None:
        try:
            rows = json.loads(metrics.read_text())["rounds"]
        except (OSError, ValueError, KeyError):
            rows = []
        for row in rows:
            seen.setdefault(int(row["round"]), time.time())
        time.sleep(0.05)
    wall = time.time() - launch
    sampler.stop()
    thread.join()
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{engine} failed: {stderr[-2000:]}")
    doc = json.loads(metrics.read_text())
    durations = [float(r["duration_s"]) for r in doc["rounds"]]
    # A round began when it was first seen finished, minus its own duration.
    first_seen = seen.get(1, launch + wall)
    starts = [first_seen - durations[0]]
    return _summarise(engine, launch, starts, durations, sampler, wall, doc["final_accuracy"])


def run_plain(args: argparse.Namespace, env: dict[str, str]) -> EngineResult:
    command = [
        sys.executable,
        __file__,
        "--plain",
        "--clients",
        str(args.clients),
        "--per-round",
        str(args.per_round),
        "--rounds",
        str(args.rounds),
        "--seed",
        str(args.seed),
        "--local-epochs",
        str(args.local_epochs),
    ]
    launch = time.time()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sampler = Sampler(proc.pid)
    thread = threading.Thread(target=sampler.run, daemon=True)
    thread.start()
    out, err = proc.communicate()
    wall = time.time() - launch
    sampler.stop()
    thread.join()
    if proc.returncode != 0:
        raise SystemExit(f"plain loop failed: {err.decode()[-2000:]}")
    lines = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    starts = [line["start"] for line in lines]
    durations = [line["end"] - line["start"] for line in lines]
    return _summarise("plain", launch, starts, durations, sampler, wall, lines[-1]["accuracy"])


# What a fresh interpreter needs before any engine code runs.
FLOORS = {
    "python": "pass",
    "python + torch": "import torch",
    "python + torch + flwr": "import torch, flwr.serverapp",
}


def import_floors_s(env: dict[str, str]) -> dict[str, float]:
    """Seconds from launching a fresh interpreter until each FLOORS import is done (as
    start-up is measured: from launch, interpreter exit not included); median of 3."""
    floors = {}
    for name, code in FLOORS.items():
        times = []
        for _ in range(3):
            launch = time.time()
            out = subprocess.run(
                [sys.executable, "-c", f"{code}; import time; print(time.time())"],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            times.append(float(out.split()[-1]) - launch)
        floors[name] = sorted(times)[1]
    return floors


def print_table(results: dict[str, EngineResult], floors: dict[str, float]) -> list[str]:
    lines = [
        f"{'engine':<9} {'start-up s':>10} {'round 1 s':>9} {'steady s':>9} "
        f"{'cold start s':>12} {'peak MiB':>9} {'procs':>5} {'wall s':>7} {'accuracy':>8}"
    ]
    for r in results.values():
        acc = f"{r.final_accuracy:.4f}" if r.final_accuracy is not None else "-"
        lines.append(
            f"{r.engine:<9} {r.startup_s:>10.2f} {r.rounds_s[0]:>9.2f} {r.steady_s:>9.3f} "
            f"{r.cold_start_s:>12.2f} {r.peak_mib:>9.0f} {r.processes:>5} {r.wall_s:>7.1f} {acc:>8}"
        )
    lines.append(
        "import floors (fresh interpreter): "
        + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in floors.items())
    )
    ours = results.get("fedfleet")
    if ours is not None:
        for name, peer in results.items():
            if name == "fedfleet" or peer.engine == "fedfleet-first":
                continue
            lines.append(
                f"{name} / fedfleet: steady round {peer.steady_s / ours.steady_s:.1f}x, "
                f"cold start {peer.cold_start_s / ours.cold_start_s:.1f}x, "
                f"peak memory {peer.peak_mib / ours.peak_mib:.1f}x, "
                f"wall {peer.wall_s / ours.wall_s:.1f}x"
            )
        floor = floors["python + torch + flwr"]
        lines.append(
            f"fedfleet cold start {ours.cold_start_s:.2f} s = python + torch + flwr imports "
            f"{floor:.2f} s + fedfleet's own {ours.cold_start_s - floor:.2f} s"
        )
        first = results.get("fedfleet-first")
        if first is not None:
            lines.append(
                f"fedfleet first run on a machine (empty dataset cache: scikit-learn "
                f"imported, digits prepared): cold start {first.cold_start_s:.2f} s"
            )
    for line in lines:
        print(line)
    return lines


def plot(results: dict[str, EngineResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    width = 0.8 / max(1, len(results))
    for i, r in enumerate(results.values()):
        xs = [k + i * width for k in range(len(r.rounds_s) + 1)]
        ax.bar(xs, [r.startup_s, *r.rounds_s], width=width, label=r.engine)
    ax.set_xticks(
        [k + 0.4 - width / 2 for k in range(len(next(iter(results.values())).rounds_s) + 1)]
    )
    ax.set_xticklabels(
        ["start-up"] + [f"round {k + 1}" for k in range(len(next(iter(results.values())).rounds_s))]
    )
    ax.set_ylabel("seconds")
    ax.set_yscale("log")
    ax.set_title("digits-cnn: seconds per phase (start-up, then each round)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def bench_app(args: argparse.Namespace) -> None:
    """``--app DIR``: fedfleet against Flower's engine on one Flower App."""
    from app_vs_flower import side_by_side  # bench/ is the script's folder

    clients = args.clients or 100
    lines = side_by_side(
        args.app, clients=clients, run_config=args.run_config, workers=args.app_workers
    )
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {"app": str(args.app), "clients": clients, "run_config": args.run_config, "table": lines}
    (args.out / "simulation-app.json").write_text(json.dumps(doc, indent=2))
    print(f"wrote {args.out / 'simulation-app.json'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, default=None, help="1000; with --app 100")
    parser.add_argument("--app", type=Path, default=None, help="a Flower App folder")
    parser.add_argument("--run-config", default="", help="with --app: its run-config overrides")
    parser.add_argument("--app-workers", default="auto", help="with --app: fedfleet's workers")
    parser.add_argument("--per-round", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--engines", default="flower,plain,fedfleet,fedfleet-first")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="runs per engine (Flower: one), interleaved; the median steady round is shown",
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="OMP_NUM_THREADS for every engine (0: default)"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/bench-simulation"))
    args = parser.parse_args()
    if args.app is not None:
        bench_app(args)
        return
    args.clients = args.clients or 1000
    if args.plain:
        plain_loop(args.clients, args.per_round, args.rounds, args.seed, args.local_epochs)
        return
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0")
    if args.threads > 0:
        env["OMP_NUM_THREADS"] = str(args.threads)
    for engine in engines:
        if engine not in ENGINES:
            raise SystemExit(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
    # Every engine but fedfleet-first finds the prepared digits on disk (warmed here).
    warm = f"from tasks import get_task; get_task('digits-cnn').load_data({args.seed})"
    subprocess.run([sys.executable, "-c", warm], env=env, check=True)
    floors = import_floors_s(env)
    runs: dict[str, list[EngineResult]] = {engine: [] for engine in engines}
    for repeat in range(args.repeats):
        for engine in engines:  # interleaved, so a change in machine load hits all
            if engine == "flower" and repeat > 0:
                continue  # minutes per run: once is enough to see the order of magnitude
            print(f"running {engine} ({repeat + 1}/{args.repeats}) ...", flush=True)
            with tempfile.TemporaryDirectory(prefix="bench-sim-") as tmp:
                if engine == "plain":
                    runs[engine].append(run_plain(args, env))
                elif engine == "fedfleet-first":
                    empty = dict(env, FEDFLEET_CACHE_DIR=str(Path(tmp) / "dataset-cache"))
                    runs[engine].append(run_fedfleet(engine, args, Path(tmp), empty))
                else:
                    runs[engine].append(run_fedfleet(engine, args, Path(tmp), env))
    results = {
        engine: sorted(done, key=lambda r: r.steady_s)[len(done) // 2]
        for engine, done in runs.items()
    }
    spreads = {
        engine: (min(r.steady_s for r in done), max(r.steady_s for r in done))
        for engine, done in runs.items()
    }
    lines = print_table(results, floors)
    if args.repeats > 1:
        for engine, (low, high) in spreads.items():
            line = f"{engine}: steady round over {args.repeats} runs {low:.3f}..{high:.3f} s"
            print(line)
            lines.append(line)
    doc: dict[str, Any] = {
        "workload": {
            "task": "digits-cnn",
            "clients": args.clients,
            "per_round": args.per_round,
            "rounds": args.rounds,
            "local_epochs": args.local_epochs,
        },
        "import_floors_s": floors,
        "threads": args.threads or "default",
        "repeats": args.repeats,
        "all_runs": {k: [asdict(r) for r in v] for k, v in runs.items()},
        "results": {k: asdict(v) for k, v in results.items()},
        "table": lines,
    }
    (args.out / "simulation.json").write_text(json.dumps(doc, indent=2))
    plot(results, args.out / "simulation.png")
    print(f"wrote {args.out / 'simulation.json'} and {args.out / 'simulation.png'}")


if __name__ == "__main__":
    main()
