"""Run one simulation with a chosen engine and show its progress."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from coordinator.results import RoundRecord
from simulation.report import plot_accuracy
from simulation.settings import SimulateSettings


def quiet_flower_logs() -> None:
    """Flower logs every sampling step at INFO; a simulation shows its own progress."""
    logging.getLogger("flwr").setLevel(logging.WARNING)


def run_simulation(settings: SimulateSettings, *, out_dir: Path, quiet: bool = False) -> dict:
    """Run ``settings`` and write results into ``out_dir``; returns the metrics document."""
    quiet_flower_logs()
    run_config = {
        **settings.run_config(out_dir=str(out_dir.resolve())).as_run_config(),
        **settings.feature_run_config(),
    }
    console = Console(stderr=True, quiet=quiet)
    progress = Progress(
        TextColumn("[bold]round"),
        MofNCompleteColumn(),
        BarColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    started = time.perf_counter()
    with progress:
        bar = progress.add_task("rounds", total=settings.rounds)

        def on_round(record: RoundRecord) -> None:
            eps = record.extra.get("epsilon")
            eps_text = f" ε={eps:.3f}" if eps is not None else ""
            progress.console.print(
                f"round {record.round:>3}: accuracy {record.accuracy:.4f}  loss {record.loss:.4f}  "
                f"clients {record.clients}/{record.selected}  {record.duration_s:.2f}s{eps_text}"
            )
            progress.advance(bar)

        if settings.engine == "inprocess":
            from coordinator.app import build_server_app
            from edge_client.app import build_client_app
            from simulation.attacks import attack_mod
            from simulation.inprocess import run_inprocess
            from simulation.speeds import speed_mod

            run_inprocess(
                server_app=build_server_app(on_round=on_round),
                client_app=build_client_app(mods=[attack_mod, speed_mod]),
                num_nodes=settings.clients,
                run_config=run_config,
            )
        else:
            from simulation.flower_engine import run_flower_engine

            run_flower_engine(settings, run_config=run_config, on_round=on_round)
    metrics_path = out_dir / "metrics.json"
    doc = json.loads(metrics_path.read_text())
    doc["wall_time_s"] = time.perf_counter() - started
    metrics_path.write_text(json.dumps(doc, indent=2))
    plot_accuracy(metrics_path, out_dir / "accuracy.png")
    console.print(
        f"final accuracy {doc['final_accuracy']:.4f} after {settings.rounds} rounds "
        f"in {doc['wall_time_s']:.1f}s"
    )
    return doc
