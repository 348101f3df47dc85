"""A deployment round vs the same round in simulation (issue 9's closing note).

Deployment: a real TLS SuperLink with SuperNode authentication and 3 sites as separate
processes on 127.0.0.1 (the e2e test kit), `breast-cancer-mlp`, 3 rounds, every site
every round. Simulation: `fedfleet simulate` (in-process engine) with the same task, 3
clients, 3 rounds, same hyper-parameters and seed. Prints per-round seconds side by
side with the ratio, plus the wall time from submission to the first round.

    python bench/silo_round.py [--rounds 3] [--secagg]

Each deployment round starts a fresh `flwr-clientapp` Python process per site and
message (Flower 1.42's subprocess isolation), which is what the ratio mostly measures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))

from silo_testkit import FEDFLEET, TASK, SiloFederation


def simulated_rounds(out: Path, *, rounds: int, seed: int, secagg: bool) -> list[float]:
    command = [
        FEDFLEET,
        "simulate",
        "--task",
        TASK,
        "--clients",
        "3",
        "--clients-per-round",
        "3",
        "--rounds",
        str(rounds),
        "--seed",
        str(seed),
        "--out",
        str(out),
    ]
    if secagg:
        command.append("--secagg")
    subprocess.run(command, check=True, capture_output=True)
    doc = json.loads((out / "metrics.json").read_text())
    return [float(r["duration_s"]) for r in doc["rounds"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--secagg", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="silo-bench-") as tmp:
        root = Path(tmp)
        fed = SiloFederation(root / "fed")
        (root / "fed").mkdir()
        t0 = time.perf_counter()
        try:
            fed.start()
            started = time.perf_counter() - t0
            run = {
                "task": TASK,
                "sites": 3,
                "min-sites": 3,
                "seed": args.seed,
                "num-server-rounds": args.rounds,
                "secagg": args.secagg,
            }
            t1 = time.perf_counter()
            state = fed.submit(run)
            while state.completed_rounds < 1:
                time.sleep(0.2)
            to_first = time.perf_counter() - t1
            fed.wait_finished(state, timeout=3600)
            total = time.perf_counter() - t1
            deployed = [float(r["duration_s"]) for r in state.rounds()]
        finally:
            fed.stop()
        simulated = simulated_rounds(
            root / "sim", rounds=args.rounds, seed=args.seed, secagg=args.secagg
        )
    print(f"federation start (SuperLink + 3 registered sites): {started:.1f} s")
    print(f"deployment: submit → first round done {to_first:.1f} s, whole run {total:.1f} s")
    print(f"{'round':>5} | {'deployment s':>12} | {'simulation s':>12} | {'ratio':>7}")
    print("-" * 47)
    for i, (d, s) in enumerate(zip(deployed, simulated, strict=True), start=1):
        print(f"{i:>5} | {d:>12.2f} | {s:>12.3f} | {d / s:>6.0f}×")


if __name__ == "__main__":
    main()
