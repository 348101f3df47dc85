"""Battery-aware selection against random and device-aware selection on simulated phone batteries.

digits-cnn, ``--clients`` clients, all ``phone-like`` (its ``[battery]``: 15.4 Wh, a
start level uniform in 30..100%, on a charger mostly at night, the owner's own 0.5 W
while unplugged), ``--per-round`` a round, one round per simulated hour from 09:00
(``--round-hours 1``). Measured from each run's metrics.json: instructions refused
because the battery was empty (``battery_empty``), replies lost to a battery running
flat (``ran_flat``), the devices' mean charge at the end, the replies the rounds used,
final accuracy and the mean over the last five rounds (one round's accuracy is noisy:
phones are rarely online in the day).

``--start-level LO,HI`` and ``--use-w W`` run a variant of the profile (registered in
this process as ``phone-bench``) whose batteries start emptier or drain faster, so that
devices do run flat within a short run.

    python bench/battery.py [--seeds 0] [--rounds 24] [--clients 40] [--per-round 8]
                            [--start-level 0.3,1.0] [--use-w 0.5]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SELECTIONS = ("random", "device-aware", "battery-aware")


def run_one(selection: str, *, seed: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """One simulation; returns its battery counters and accuracy."""
    from simulation.runner import run_simulation
    from simulation.settings import SimulateSettings

    settings = SimulateSettings.build(
        config_file=None,
        overrides={
            "task": "digits-cnn",
            "clients": args.clients,
            "clients_per_round": args.per_round,
            "rounds": args.rounds,
            "seed": seed,
            "devices": args.profile,
            "round_hours": 1.0,
            "selection": selection,
        },
    )
    doc = run_simulation(settings, out_dir=out / f"{selection}-{seed}", quiet=True)
    rows = doc["rounds"]
    return {
        "selection": selection,
        "seed": seed,
        "battery_empty": sum(r.get("battery_empty", 0) for r in rows),
        "ran_flat": sum(r.get("ran_flat", 0) for r in rows),
        "battery_mean_end": rows[-1].get("battery_mean"),
        "final_accuracy": doc["final_accuracy"],
        "last5_accuracy": sum(r["accuracy"] or 0.0 for r in rows[-5:]) / len(rows[-5:]),
        "client_rounds": sum(r["clients"] for r in rows),
    }


def _profile(start_level: str | None, use_w: float | None) -> str:
    """``phone-like``, or a variant with another start level / owner's draw."""
    if start_level is None and use_w is None:
        return "phone-like"
    from dataclasses import replace

    from simulation.devices import get_profile, register_profile

    base = get_profile("phone-like")
    assert base.battery is not None
    battery = base.battery
    if start_level is not None:
        lo, hi = (float(x) for x in start_level.split(","))
        battery = replace(battery, start_level=(lo, hi))
    if use_w is not None:
        battery = replace(battery, use_w=use_w)
    register_profile(replace(base, name="phone-bench", battery=battery, source=None))
    return "phone-bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--per-round", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=24)
    parser.add_argument("--start-level", default=None, help="LO,HI (default: the profile's)")
    parser.add_argument("--use-w", type=float, default=None)
    args = parser.parse_args()
    args.profile = _profile(args.start_level, args.use_w)
    out = Path(tempfile.mkdtemp(prefix="bench-battery-"))
    print(
        f"{'selection':<14} {'seed':>4} {'empty':>6} {'ran flat':>9} {'mean charge':>12} {'acc':>7}"
    )
    for seed in args.seeds.split(","):
        for selection in SELECTIONS:
            r = run_one(selection, seed=int(seed), args=args, out=out)
            print(
                f"{selection:<14} {seed:>4} {r['battery_empty']:>6.0f} {r['ran_flat']:>9.0f} "
                f"{r['battery_mean_end']:>12.3f} {r['client_rounds']:>13} "
                f"{r['final_accuracy']:>10.4f} {r['last5_accuracy']:>11.4f}"
            )
    print(f"profile {args.profile}: start-level {args.start_level}, use-w {args.use_w}")
    print(f"load average {os.getloadavg()}; runs in {out}")


if __name__ == "__main__":
    main()
