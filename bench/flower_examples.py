"""Nine of Flower's example patterns, each run with ``fedfleet simulate --app`` and with
Flower's own simulation engine, in one table.

The apps live in ``bench/apps/``: each reproduces one Flower example's pattern (the
same Flower APIs and structure, offline data of the example's shape, small sizes so
the table takes minutes) and logs ``RESULT {json}`` at the end:

- quickstart_numpy, quickstart_pytorch, quickstart_sklearn: Message API, FedAvg;
- quickstart_pandas: federated analytics, ``query`` messages, no strategy;
- custom_mods: the user's own client mods (timing in Context state, a metrics log);
- opacus_dp: Opacus DP-SGD in each client, its epsilon as a metric;
- fl_dp_sa: Flower's SecAgg+ (legacy workflow) with client-side DP fixed clipping;
- secure_aggregation: SecAgg+ with a workflow timeout and client 0 sleeping past it;
- advanced_pytorch: Context state per client, a FedAvg subclass, server-side evaluation.

Columns: whether the app ran on both; its results compared (bench/app_vs_flower.py:
"identical", or the largest relative difference: every app uses full participation
here and waits for all its nodes before round 1 (``min-nodes``: on Flower they
register while the run starts), so both engines aggregate the same clients, in their
own order); wall seconds of
each, end to end; Flower / fedfleet; and the faithfulness points: the app's own INFO
lines shown by fedfleet (its RESULT line), the same metric names on both engines
(nothing injected), and a server timeout honoured (the sleeping client left out on
both: 9 of 10 aggregated). An app's errors whole (traceback, exit 1) is covered by the
tests (tests/simulation/test_flower_app_faithful.py, test_app_workers.py).

    python bench/flower_examples.py [--clients 10] [--apps a,b] [--out runs/bench-examples]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from app_vs_flower import _numbers, compare, run_fedfleet, run_flower

APPS = Path(__file__).resolve().parent / "apps"
# app folder -> run-config for the table (full participation; quickstart_pytorch smaller)
EXAMPLES = {
    "quickstart_numpy": "",
    "quickstart_pytorch": "fraction-train=1.0 fraction-evaluate=1.0 images=2000 num-server-rounds=2",
    "quickstart_sklearn": "",
    "quickstart_pandas": "",
    "custom_mods": "",
    "opacus_dp": "",
    "fl_dp_sa": "",
    # on Flower's engine here every round halted at SecAgg+ setup ("Insufficient
    # available nodes"), with timeout 2 s and with 8 s (sleep 10 s) alike
    "secure_aggregation": "",
    "advanced_pytorch": "fraction-evaluate=1.0",
}


def _keys(result: dict | None) -> set[str]:
    return {key.rsplit("/", 1)[-1] for key in _numbers(result or {})}


def _timeout_point(name: str, ours: dict | None, theirs: dict | None) -> str:
    if name != "secure_aggregation":
        return "-"

    def dropped(result: dict | None) -> bool:
        counts = (result or {}).get("clients_aggregated", {})
        return bool(counts) and all(v == 9 for v in counts.values())

    return f"dropped: fedfleet {'y' if dropped(ours) else 'n'}, flower {'y' if dropped(theirs) else 'n'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--apps", default=",".join(EXAMPLES))
    parser.add_argument("--out", type=Path, default=Path("runs/bench-examples"))
    args = parser.parse_args()
    rows = []
    header = (
        f"{'app':<19} {'both':>4} {'results':<30} {'fedfleet s':>10} {'flower s':>8} "
        f"{'ratio':>6} {'logs':>4} {'same keys':>9}  timeout"
    )
    lines = [header]
    for name in [a.strip() for a in args.apps.split(",") if a.strip()]:
        app = APPS / name
        # every node connected before round 1 (Flower's nodes register while it starts)
        run_config = f"{EXAMPLES[name]} min-nodes={args.clients}".strip()
        print(f"{name}: fedfleet ...", flush=True)
        ours = run_fedfleet(app, clients=args.clients, run_config=run_config)
        print(f"{name}: flower ...", flush=True)
        theirs = run_flower(app, clients=args.clients, run_config=run_config)
        both = ours.ok and theirs.ok
        same_keys = _keys(ours.result) == _keys(theirs.result) and bool(ours.result)
        row = {
            "app": name,
            "both": both,
            "results": compare(ours.result, theirs.result),
            "fedfleet_s": ours.wall_s,
            "flower_s": theirs.wall_s,
            "ratio": theirs.wall_s / ours.wall_s,
            "logs_shown": ours.shows("RESULT"),
            "same_keys": same_keys,
            "timeout": _timeout_point(name, ours.result, theirs.result),
        }
        rows.append(row)
        line = (
            f"{name:<19} {'y' if both else 'n':>4} {row['results']:<30} {ours.wall_s:>10.1f} "
            f"{theirs.wall_s:>8.1f} {row['ratio']:>5.1f}x {'y' if row['logs_shown'] else 'n':>4} "
            f"{'y' if same_keys else 'n':>9}  {row['timeout']}"
        )
        lines.append(line)
        print(line, flush=True)
        for run in (ours, theirs):
            if not run.ok:
                print(f"  {run.engine} failed: {run.output[-1200:]}", flush=True)
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "flower_examples.json").write_text(
        json.dumps({"rows": rows, "table": lines}, indent=2)
    )
    print(f"wrote {args.out / 'flower_examples.json'}")


if __name__ == "__main__":
    main()
