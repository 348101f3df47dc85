"""Registered clients at scale: peak memory and round time at 100,000 and 1,000,000.

digits-cnn, 1,000 clients a round, 3 rounds, seed 0, one thread: ``fedfleet simulate``
in a fresh process, its peak resident set size read from the kernel (RUSAGE_CHILDREN of
a wrapper whose only child it is), its round times from ``metrics.json``. Goal (issue
17): peak RSS <= 4 GiB at 1,000,000 registered clients. The peer is the same run at
100,000 clients: the ratio shows what the extra 900,000 registered clients cost.

    python bench/scale.py [--clients 100000,1000000] [--per-round 1000] [--rounds 3]
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

FEDFLEET = [sys.executable, "-c", "from fedfleet.cli import main; main()"]
MEASURE = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:]).returncode\n"
    "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, flush=True)\n"
    "sys.exit(code)\n"
)
GOAL_BYTES = 4 * 1024**3


def run(clients: int, per_round: int, rounds: int, out: Path) -> dict[str, float]:
    """One simulation; its peak RSS (MiB), wall seconds and steady round seconds."""
    cmd = [sys.executable, "-c", MEASURE, *FEDFLEET, "simulate", "--clients", str(clients)]
    cmd += ["--clients-per-round", str(per_round), "--rounds", str(rounds), "--threads", "1"]
    cmd += ["--quiet", "--out", str(out)]
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"simulate --clients {clients} failed:\n{proc.stderr[-2000:]}")
    peak_kb = int(re.search(r"MAXRSS_KB (\d+)", proc.stdout).group(1))  # type: ignore[union-attr]
    metrics = json.loads((out / "metrics.json").read_text())
    times = [r["duration_s"] for r in metrics["rounds"]]
    steady = sorted(times[1:])[len(times[1:]) // 2] if len(times) > 1 else times[0]
    return {
        "peak_mib": peak_kb / 1024,
        "first_round_s": times[0],
        "steady_round_s": steady,
        "accuracy": metrics["rounds"][-1].get("accuracy", float("nan")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="100000,1000000")
    parser.add_argument("--per-round", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(c) for c in args.clients.split(",")]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            rows[n] = run(n, args.per_round, args.rounds, Path(tmp) / str(n))
    base = rows[sizes[0]]
    print(
        f"{'clients':>10} {'peak MiB':>9} {'x peak':>7} {'round1 s':>9} {'steady s':>9} {'x steady':>9} {'acc':>6}"
    )
    for n, r in rows.items():
        print(
            f"{n:>10,} {r['peak_mib']:>9.0f} {r['peak_mib'] / base['peak_mib']:>7.2f}"
            f" {r['first_round_s']:>9.2f} {r['steady_round_s']:>9.2f}"
            f" {r['steady_round_s'] / base['steady_round_s']:>9.2f} {r['accuracy']:>6.3f}"
        )
    big = max(rows)
    met = rows[big]["peak_mib"] * 1024**2 <= GOAL_BYTES
    print(
        f"goal: peak RSS <= 4 GiB at {big:,} clients, {args.per_round:,} a round: "
        f"{rows[big]['peak_mib']:.0f} MiB -> {'met' if met else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
