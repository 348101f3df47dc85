"""``fedfleet simulate``: run a federated simulation on this machine."""

from __future__ import annotations

import shutil
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from privacy.private_files import private_dir
from simulation.settings import SimulateSettings


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def simulate(
    task: Annotated[
        str | None,
        typer.Option(
            help="Task name (digits-cnn, breast-cancer-mlp, synthetic-logreg). (default: digits-cnn)"
        ),
    ] = None,
    strategy: Annotated[
        str | None,
        typer.Option(help="Aggregation strategy (fedavg, fedprox, ...). (default: fedavg)"),
    ] = None,
    clients: Annotated[
        int | None, typer.Option(help="Number of simulated clients. (default: 10)")
    ] = None,
    clients_per_round: Annotated[
        int | None, typer.Option(help="Clients sampled each round. (default: 10)")
    ] = None,
    rounds: Annotated[int | None, typer.Option(help="Federated rounds. (default: 3)")] = None,
    local_epochs: Annotated[
        int | None, typer.Option(help="Local epochs per round. (default: 1)")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Local minibatch size. (default: 16)")
    ] = None,
    lr: Annotated[
        float | None, typer.Option(help="Local SGD learning rate. (default: 0.05)")
    ] = None,
    partition: Annotated[
        str | None, typer.Option(help="iid | dirichlet:ALPHA | shards:K | natural. (default: iid)")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of data split, sampling and training. (default: 0)")
    ] = None,
    engine: Annotated[
        str | None,
        typer.Option(
            help="inprocess (fast, no Ray) | flower (Flower's Ray engine). (default: inprocess)"
        ),
    ] = None,
    fraction_evaluate: Annotated[
        float | None,
        typer.Option(
            help="Fraction of clients doing federated evaluation each round. (default: 0)"
        ),
    ] = None,
    strategy_options: Annotated[
        str | None,
        typer.Option(
            help="Strategy knobs NAME=VALUE,... (server-lr, server-momentum, trim-fraction, "
            "byzantine, krum-select, buffer-size, staleness-exponent, max-update-norm, ...)."
        ),
    ] = None,
    attack: Annotated[
        str | None,
        typer.Option(
            help="Poison attackers' updates: sign-flip | scale:F | gaussian:S | label-flip."
        ),
    ] = None,
    attackers: Annotated[
        float | None, typer.Option(help="Fraction of clients that attack. (default: 0)")
    ] = None,
    speeds: Annotated[
        str | None,
        typer.Option(
            help="Simulated device speeds (turns on simulated wall-clock): "
            "uniform | pareto:ALPHA | lognormal:SIGMA. (default: off)"
        ),
    ] = None,
    selection: Annotated[
        str | None,
        typer.Option(help="Client selection: random | device-aware. (default: random)"),
    ] = None,
    over_select: Annotated[
        float | None,
        typer.Option(
            help="Start this fraction more clients, keep the first to finish. (default: 0)"
        ),
    ] = None,
    deadline: Annotated[
        float | None,
        typer.Option(
            "--deadline",
            "--round-deadline",
            help="Round deadline in simulated seconds; later clients are dropped "
            "(needs --devices or --speeds). (default: none)",
        ),
    ] = None,
    secagg: Annotated[
        bool | None,
        typer.Option(
            "--secagg/--no-secagg",
            help="Secure aggregation (SecAgg+): the server sees only the sum. \\[default: off]",
        ),
    ] = None,
    secagg_degree: Annotated[
        int | None,
        typer.Option(help="Neighbours per client, even; 0 = 2*ceil(log2 n). \\[default: 0]"),
    ] = None,
    secagg_threshold: Annotated[
        int | None,
        typer.Option(help="Shares that rebuild a secret; 0 = majority of K+1. \\[default: 0]"),
    ] = None,
    secagg_clip: Annotated[
        float | None,
        typer.Option(
            help="Clip each update coordinate to [-R, R] before masking. \\[default: 1.0]"
        ),
    ] = None,
    secagg_bits: Annotated[
        int | None, typer.Option(help="Quantization bits per coordinate. \\[default: 16]")
    ] = None,
    dropout: Annotated[
        float | None,
        typer.Option(help="Probability that a client drops out in a round. \\[default: 0]"),
    ] = None,
    dropout_stage: Annotated[
        str | None,
        typer.Option(
            help="When clients drop: after-key-share | after-masked-input. "
            "\\[default: after-key-share]"
        ),
    ] = None,
    devices: Annotated[
        str | None,
        typer.Option(
            help="Simulated device mix NAME=FRACTION,... of jetson-orin, rpi5, rpi4, cpu-x86, "
            "phone-like; reports simulated wall-clock per round. (default: off)"
        ),
    ] = None,
    app: Annotated[
        Path | None,
        typer.Option(
            help="Run this Flower App folder (its pyproject.toml) instead of fedfleet's apps."
        ),
    ] = None,
    app_config: Annotated[
        list[str] | None,
        typer.Option(
            "--run-config",
            help='With --app: override keys of its tool.flwr.app.config, e.g. "num-server-rounds=5".',
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            help="Torch threads of the in-process engine; 0 = torch's default. Many small "
            "clients run faster on one. (default: 1)"
        ),
    ] = None,
    dp: Annotated[
        str | None,
        typer.Option(
            help="Differential privacy: none | local (DP-SGD at each client, per-site budget) "
            "| central (DP-FedAvg, trusted server) | distributed (noise shares under --secagg). "
            "(default: none)"
        ),
    ] = None,
    epsilon: Annotated[
        float | None,
        typer.Option(
            help="Target ε (per site for local, per client otherwise); noise is calibrated "
            "to it. With --noise-multiplier (local): each site's budget. (default: none)"
        ),
    ] = None,
    delta: Annotated[
        float | None, typer.Option(help="δ of the DP guarantee; must be < 1/N. (default: 1e-5)")
    ] = None,
    clip: Annotated[
        float | None,
        typer.Option(
            help="Clipping norm: per-sample gradient (local) or per-client update. (default: 1.0)"
        ),
    ] = None,
    noise_multiplier: Annotated[
        float | None,
        typer.Option(help="Noise std / clipping norm, instead of calibrating to --epsilon."),
    ] = None,
    dp_clipping: Annotated[
        str | None,
        typer.Option(help="fixed | adaptive update clipping (central only). (default: fixed)"),
    ] = None,
    dp_accountant: Annotated[
        str | None, typer.Option(help="Privacy accountant: rdp | prv. (default: rdp)")
    ] = None,
    dp_min_clients: Annotated[
        int | None,
        typer.Option(
            help="distributed: clients assumed to survive a round (their noise shares add up "
            "to the target). (default: clients per round)"
        ),
    ] = None,
    sweep_epsilon: Annotated[
        str | None,
        typer.Option(
            help="Run once per ε, e.g. 0.5,1,2,4,8 (plus once without DP); writes "
            "privacy_utility.png and privacy_utility.csv."
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="TOML file with the same settings (flags override it)."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Output folder. (default: runs/<timestamp>/)")
    ] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar or per-round lines.")] = False,
) -> None:
    """Run a federated simulation; writes metrics.json, metrics.csv, model.pt and accuracy.png."""
    overrides: dict[str, Any] = {
        "task": task,
        "strategy": strategy,
        "clients": clients,
        "clients_per_round": clients_per_round,
        "rounds": rounds,
        "local_epochs": local_epochs,
        "batch_size": batch_size,
        "lr": lr,
        "partition": partition,
        "seed": seed,
        "engine": engine,
        "fraction_evaluate": fraction_evaluate,
        "strategy_options": strategy_options,
        "attack": attack,
        "attackers": attackers,
        "speeds": speeds,
        "selection": selection,
        "over_select": over_select,
        "deadline": deadline,
        "secagg": secagg,
        "secagg_degree": secagg_degree,
        "secagg_threshold": secagg_threshold,
        "secagg_clip": secagg_clip,
        "secagg_bits": secagg_bits,
        "dropout": dropout,
        "dropout_stage": dropout_stage,
        "devices": devices,
        "app": str(app) if app is not None else None,
        "app_config": " ".join(app_config) if app_config else None,
        "threads": threads,
        "dp": dp,
        "epsilon": epsilon,
        "delta": delta,
        "clip": clip,
        "noise_multiplier": noise_multiplier,
        "dp_clipping": dp_clipping,
        "dp_accountant": dp_accountant,
        "dp_min_clients": dp_min_clients,
        "sweep_epsilon": sweep_epsilon,
    }
    try:
        settings = SimulateSettings.build(config_file=config, overrides=overrides)
    except ValueError as exc:
        _fail(str(exc))
        return
    out_dir = out or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    if out_dir.exists() and any(out_dir.iterdir()):
        _fail(f"output folder {out_dir} is not empty; choose another --out")
    created = not out_dir.exists()
    private_dir(out_dir)  # run folders are private: 0700, files 0600
    try:
        from simulation.runner import run_simulation

        if settings.sweep_epsilon:  # privacy-utility sweep: simulation/privacy_sweep.py
            from simulation.privacy_sweep import run_privacy_sweep

            run_privacy_sweep(settings, out_dir=out_dir, quiet=quiet)
        else:
            run_simulation(settings, out_dir=out_dir, quiet=quiet)
    except KeyboardInterrupt:
        typer.echo(f"interrupted; partial results in {out_dir}", err=True)
        raise typer.Exit(code=130) from None
    except Exception as exc:
        if created and not any(out_dir.glob("**/metrics.json")):
            shutil.rmtree(out_dir, ignore_errors=True)
        _fail(f"{type(exc).__name__}: {exc}")
    if not quiet and settings.app:
        typer.echo(f"results: {out_dir}/exchanges.json and what the app wrote in {out_dir}")
    elif not quiet and settings.sweep_epsilon:
        typer.echo(f"results: {out_dir}/privacy_utility.png, {out_dir}/privacy_utility.csv")
    elif not quiet:
        typer.echo(f"results: {out_dir}/metrics.json, {out_dir}/accuracy.png, {out_dir}/model.pt")


def main() -> None:  # pragma: no cover - convenience for `python -m simulation.cli`
    start = time.perf_counter()
    typer.run(simulate)
    sys.exit(0 if time.perf_counter() >= start else 1)
