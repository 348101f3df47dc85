"""``fedfleet simulate``: run a federated simulation on this machine.

Four steps, one function each: the flags (the ``*Option`` types below, one per
setting) become settings (:func:`build_settings`: defaults < ``--config`` < flags),
the run folder is made (:func:`prepare_out_dir`), the simulation runs
(:func:`run`) and the result is reported (:func:`report`).
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import fields
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fedfleet.cli_support import EXIT_BAD_INPUT, EXIT_FAILURE, fail
from privacy.private_files import private_dir
from simulation.help_defaults import SHOWN_DEFAULTS

if TYPE_CHECKING:
    from simulation.settings import SimulateSettings


def _default(name: str) -> str:
    """The default of setting ``name`` as the help shows it (the value is written once,
    in ``SimulateSettings``; :mod:`simulation.help_defaults` holds it for the help)."""
    return SHOWN_DEFAULTS[name]


# --- the flags: one option type per setting (the TOML keys are the same names) ------
TaskOption = Annotated[
    str | None,
    typer.Option(
        help=f"Task name (digits-cnn, breast-cancer-mlp, synthetic-logreg). (default: {_default('task')})"
    ),
]

StrategyOption = Annotated[
    str | None,
    typer.Option(
        help=f"Aggregation strategy (fedavg, fedprox, ...). (default: {_default('strategy')})"
    ),
]

ClientsOption = Annotated[
    int | None, typer.Option(help=f"Number of simulated clients. (default: {_default('clients')})")
]

ClientsPerRoundOption = Annotated[
    int | None,
    typer.Option(help=f"Clients sampled each round. (default: {_default('clients_per_round')})"),
]

RoundsOption = Annotated[
    int | None, typer.Option(help=f"Federated rounds. (default: {_default('rounds')})")
]

LocalEpochsOption = Annotated[
    int | None, typer.Option(help=f"Local epochs per round. (default: {_default('local_epochs')})")
]

BatchSizeOption = Annotated[
    int | None, typer.Option(help=f"Local minibatch size. (default: {_default('batch_size')})")
]

LrOption = Annotated[
    float | None, typer.Option(help=f"Local SGD learning rate. (default: {_default('lr')})")
]

MomentumOption = Annotated[
    float | None,
    typer.Option(help=f"Local SGD momentum, 0 = plain SGD. (default: {_default('momentum')})"),
]

PartitionOption = Annotated[
    str | None,
    typer.Option(
        help="iid | dirichlet:ALPHA[:COLUMN] | shards:K | natural[:COLUMN] (COLUMN: of a "
        f"--dataset, e.g. natural:writer_id). (default: {_default('partition')})"
    ),
]

DatasetOption = Annotated[
    str | None,
    typer.Option(
        help="A Hugging Face dataset instead of --task: femnist, cifar10, shakespeare or "
        "OWNER/NAME, read from --data-dir or the local cache (never downloaded). (default: none)"
    ),
]

DataDirOption = Annotated[
    Path | None,
    typer.Option(
        help="Folder the --dataset was saved to (datasets' save_to_disk). (default: the "
        "local Hugging Face cache)"
    ),
]

SeedOption = Annotated[
    int | None,
    typer.Option(help=f"Seed of data split, sampling and training. (default: {_default('seed')})"),
]

EngineOption = Annotated[
    str | None,
    typer.Option(
        help="inprocess (fast, no Ray) | ray (inprocess's cohorts spread over Ray workers, "
        f"one machine or a cluster) | flower (Flower's Ray engine). (default: {_default('engine')})"
    ),
]

RayAddressOption = Annotated[
    str | None,
    typer.Option(
        help="With --engine ray: a running Ray cluster's address (HOST:6379 from `ray start "
        "--head`, ray://HOST:10001, or auto). (default: start a local Ray for this run)"
    ),
]

RayWorkersOption = Annotated[
    int | None,
    typer.Option(
        help="With --engine ray: Ray workers (actors, one CPU each) that share each round's "
        f"clients; 0 = one per CPU of the cluster. (default: {_default('ray_workers')})"
    ),
]

FractionEvaluateOption = Annotated[
    float | None,
    typer.Option(
        help=f"Fraction of clients doing federated evaluation each round. (default: {_default('fraction_evaluate')})"
    ),
]

SensitiveAttributeOption = Annotated[
    str | None,
    typer.Option(
        help="Audit fairness per group of the task's sensitive attribute (credit-scoring: "
        "sex); needs --fraction-evaluate. Without it, groups are the clients."
    ),
]

FairnessReweighOption = Annotated[
    bool | None,
    typer.Option(
        "--fairness-reweigh/--no-fairness-reweigh",
        help="Clients resample their training data so the label does not depend on the "
        "sensitive attribute's group (Kamiran & Calders 2012); needs --sensitive-attribute. "
        f"\\[default: {_default('fairness_reweigh')}]",
    ),
]

EqualOpportunityOption = Annotated[
    float | None,
    typer.Option(
        metavar="RATE",
        help="Equal-opportunity reweighting (Jiang & Nachum 2020): after each audit the "
        "server raises the weight of the positives of groups whose true-positive rate is "
        "below the mean, by this step rate (0 = off; try 2); needs --sensitive-attribute. "
        f"\\[default: {_default('equal_opportunity')}]",
    ),
]

StrategyOptionsOption = Annotated[
    str | None,
    typer.Option(
        help="Strategy knobs NAME=VALUE,... (server-lr, server-momentum, trim-fraction, "
        "byzantine, krum-select, buffer-size, staleness-exponent, max-update-norm, ...)."
    ),
]

AttackOption = Annotated[
    str | None,
    typer.Option(help="Poison attackers' updates: sign-flip | scale:F | gaussian:S | label-flip."),
]

AttackersOption = Annotated[
    float | None,
    typer.Option(help=f"Fraction of clients that attack. (default: {_default('attackers')})"),
]

SpeedsOption = Annotated[
    str | None,
    typer.Option(
        help="Simulated device speeds (turns on simulated wall-clock): "
        "uniform | pareto:ALPHA | lognormal:SIGMA. (default: off)"
    ),
]

SelectionOption = Annotated[
    str | None,
    typer.Option(
        help="Client selection: random | device-aware | carbon-aware | battery-aware. "
        f"(default: {_default('selection')})"
    ),
]

OverSelectOption = Annotated[
    float | None,
    typer.Option(
        help=f"Start this fraction more clients, keep the first to finish. (default: {_default('over_select')})"
    ),
]

DeadlineOption = Annotated[
    float | None,
    typer.Option(
        "--deadline",
        "--round-deadline",
        help="Round deadline in simulated seconds; later clients are dropped "
        "(needs --devices or --speeds). (default: none)",
    ),
]

SecaggOption = Annotated[
    bool | None,
    typer.Option(
        "--secagg/--no-secagg",
        help=f"Secure aggregation (SecAgg+): the server sees only the sum. \\[default: {_default('secagg')}]",
    ),
]

SecaggDegreeOption = Annotated[
    int | None,
    typer.Option(
        help=f"Neighbours per client, even; 0 = 2*ceil(log2 n). \\[default: {_default('secagg_degree')}]"
    ),
]

SecaggThresholdOption = Annotated[
    int | None,
    typer.Option(
        help=f"Shares that rebuild a secret; 0 = majority of K+1. \\[default: {_default('secagg_threshold')}]"
    ),
]

SecaggClipOption = Annotated[
    float | None,
    typer.Option(
        help=f"Clip each update coordinate to [-R, R] before masking. \\[default: {_default('secagg_clip')}]"
    ),
]

SecaggBitsOption = Annotated[
    int | None,
    typer.Option(help=f"Quantization bits per coordinate. \\[default: {_default('secagg_bits')}]"),
]

DropoutOption = Annotated[
    float | None,
    typer.Option(
        help=f"Probability that a client drops out in a round. \\[default: {_default('dropout')}]"
    ),
]

DropoutStageOption = Annotated[
    str | None,
    typer.Option(
        help=f"When clients drop: after-key-share | after-masked-input. \\[default: {_default('dropout_stage')}]"
    ),
]

DevicesOption = Annotated[
    str | None,
    typer.Option(
        help="Simulated device mix NAME=FRACTION,... of jetson-orin, rpi5, rpi4, cpu-x86, "
        "phone-like; reports simulated wall-clock per round. (default: off)"
    ),
]

CarbonTraceOption = Annotated[
    str | None,
    typer.Option(
        help="Hourly carbon-intensity CSV (timestamp,region,gco2_per_kwh) or a shipped "
        "trace (europe-2023); records energy_kwh and co2_g (needs --devices). (default: off)"
    ),
]

RegionsOption = Annotated[
    str | None,
    typer.Option(
        help="Grid regions of the clients REGION=FRACTION,... (e.g. FR=0.5,PL=0.5). "
        "(default: the region in each device profile's power table)"
    ),
]

RoundHoursOption = Annotated[
    float | None,
    typer.Option(
        help="Simulated hours from one round's start to the next (0: back to back). (default: 0)"
    ),
]

AppOption = Annotated[
    Path | None,
    typer.Option(
        help="Run this Flower App folder (its pyproject.toml) instead of fedfleet's apps."
    ),
]

AppConfigOption = Annotated[
    list[str] | None,
    typer.Option(
        "--run-config",
        help='With --app: override keys of its tool.flwr.app.config, e.g. "num-server-rounds=5".',
    ),
]

AppWorkersOption = Annotated[
    str | None,
    typer.Option(
        help="With --app: ClientApp worker processes: auto (measure, use them when faster), "
        f"0 (in process) or a count; results are the same. (default: {_default('app_workers')})"
    ),
]

ThreadsOption = Annotated[
    int | None,
    typer.Option(
        help="Torch threads of the in-process engine; 0 = torch's default. Many small "
        f"clients run faster on one. (default: {_default('threads')})"
    ),
]

DpOption = Annotated[
    str | None,
    typer.Option(
        help="Differential privacy: none | local (DP-SGD at each client, per-site budget) "
        "| central (DP-FedAvg, trusted server) | distributed (noise shares under --secagg). "
        f"(default: {_default('dp')})"
    ),
]

EpsilonOption = Annotated[
    float | None,
    typer.Option(
        help="Target ε (per site for local, per client otherwise); noise is calibrated "
        "to it. With --noise-multiplier (local): each site's budget. (default: none)"
    ),
]

DeltaOption = Annotated[
    float | None,
    typer.Option(help=f"δ of the DP guarantee; must be < 1/N. (default: {_default('delta')})"),
]

ClipOption = Annotated[
    float | None,
    typer.Option(
        help=f"Clipping norm: per-sample gradient (local) or per-client update. (default: {_default('clip')})"
    ),
]

NoiseMultiplierOption = Annotated[
    float | None,
    typer.Option(help="Noise std / clipping norm, instead of calibrating to --epsilon."),
]

DpClippingOption = Annotated[
    str | None,
    typer.Option(
        help=f"fixed | adaptive update clipping (central only). (default: {_default('dp_clipping')})"
    ),
]

DpAccountantOption = Annotated[
    str | None,
    typer.Option(help=f"Privacy accountant: rdp | prv. (default: {_default('dp_accountant')})"),
]

DpMinClientsOption = Annotated[
    int | None,
    typer.Option(
        help="distributed: clients assumed to survive a round (their noise shares add up "
        "to the target). (default: clients per round)"
    ),
]

SweepEpsilonOption = Annotated[
    str | None,
    typer.Option(
        help="Run once per ε, e.g. 0.5,1,2,4,8 (plus once without DP); writes "
        "privacy_utility.png and privacy_utility.csv. Implies --dp local unless --dp is given."
    ),
]

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", help="TOML file with the same settings (flags override it)."),
]

OutOption = Annotated[
    Path | None, typer.Option("--out", help="Output folder. (default: runs/<timestamp>/)")
]

QuietOption = Annotated[
    bool,
    typer.Option(
        help="No progress bar or per-round lines (with --app: no exchange lines and only "
        "Flower's warnings and errors); still prints where the results are (and a sweep's "
        "table)."
    ),
]


def simulate(
    task: TaskOption = None,
    strategy: StrategyOption = None,
    clients: ClientsOption = None,
    clients_per_round: ClientsPerRoundOption = None,
    rounds: RoundsOption = None,
    local_epochs: LocalEpochsOption = None,
    batch_size: BatchSizeOption = None,
    lr: LrOption = None,
    momentum: MomentumOption = None,
    partition: PartitionOption = None,
    dataset: DatasetOption = None,
    data_dir: DataDirOption = None,
    seed: SeedOption = None,
    engine: EngineOption = None,
    ray_address: RayAddressOption = None,
    ray_workers: RayWorkersOption = None,
    fraction_evaluate: FractionEvaluateOption = None,
    sensitive_attribute: SensitiveAttributeOption = None,
    fairness_reweigh: FairnessReweighOption = None,
    equal_opportunity: EqualOpportunityOption = None,
    strategy_options: StrategyOptionsOption = None,
    attack: AttackOption = None,
    attackers: AttackersOption = None,
    speeds: SpeedsOption = None,
    selection: SelectionOption = None,
    over_select: OverSelectOption = None,
    deadline: DeadlineOption = None,
    secagg: SecaggOption = None,
    secagg_degree: SecaggDegreeOption = None,
    secagg_threshold: SecaggThresholdOption = None,
    secagg_clip: SecaggClipOption = None,
    secagg_bits: SecaggBitsOption = None,
    dropout: DropoutOption = None,
    dropout_stage: DropoutStageOption = None,
    devices: DevicesOption = None,
    carbon_trace: CarbonTraceOption = None,
    regions: RegionsOption = None,
    round_hours: RoundHoursOption = None,
    app: AppOption = None,
    app_config: AppConfigOption = None,
    app_workers: AppWorkersOption = None,
    threads: ThreadsOption = None,
    dp: DpOption = None,
    epsilon: EpsilonOption = None,
    delta: DeltaOption = None,
    clip: ClipOption = None,
    noise_multiplier: NoiseMultiplierOption = None,
    dp_clipping: DpClippingOption = None,
    dp_accountant: DpAccountantOption = None,
    dp_min_clients: DpMinClientsOption = None,
    sweep_epsilon: SweepEpsilonOption = None,
    config: ConfigOption = None,
    out: OutOption = None,
    quiet: QuietOption = False,
) -> None:
    """Run a federated simulation; writes metrics.json, metrics.csv, model.pt and accuracy.png
    (and fairness.png when rounds were audited: --fraction-evaluate)."""
    flags = dict(locals())  # first statement: exactly the parameters, as given
    settings = build_settings(config, overrides=settings_overrides(flags))
    out_dir, created = prepare_out_dir(out)
    run(settings, out_dir=out_dir, created=created, quiet=quiet)
    report(settings, out_dir=out_dir)  # also with --quiet: where the results are


def settings_overrides(flags: Mapping[str, Any]) -> dict[str, Any]:
    """The settings the flags give (``None``: not given), as ``SimulateSettings`` names
    and types them."""
    from simulation.settings import SimulateSettings

    names = {f.name for f in fields(SimulateSettings)}
    overrides = {name: value for name, value in flags.items() if name in names}
    app, app_config = flags.get("app"), flags.get("app_config")
    overrides["app"] = str(app) if app is not None else None
    overrides["app_config"] = " ".join(app_config) if app_config else None
    data_dir = flags.get("data_dir")
    overrides["data_dir"] = str(data_dir) if data_dir is not None else None
    return overrides


def build_settings(config: Path | None, *, overrides: Mapping[str, Any]) -> SimulateSettings:
    """Defaults < the ``--config`` file < the flags, validated; one clear line and exit
    code 2 on bad input."""
    from simulation.settings import SimulateSettings

    try:
        return SimulateSettings.build(config_file=config, overrides=overrides)
    except ValueError as exc:
        fail(str(exc))


def prepare_out_dir(out: Path | None) -> tuple[Path, bool]:
    """The run folder (``runs/<timestamp>/`` by default), made empty; whether it was
    created here (so a failed run can remove it)."""
    out_dir = out or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    if out_dir.exists() and any(out_dir.iterdir()):
        fail(f"output folder {out_dir} is not empty; choose another --out")
    created = not out_dir.exists()
    private_dir(out_dir)  # run folders are private: 0700, files 0600
    return out_dir, created


def run(settings: SimulateSettings, *, out_dir: Path, created: bool, quiet: bool) -> None:
    """Run the simulation (or the privacy sweep) into ``out_dir``; on failure, remove
    a folder made here that holds no results and exit with one clear line: code 2 for
    input only the run could check (a ``ValueError``), 1 when the run itself failed.
    A Flower App's (``--app``) own exception prints its whole traceback and exits 1,
    its run folder kept (``exchanges.json``, what the app wrote)."""
    from simulation.app_errors import AppRaised

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
    except AppRaised as exc:  # the user's own code: its whole traceback, exit 1
        if exc.trace:
            typer.echo(exc.trace.rstrip(), err=True)
        if created and not any(out_dir.iterdir()):  # raised before anything was written
            shutil.rmtree(out_dir, ignore_errors=True)
            fail(str(exc), EXIT_FAILURE)
        fail(f"{exc}; what the run recorded is in {out_dir}", EXIT_FAILURE)
    except Exception as exc:
        if created and not any(out_dir.glob("**/metrics.json")):
            shutil.rmtree(out_dir, ignore_errors=True)
        code = EXIT_BAD_INPUT if isinstance(exc, ValueError) else EXIT_FAILURE
        fail(f"{type(exc).__name__}: {exc}", code)


def report(settings: SimulateSettings, *, out_dir: Path) -> None:
    """Say where the results are."""
    if settings.app:
        typer.echo(f"results: {out_dir}/exchanges.json and what the app wrote in {out_dir}")
    elif settings.sweep_epsilon:
        typer.echo(f"results: {out_dir}/privacy_utility.png, {out_dir}/privacy_utility.csv")
    else:
        fairness = f", {out_dir}/fairness.png" if (out_dir / "fairness.png").exists() else ""
        typer.echo(
            f"results: {out_dir}/metrics.json, {out_dir}/accuracy.png{fairness}, {out_dir}/model.pt"
        )


def main() -> None:  # pragma: no cover - convenience for `python -m simulation.cli`
    start = time.perf_counter()
    typer.run(simulate)
    sys.exit(0 if time.perf_counter() >= start else 1)
