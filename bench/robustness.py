"""Final accuracy of each strategy under each attack, side by side with no attack.

Runs the in-process engine for every (strategy, attack) pair on the same task,
clients, seed and attacker set, prints a markdown table (rows: strategies, columns:
no attack and each attack; the drop from the strategy's own clean run in brackets)
and writes ``robustness.png`` (grouped bars) and ``robustness.json`` to ``--out``.

Run: ``python bench/robustness.py [--task breast-cancer-mlp --clients 15 --rounds 5]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

STRATEGIES = ["fedavg", "fedavgm", "fedmedian", "trimmed-mean", "krum", "multikrum", "bulyan"]
ATTACKS = ["none", "sign-flip", "scale:-4", "gaussian:1", "label-flip"]
GUARDED = "fedavg+norm-bound"  # fedavg behind the update guard's norm bound


def run_one(
    *, strategy: str, attack: str, args: argparse.Namespace
) -> tuple[float, dict[str, float]]:
    from coordinator.app import build_server_app
    from coordinator.results import RoundRecord
    from edge_client.app import build_client_app
    from simulation.attacks import attack_mod
    from simulation.inprocess import run_inprocess
    from simulation.settings import SimulateSettings

    options = []
    name = strategy
    if strategy == GUARDED:
        name = "fedavg"
        options.append(f"max-update-norm={args.norm_bound}")
    if strategy == "fedavgm":
        options.append("server-momentum=0.5")
    overrides: dict[str, Any] = {
        "task": args.task,
        "strategy": name,
        "clients": args.clients,
        "clients_per_round": args.clients,
        "rounds": args.rounds,
        "lr": args.lr,
        "seed": args.seed,
        "strategy_options": ",".join(options),
    }
    if attack != "none":
        overrides.update(attack=attack, attackers=args.attackers)
    settings = SimulateSettings.build(config_file=None, overrides=overrides)
    run_config = {**settings.run_config().as_run_config(), **settings.feature_run_config()}
    records: list[RoundRecord] = []
    run_inprocess(
        server_app=build_server_app(on_round=records.append),
        client_app=build_client_app(mods=[attack_mod]),
        num_nodes=settings.clients,
        run_config=run_config,
    )
    rejected = sum(r.extra.get("rejected", 0.0) for r in records)
    return records[-1].accuracy, {"rejected": rejected}


def plot(results: dict[str, dict[str, float]], out_png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    strategies = list(results)
    attacks = list(next(iter(results.values())))
    x = np.arange(len(strategies))
    width = 0.8 / len(attacks)
    fig, ax = plt.subplots(figsize=(11, 4.5), dpi=120)
    for i, attack in enumerate(attacks):
        values = [results[s][attack] for s in strategies]
        ax.bar(x + (i - (len(attacks) - 1) / 2) * width, values, width, label=attack)
    ax.set_xticks(x, strategies, rotation=15)
    ax.set_ylabel("final test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title, fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, title="attack", ncols=len(attacks), fontsize=8, loc="lower center")
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(out_png)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="breast-cancer-mlp")
    parser.add_argument("--clients", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--attackers", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--norm-bound", type=float, default=0.25)
    parser.add_argument("--strategies", default=",".join([*STRATEGIES, GUARDED]))
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--out", type=Path, default=Path("runs/bench-robustness"))
    args = parser.parse_args()
    import flwr.common.logger  # noqa: F401  (sets its own level on import; quiet it after)

    logging.getLogger("flwr").setLevel(logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    strategies = args.strategies.split(",")
    attacks = args.attacks.split(",")
    results: dict[str, dict[str, float]] = {}
    rejected: dict[str, dict[str, float]] = {}
    started = time.perf_counter()
    for strategy in strategies:
        results[strategy], rejected[strategy] = {}, {}
        for attack in attacks:
            acc, extra = run_one(strategy=strategy, attack=attack, args=args)
            results[strategy][attack] = acc
            rejected[strategy][attack] = extra["rejected"]
            print(f"  {strategy:>18} · {attack:<11} accuracy {acc:.4f}", flush=True)
    title = (
        f"{args.task} · {args.clients} clients, {args.attackers:.0%} attackers · "
        f"{args.rounds} rounds · seed {args.seed}"
    )
    print(f"\n## Final accuracy per strategy and attack ({title})\n")
    print("| strategy | " + " | ".join(attacks) + " |")
    print("|---|" + "---:|" * len(attacks))
    for strategy in strategies:
        clean = results[strategy].get("none")
        cells = []
        for attack in attacks:
            acc = results[strategy][attack]
            drop = "" if clean is None or attack == "none" else f" ({(acc - clean) * 100:+.1f})"
            cells.append(f"{acc:.3f}{drop}")
        print(f"| {strategy} | " + " | ".join(cells) + " |")
    if GUARDED in rejected:
        print(
            f"\n{GUARDED}: norm bound {args.norm_bound}; updates rejected over the run: "
            + ", ".join(f"{a} {int(n)}" for a, n in rejected[GUARDED].items())
        )
    print(f"\n{len(strategies) * len(attacks)} runs in {time.perf_counter() - started:.0f} s")
    (args.out / "robustness.json").write_text(
        json.dumps({"config": vars(args) | {"out": str(args.out)}, "accuracy": results}, indent=2)
    )
    plot(results, args.out / "robustness.png", title)
    print(f"wrote {args.out / 'robustness.png'} and {args.out / 'robustness.json'}")


if __name__ == "__main__":
    main()
