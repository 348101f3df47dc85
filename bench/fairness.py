"""FedAvg against q-FFL (Flower's QFedAvg) and against FedAvg with client-side reweighing,
on credit-scoring, non-IID across clients by group.

Each client is a set of bank branches (``--partition natural``) whose share of women
ranges from 5 % to 80 %; every client evaluates each round and the run audits fairness
by the task's sensitive attribute (``sex``). For each strategy and seed this runs
``fedfleet simulate`` and reads its ``metrics.json``: final accuracy (central test set),
and from the last round's fairness audit (clients' summed per-group counts) the
worst-group accuracy, the largest gap between the groups' accuracies, demographic-parity
and equalized-odds differences, and the worst decile of the clients' accuracies.

Prints a markdown table (means over seeds) and the verdict against the goal for each
fairness-aware run: the largest group gap at least 10 % narrower than FedAvg's (ratio
≤ 0.90) with final accuracy within 1 point. ``fedavg+reweigh`` is FedAvg with
``--fairness-reweigh`` (Kamiran & Calders 2012 resampling at each client).

Run: ``python bench/fairness.py [--clients 20 --rounds 30 --seeds 0,1,2 --q 3 --client-lr 2]``
(about 3 minutes on one core).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import mean

COLUMNS = [
    ("final_accuracy", "final accuracy"),
    ("worst_group_accuracy", "worst-group accuracy"),
    ("max_gap", "max gap"),
    ("demographic_parity_difference", "DP diff"),
    ("equalized_odds_difference", "EO diff"),
    ("worst_decile_accuracy", "worst-decile client acc."),
]


RUNS = ("fedavg", "qffl", "fedavg+reweigh")


def run_one(name: str, seed: int, args: argparse.Namespace, out: Path) -> dict[str, float]:
    """One simulation; the numbers of :data:`COLUMNS` from its metrics.json."""
    strategy, _, variant = name.partition("+")
    flags = [
        "--task", "credit-scoring", "--clients", str(args.clients),
        "--clients-per-round", str(args.clients), "--rounds", str(args.rounds),
        "--partition", "natural", "--fraction-evaluate", "1",
        "--sensitive-attribute", "sex", "--seed", str(seed), "--strategy", strategy,
        "--quiet", "--out", str(out),
    ]  # fmt: skip
    if strategy == "qffl":
        flags += ["--strategy-options", f"q={args.q},client-lr={args.client_lr}"]
    if variant == "reweigh":
        flags.append("--fairness-reweigh")
    cmd = [sys.executable, "-c", "from fedfleet.cli import main; main()", "simulate", *flags]
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"{strategy} seed {seed} failed: {proc.stderr.strip()}")
    doc = json.loads((out / "metrics.json").read_text())
    audit = doc["fairness"]
    return {"final_accuracy": doc["final_accuracy"], **{k: audit[k] for k, _ in COLUMNS[1:]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--q", type=float, default=3.0)
    parser.add_argument("--client-lr", type=float, default=2.0)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in RUNS:
            runs = [run_one(name, s, args, Path(tmp) / f"{name}-{s}") for s in seeds]
            results[name] = {k: mean(r[k] for r in runs) for k, _ in COLUMNS}
    print(
        f"credit-scoring, {args.clients} clients (natural: non-IID by group), "
        f"{args.rounds} rounds, seeds {args.seeds}; qffl q={args.q} client-lr={args.client_lr}"
    )
    print("| strategy | " + " | ".join(label for _, label in COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for strategy, row in results.items():
        print(f"| {strategy} | " + " | ".join(f"{row[k]:.4f}" for k, _ in COLUMNS) + " |")
    base = results["fedavg"]
    for name in RUNS[1:]:
        fair = results[name]
        gap_ratio = fair["max_gap"] / base["max_gap"]
        drop = base["final_accuracy"] - fair["final_accuracy"]
        met = gap_ratio <= 0.90 and drop <= 0.01
        print(
            f"max gap {name}/fedavg = {gap_ratio:.2f}, DP diff ratio "
            f"{fair['demographic_parity_difference'] / base['demographic_parity_difference']:.2f}"
            f", final accuracy {drop * 100:+.2f} points below fedavg: goal (gap ratio <= 0.90,"
            f" accuracy within 1 point) {'met' if met else 'not met'}"
        )


if __name__ == "__main__":
    main()
