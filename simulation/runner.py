"""Run one simulation with a chosen engine and show its progress."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from coordinator.results import RoundRecord, atomic_write_bytes
from simulation.report import plot_accuracy, plot_fairness
from simulation.run_config import RunConfigDict
from simulation.settings import SimulateSettings

if TYPE_CHECKING:
    from simulation.ray_engine import RayGrid, RaySetup


def quiet_flower_logs() -> None:
    """Flower logs every sampling step at INFO; a simulation shows its own progress.

    Flower sets its logger to DEBUG when first imported, so import it before setting the
    level (the CLI imports Flower lazily; a level set earlier would be overwritten).
    """
    from flwr.supercore.logger import FLOWER_LOGGER

    FLOWER_LOGGER.setLevel(logging.WARNING)


def run_simulation(settings: SimulateSettings, *, out_dir: Path, quiet: bool = False) -> dict:
    """Run ``settings`` and write results into ``out_dir``; returns the metrics document."""
    console = Console(stderr=True, quiet=quiet)
    from simulation.fleet_settings import apply_threads

    apply_threads(settings)
    if settings.engine == "inprocess":
        from simulation.allocator import keep_freed_memory

        keep_freed_memory()  # rounds reuse freed tensor memory: simulation/allocator.py
    if settings.app:  # a third-party Flower App: its own rounds and results
        from simulation.flower_app import run_flower_app

        return run_flower_app(settings, out_dir=out_dir, console=console, quiet=quiet)
    quiet_flower_logs()
    run_config = settings.flower_run_config(out_dir=str(out_dir.resolve()))
    warning = empty_clients_warning(settings)
    if warning:
        print(warning, file=sys.stderr, flush=True)  # one unwrapped line, even with --quiet
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
        on_round = round_printer(progress, total=settings.rounds)
        if settings.engine in ("inprocess", "ray"):
            run_inprocess_engine(
                settings, run_config=run_config, on_round=on_round, console=progress.console
            )
        else:
            from simulation.flower_engine import run_flower_engine

            run_flower_engine(settings, run_config=run_config, on_round=on_round)
    return finish(settings, out_dir=out_dir, started=started, console=console)


def empty_clients_warning(settings: SimulateSettings) -> str | None:
    """A warning line when the partition leaves some clients without training data (more
    clients than records, or a skewed partition): they train on nothing and answer
    nothing useful, which is seldom what was meant."""
    from edge_client.data import cached_partitions

    parts = cached_partitions(settings.task, settings.clients, settings.partition, settings.seed)
    sizes = parts.sizes()
    empty = int((sizes == 0).sum())
    if not empty:
        return None
    rows = int(sizes.sum())
    fix = (
        f"use --clients {rows} or fewer"
        if settings.clients > rows
        else "use fewer clients or a less skewed --partition (iid, or a larger dirichlet α)"
    )
    return (
        f"warning: {empty} of {settings.clients} clients hold no training data "
        f"({settings.task} has {rows} training rows, split by --partition "
        f"{settings.partition}); {fix}"
    )


def round_printer(progress: Progress, *, total: int) -> Callable[[RoundRecord], None]:
    """A round callback that prints the round's line and advances the progress bar."""
    bar = progress.add_task("rounds", total=total)

    def on_round(record: RoundRecord) -> None:
        eps = record.extra.get("epsilon")
        eps_text = f" ε={eps:.3f}" if eps is not None else ""
        sim = record.extra.get("sim_round_s")
        eps_text += f"  simulated {sim:.1f}s" if sim is not None else ""
        progress.console.print(
            f"round {record.round:>3}: accuracy {record.accuracy:.4f}  loss {record.loss:.4f}  "
            f"clients {record.clients}/{record.selected}  {record.duration_s:.2f}s{eps_text}"
        )
        progress.advance(bar)

    return on_round


def run_inprocess_engine(
    settings: SimulateSettings,
    *,
    run_config: RunConfigDict,
    on_round: Callable[[RoundRecord], None],
    console: Console,
) -> None:
    """fedfleet's apps on the in-process engine, with the simulated fleet if any."""
    from coordinator.app import build_server_app
    from simulation.apps import batches_training, build_simulation_client_app
    from simulation.fleet_settings import (
        build_fleet,
        fleet_round_stats,
        fleet_sections,
        grid_summary,
    )
    from simulation.inprocess import InProcessGrid, partition_node_config, run_grid

    fleet = build_fleet(settings)

    def on_round_inprocess(record: RoundRecord) -> None:
        if fleet is not None:
            fleet_round_stats(fleet, record.extra, server_round=record.round)
        on_round(record)

    client_app = build_simulation_client_app()  # simulation mods: simulation/apps.py
    server_app = build_server_app(
        on_round=on_round_inprocess,
        telemetry=fleet.telemetry if fleet is not None else None,
        sections=fleet_sections(fleet),
    )
    grid_kwargs = {"node_config_fn": partition_node_config(settings.clients), "fleet": fleet}
    if settings.engine == "ray":  # the same grid, its client calls on Ray workers
        from simulation.ray_engine import RayGrid, ray_session

        with ray_session(ray_setup(settings)) as workers:
            ray_grid = RayGrid(
                workers=workers,
                threads=settings.threads,
                client_app=client_app,
                num_nodes=settings.clients,
                run_config=run_config,
                **grid_kwargs,  # type: ignore[arg-type]
            )
            console.print(f"Ray: {workers} workers on {len(set(ray_grid.worker_nodes))} nodes")
            run_grid(ray_grid, server_app=server_app, run_config=run_config)
            console.print(f"{settings.clients} clients, {ray_summary(ray_grid)}")
        return
    grid = InProcessGrid(
        client_app=client_app,
        num_nodes=settings.clients,
        run_config=run_config,
        batch_train=batches_training(client_app),
        **grid_kwargs,  # type: ignore[arg-type]
    )
    run_grid(grid, server_app=server_app, run_config=run_config)
    console.print(f"{settings.clients} clients, {grid_summary(grid)}")


def ray_setup(settings: SimulateSettings) -> RaySetup:
    """The Ray engine's settings (``--ray-address``, ``--ray-workers``, ``--threads``)."""
    from simulation.ray_engine import RaySetup

    return RaySetup(
        address=settings.ray_address, workers=settings.ray_workers, threads=settings.threads
    )


def ray_summary(grid: RayGrid) -> str:
    """One line about the Ray engine's work: slices run per node."""
    per_node = grid.tasks_per_node
    spread = ", ".join(f"{node[:8]}: {count}" for node, count in sorted(per_node.items()))
    return f"{grid.materialised_clients} clients materialised; slices per Ray node: {spread}"


def finish(settings: SimulateSettings, *, out_dir: Path, started: float, console: Console) -> dict:
    """Add the wall time to ``metrics.json``, plot it, print the final line; returns it."""
    metrics_path = out_dir / "metrics.json"
    doc = json.loads(metrics_path.read_text())
    doc["wall_time_s"] = time.perf_counter() - started
    atomic_write_bytes(metrics_path, json.dumps(doc, indent=2).encode())
    plot_accuracy(metrics_path, out_dir / "accuracy.png")
    if any(r.get("fairness") for r in doc["rounds"]):
        plot_fairness(metrics_path, out_dir / "fairness.png")
    simulated = doc["rounds"][-1].get("sim_time_s") if doc["rounds"] else None
    fleet_text = f"; a real fleet would have taken {simulated:.1f}s" if simulated else ""
    console.print(
        f"final accuracy {doc['final_accuracy']:.4f} after {settings.rounds} rounds "
        f"in {doc['wall_time_s']:.1f}s{fleet_text}"
    )
    return doc
