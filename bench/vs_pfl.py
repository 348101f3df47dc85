"""fedfleet against pfl-research (Apple's pfl 0.6), side by side in one run.

Workloads: digits-cnn (``--workload digits``), or a CIFAR-10-shaped one (``--workload cifar``:
random 3x32x32 images of uoft-cs/cifar10's schema, ``--rows`` of them, saved and loaded
through ``--dataset cifar10 --data-dir``, fedfleet's SmallCNN, batch 32); ``--clients``
(default 1,000) clients split iid by fedfleet, FedAvg
weighted by examples, local SGD lr 0.05, momentum 0.9, batch 16, seed 0, one thread.
For each (cohort, local epochs) configuration both run ``--rounds`` rounds in fresh
processes: ``fedfleet simulate`` (round times from metrics.json, peak RSS from the
kernel) and bench/pfl_peer.py in pfl's own venv, on the very rows each fedfleet client
trains on (exported here). The venv is made on demand under ``--pfl-venv`` (default
``$FEDFLEET_CACHE_DIR/pfl-venv`` or ~/.cache/fedfleet/pfl-venv): ``python -m venv``,
then ``pip install torch==2.13.0`` first (the CPU wheel: an unpinned torch would pull
CUDA), then ``pip install pfl==0.6.0``.

``--baseline ROOT`` also runs fedfleet from another checkout (``PYTHONPATH=ROOT``, e.g.
the commit before a change) in the same run: a before/after under the same load.
Both sides' rounds end with a central evaluation of the new global model on the test
split (fedfleet's round does; the pfl peer does the same work in its round callback).

Prints per configuration: steady round (median of rounds 2..R) of each in process CPU
seconds (fedfleet: the coordinator's round; pfl: its central iteration) and in wall
seconds, the ratios fedfleet/pfl (goal <= 0.5, judged on CPU seconds: on a shared
machine the load stretches wall times by 2x and more between two runs of the same
thing, and the work is what is compared), peak RSS of each (goal: fedfleet's <= pfl's),
final test accuracy of each. Not the same final model: pfl samples its own cohorts and
orders minibatches its own way, so accuracies agree statistically, not exactly.

    python bench/vs_pfl.py [--cohorts 10,100,1000] [--epochs 1,5] [--rounds 4] [--baseline ROOT]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

# ``fedfleet simulate``, with each round's process CPU seconds appended to the file named
# by $VS_PFL_ROUND_CPU (the coordinator's round, the span metrics.json's duration_s times).
FEDFLEET_ROUND_CPU = """
import json, os, time
import coordinator.loop as loop
one_round = loop.RoundLoop._one_round
def timed(self, *args, **kwargs):
    start = time.process_time()
    try:
        return one_round(self, *args, **kwargs)
    finally:
        with open(os.environ["VS_PFL_ROUND_CPU"], "a") as out:
            out.write(json.dumps(time.process_time() - start) + "\\n")
loop.RoundLoop._one_round = timed
from fedfleet.cli import main
main()
"""
FEDFLEET = [sys.executable, "-c", FEDFLEET_ROUND_CPU]
MEASURE = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:]).returncode\n"
    "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, flush=True)\n"
    "sys.exit(code)\n"
)
WORKLOADS = {  # name: (fedfleet task, pfl model, lr, momentum, batch size)
    "digits": ("digits-cnn", "digits", 0.05, 0.9, 16),
    "cifar": ("", "cifar", 0.05, 0.9, 32),  # the task is hf:cifar10@<synthetic data dir>
}


def synthetic_cifar(root: Path, rows: int, seed: int) -> str:
    """A CIFAR-10-shaped dataset (uoft-cs/cifar10's schema: 32x32 RGB ``img``, 10-class
    ``label``) of random images, saved with save_to_disk; its fedfleet task name."""
    import datasets
    from PIL import Image

    from tasks.hf_data import task_name

    rng = np.random.default_rng(seed)
    features = datasets.Features(
        {"img": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)}
    )

    def split(n: int) -> datasets.Dataset:
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        return datasets.Dataset.from_dict(
            {
                "img": [Image.fromarray(i, "RGB") for i in images],
                "label": rng.integers(0, 10, n).tolist(),
            },
            features=features,
        )

    out = root / "cifar10"
    datasets.DatasetDict({"train": split(rows), "test": split(max(100, rows // 10))}).save_to_disk(
        str(out)
    )
    return task_name("cifar10", str(out))


def pfl_python(venv: Path) -> Path:
    """The pfl venv's python, installing it first when missing."""
    python = venv / "bin" / "python"
    if python.exists():
        return python
    print(f"installing pfl into {venv} (minutes)...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "torch==2.13.0"], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "pfl==0.6.0"], check=True)
    return python


def export(task_name: str, clients: int, seed: int, path: Path) -> None:
    """The rows each fedfleet client trains on (edge_client.data.partition_data's
    split: 10% of a client's share held out for its evaluation), and the test split."""
    from edge_client.data import cached_partitions
    from tasks import get_task

    data = get_task(task_name).load_data(seed)
    parts = cached_partitions(task_name, clients, "iid", seed)
    rows, sizes = [], []
    for idx in parts:
        n_eval = len(idx) // 10 if len(idx) >= 10 else min(1, len(idx) // 2)
        rows.append(idx[n_eval:])
        sizes.append(len(idx) - n_eval)
    np.savez(
        path,
        x_train=data.x_train,
        y_train=data.y_train,
        x_test=data.x_test,
        y_test=data.y_test,
        order=np.concatenate(rows),
        offsets=np.concatenate(([0], np.cumsum(sizes))),
    )


def steady(times: list[float]) -> float:
    rest = sorted(times[1:]) or times
    return rest[len(rest) // 2]


def run_fedfleet(
    args: argparse.Namespace,
    task: str,
    cohort: int,
    epochs: int,
    out: Path,
    root: Path | None = None,
) -> dict:
    """``fedfleet simulate`` of one configuration (from checkout ``root`` if given)."""
    cmd = [sys.executable, "-c", MEASURE, *FEDFLEET, "simulate"]
    env = dict(os.environ, VS_PFL_ROUND_CPU=str(out) + ".cpu")
    if root is not None:
        env["PYTHONPATH"] = str(root)
    if task.startswith("hf:"):
        _, _, data_dir = task.partition("@")
        cmd += ["--dataset", "cifar10", "--data-dir", data_dir, "--partition", "iid"]
    else:
        cmd += ["--task", task]
    cmd += ["--clients", str(args.clients), "--clients-per-round", str(cohort)]
    cmd += ["--rounds", str(args.rounds), "--local-epochs", str(epochs), "--threads", "1"]
    cmd += ["--seed", "0", "--quiet", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root, check=False)
    if proc.returncode:
        sys.exit(f"fedfleet failed:\n{proc.stderr[-2000:]}")
    metrics = json.loads((out / "metrics.json").read_text())["rounds"]
    peak = int(re.search(r"MAXRSS_KB (\d+)", proc.stdout).group(1)) / 1024  # type: ignore[union-attr]
    times = [r["duration_s"] for r in metrics]
    cpu = [float(line) for line in Path(str(out) + ".cpu").read_text().split()]
    return {
        "steady": steady(times),
        "cpu": steady(cpu),
        "peak": peak,
        "acc": metrics[-1]["accuracy"],
    }


def run_pfl(python: Path, data: Path, args: argparse.Namespace, cohort: int, epochs: int) -> dict:
    _, model, lr, momentum, batch = WORKLOADS[args.workload]
    cmd = [str(python), str(Path(__file__).with_name("pfl_peer.py")), "--data", str(data)]
    cmd += ["--model", model, "--lr", str(lr), "--momentum", str(momentum)]
    cmd += ["--batch-size", str(batch)]
    cmd += ["--per-round", str(cohort), "--rounds", str(args.rounds), "--epochs", str(epochs)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH="")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode:
        sys.exit(f"pfl failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "steady": steady(result["rounds_s"]),
        "cpu": steady(result["rounds_cpu_s"]),
        "peak": result["peak_mib"],
        "acc": result["accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--cohorts", default="10,100,1000")
    parser.add_argument("--epochs", default="1,5")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="digits")
    parser.add_argument("--rows", type=int, default=10000, help="cifar: training rows")
    cache = Path(os.environ.get("FEDFLEET_CACHE_DIR", Path.home() / ".cache" / "fedfleet"))
    parser.add_argument("--pfl-venv", type=Path, default=cache / "pfl-venv")
    parser.add_argument(
        "--baseline", type=Path, help="also run fedfleet from this checkout (before/after)"
    )
    args = parser.parse_args()
    if args.baseline is not None and not (args.baseline / "fedfleet" / "cli.py").is_file():
        print(
            f"--baseline {args.baseline}: not a fedfleet checkout (no fedfleet/cli.py); "
            "give the root of one, e.g. from `git worktree add /tmp/before HEAD~1`",
            file=sys.stderr,
        )
        sys.exit(2)
    python = pfl_python(args.pfl_venv)
    print(HEADER + (" | before: cpu s  wall s   MiB   acc" if args.baseline else "") + "  load")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "clients.npz"
        task = WORKLOADS[args.workload][0] or synthetic_cifar(Path(tmp), args.rows, 0)
        export(task, args.clients, 0, data)
        for cohort in [int(c) for c in args.cohorts.split(",")]:
            for epochs in [int(e) for e in args.epochs.split(",")]:
                ff = run_fedfleet(args, task, cohort, epochs, Path(tmp) / f"ff-{cohort}-{epochs}")
                pf = run_pfl(python, data, args, cohort, epochs)
                line = row(cohort, epochs, ff, pf)
                if args.baseline is not None:
                    out = Path(tmp) / f"before-{cohort}-{epochs}"
                    old = run_fedfleet(args, task, cohort, epochs, out, root=args.baseline)
                    line += (
                        f" | {old['cpu']:>13.3f} {old['steady']:>7.3f}"
                        f" {old['peak']:>5.0f} {old['acc']:>5.3f}"
                    )
                print(f"{line} {os.getloadavg()[0]:>5.1f}", flush=True)


HEADER = (
    f"{'cohort':>6} {'ep':>3} {'ff cpu s':>8} {'pfl cpu s':>9} {'ratio':>5} {'goal<=0.5':>9}"
    f" {'ff wall':>7} {'pfl wall':>8} {'ratio':>5} {'ff MiB':>6} {'pfl MiB':>7} {'mem':>7}"
    f" {'ff acc':>6} {'pfl acc':>7}"
)


def row(cohort: int, epochs: int, ff: dict, pf: dict) -> str:
    """One configuration's line: steady round in process CPU seconds (the goal's
    measure: a loaded machine stretches wall time, not the work) and in wall seconds,
    peak RSS, final accuracy."""
    cpu, wall = ff["cpu"] / pf["cpu"], ff["steady"] / pf["steady"]
    return (
        f"{cohort:>6} {epochs:>3} {ff['cpu']:>8.3f} {pf['cpu']:>9.3f} {cpu:>5.2f}"
        f" {'met' if cpu <= 0.5 else 'NOT met':>9} {ff['steady']:>7.3f} {pf['steady']:>8.3f}"
        f" {wall:>5.2f} {ff['peak']:>6.0f} {pf['peak']:>7.0f}"
        f" {'met' if ff['peak'] <= pf['peak'] else 'NOT met':>7}"
        f" {ff['acc']:>6.3f} {pf['acc']:>7.3f}"
    )


if __name__ == "__main__":
    main()
