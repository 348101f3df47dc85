"""Plots and summaries of a finished run, from its ``metrics.json``."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from privacy.private_files import write_private_bytes


def plot_accuracy(metrics_path: Path, out_png: Path) -> Path:
    """Accuracy (and loss) per round, titled with task, clients, strategy and seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    doc: dict[str, Any] = json.loads(metrics_path.read_text())
    cfg, rows = doc["config"], doc["rounds"]
    rounds = [r["round"] for r in rows]
    acc = [r["accuracy"] if r["accuracy"] is not None else float("nan") for r in rows]
    loss = [r["loss"] if r["loss"] is not None else float("nan") for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    ax.plot(rounds, acc, marker="o", color="tab:blue", label="test accuracy")
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy (central evaluation)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(rounds, loss, color="tab:orange", alpha=0.6, label="test loss")
    ax2.set_ylabel("test loss")
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [str(line.get_label()) for line in lines], loc="center right")
    ax.set_title(
        f"{cfg.get('task')} · {cfg.get('num-clients')} clients "
        f"({cfg.get('clients-per-round')}/round) · {cfg.get('strategy')} · seed {cfg.get('seed')}",
        fontsize=10,
    )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    write_private_bytes(out_png, buf.getvalue())
    plt.close(fig)
    return out_png


def plot_fairness(metrics_path: Path, out_png: Path) -> Path:
    """Each group's accuracy per audited round (the sensitive attribute's groups, or the
    clients when there is none, then only the worst group and the worst decile), with
    the largest gap between groups on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    doc: dict[str, Any] = json.loads(metrics_path.read_text())
    cfg = doc["config"]
    audited = [r for r in doc["rounds"] if r.get("fairness")]
    rounds = [r["round"] for r in audited]
    by_client = audited[-1]["fairness"]["group_by"] == "client"
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    if by_client:
        series = {
            "worst client": [_num(r["fairness"]["worst_group_accuracy"]) for r in audited],
            "worst decile of clients": [
                _num(r["fairness"]["worst_decile_accuracy"]) for r in audited
            ],
        }
    else:
        names = list(audited[-1]["fairness"]["groups"])
        series = {
            name: [_num(r["fairness"]["groups"].get(name, {}).get("accuracy")) for r in audited]
            for name in names
        }
    for name, values in series.items():
        ax.plot(rounds, values, marker="o", label=f"{name} accuracy")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy (federated evaluation)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(
        rounds,
        [_num(r["fairness"]["max_gap"]) for r in audited],
        color="tab:red",
        linestyle="--",
        label="largest gap",
    )
    ax2.set_ylabel("largest accuracy gap between groups")
    ax2.set_ylim(bottom=0)
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [str(line.get_label()) for line in lines], loc="lower right", fontsize=8)
    group_by = audited[-1]["fairness"]["group_by"]
    ax.set_title(
        f"{cfg.get('task')} · fairness by {group_by} · {cfg.get('strategy')} · seed {cfg.get('seed')}",
        fontsize=10,
    )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    write_private_bytes(out_png, buf.getvalue())
    plt.close(fig)
    return out_png


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)
