"""The privacy–utility sweep: one simulation per ε, accuracy against ε.

``fedfleet simulate --dp local --sweep-epsilon 0.5,1,2,4,8 --out DIR`` runs the same
simulation (same seed, data split and client sampling) once per ε — the noise is
calibrated to each — and once without DP as the reference, each into its own folder
(``DIR/epsilon-0.5/``, ..., ``DIR/no-dp/``), then writes

* ``privacy_utility.csv`` — ε target, ε spent (as the run's metrics report it), noise
  multiplier, final accuracy and loss, wall time;
* ``privacy_utility.png`` — final accuracy against ε (log scale), the non-private
  accuracy as a dashed line;

and prints the table.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from coordinator.results import atomic_write_bytes
from privacy.private_files import private_dir
from simulation.dp_settings import parse_sweep
from simulation.settings import SimulateSettings


@dataclass(frozen=True)
class SweepPoint:
    """One simulation of the sweep (``target_epsilon`` is ``inf`` for the no-DP run)."""

    target_epsilon: float
    epsilon_spent: float | None
    noise_multiplier: float | None
    final_accuracy: float | None
    final_loss: float | None
    wall_time_s: float
    out_dir: str


def _last(rows: list[dict[str, Any]], key: str) -> float | None:
    for row in reversed(rows):
        value = row.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def point_from_metrics(target: float, out_dir: Path) -> SweepPoint:
    """Read one run's ``metrics.json`` into a sweep point."""
    doc = json.loads((out_dir / "metrics.json").read_text())
    rows = doc["rounds"]
    sigma = _last(rows, "dp_noise_multiplier")
    if sigma is None:
        sigma = _last(rows, "train_dp-noise-multiplier")
    return SweepPoint(
        target_epsilon=target,
        epsilon_spent=_last(rows, "epsilon"),
        noise_multiplier=sigma,
        final_accuracy=doc.get("final_accuracy"),
        final_loss=_last(rows, "loss"),
        wall_time_s=float(doc.get("wall_time_s", float("nan"))),
        out_dir=str(out_dir),
    )


def write_sweep(points: list[SweepPoint], out_dir: Path, *, title: str) -> None:
    """``privacy_utility.csv`` and ``privacy_utility.png`` in ``out_dir``."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[f.name for f in dataclasses.fields(SweepPoint)])
    writer.writeheader()
    for p in points:
        writer.writerow(dataclasses.asdict(p))
    atomic_write_bytes(out_dir / "privacy_utility.csv", buf.getvalue().encode())

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    private = [p for p in points if math.isfinite(p.target_epsilon)]
    baseline = [p for p in points if not math.isfinite(p.target_epsilon)]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    ax.plot(
        [p.target_epsilon for p in private],
        [p.final_accuracy if p.final_accuracy is not None else math.nan for p in private],
        marker="o",
        label="with DP",
    )
    if baseline and baseline[0].final_accuracy is not None:
        ax.axhline(baseline[0].final_accuracy, linestyle="--", color="gray", label="no DP")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator([p.target_epsilon for p in private]))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("ε (target, δ fixed)")
    ax.set_ylabel("final test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    atomic_write_bytes(out_dir / "privacy_utility.png", png.getvalue())


def sweep_table(points: list[SweepPoint]) -> Table:
    """The sweep as a rich table."""
    table = Table(title="privacy–utility sweep")
    for column in ("ε target", "ε spent", "noise σ", "accuracy", "loss", "seconds"):
        table.add_column(column, justify="right")

    def fmt(value: float | None, spec: str) -> str:
        return "–" if value is None or math.isnan(value) else format(value, spec)

    for p in points:
        table.add_row(
            "∞ (no DP)" if not math.isfinite(p.target_epsilon) else f"{p.target_epsilon:g}",
            fmt(p.epsilon_spent, ".3f"),
            fmt(p.noise_multiplier, ".3f"),
            fmt(p.final_accuracy, ".4f"),
            fmt(p.final_loss, ".4f"),
            fmt(p.wall_time_s, ".1f"),
        )
    return table


def run_privacy_sweep(
    settings: SimulateSettings, *, out_dir: Path, quiet: bool = False
) -> list[SweepPoint]:
    """Run the sweep of ``settings.sweep_epsilon`` (plus a no-DP reference) into
    ``out_dir``; returns the points, best-ε last."""
    from simulation.runner import run_simulation

    console = Console(stderr=True, quiet=quiet)
    epsilons = parse_sweep(settings.sweep_epsilon)
    runs: list[tuple[float, SimulateSettings, Path]] = [
        (
            math.inf,
            dataclasses.replace(settings, dp="none", epsilon=None, sweep_epsilon=""),
            out_dir / "no-dp",
        )
    ]
    for eps in epsilons:
        runs.append(
            (
                eps,
                dataclasses.replace(settings, epsilon=eps, sweep_epsilon=""),
                out_dir / f"epsilon-{eps:g}",
            )
        )
    points = []
    for i, (eps, run_settings, run_dir) in enumerate(runs, start=1):
        label = "no DP" if not math.isfinite(eps) else f"ε = {eps:g}"
        console.rule(f"[bold]{label}[/] ({i}/{len(runs)}) → {run_dir}")
        private_dir(run_dir)
        run_simulation(run_settings, out_dir=run_dir, quiet=quiet)
        points.append(point_from_metrics(eps, run_dir))
    title = (
        f"{settings.task} · dp={settings.dp} · {settings.clients} clients "
        f"({settings.clients_per_round}/round) · {settings.rounds} rounds · δ={settings.delta:g}"
    )
    write_sweep(points, out_dir, title=title)
    Console().print(sweep_table(points))  # the sweep's result: printed even with --quiet
    return points
