"""The Flower ``ServerApp``: builds a run from its config and hands it to the round loop."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from coordinator import budget_preflight
from coordinator.checkpoint import CheckpointStore
from coordinator.config import RunConfig
from coordinator.dp import configure_dp
from coordinator.fairness import EqualOpportunityWeights, FairnessAudit
from coordinator.loop import RoundLoop, wait_for_nodes
from coordinator.privacy_checks import secagg_from_run_config
from coordinator.results import RoundRecord, write_results
from coordinator.run_tracker import RunTracker
from coordinator.secagg_exchange import SecAggExchange
from coordinator.strategy_setup import (
    SiteEnergy,
    build_strategy_setup,
    site_names,
    site_regions,
)
from edge_client.protocol import keys as k
from strategies.deployment_telemetry import deployment_telemetry
from strategies.selection import SelectionConfig, TelemetrySource
from tasks import evaluate, get_task

log = logging.getLogger(__name__)

SectionsSource = Callable[[], dict[str, Any]]
"""Further top-level sections of metrics.json, read at each write."""


def initial_arrays(config: RunConfig) -> ArrayRecord:
    """The round-0 global model: ``initial-model``'s weights when set, else the task's
    model built under the run's seed."""
    torch.manual_seed(config.seed)
    model = get_task(config.task).build_model()
    if config.initial_model:
        model.load_state_dict(load_state_dict(config.initial_model, task=config.task))
    return ArrayRecord(model.state_dict())


def load_state_dict(path: str | Path, *, task: str) -> dict[str, torch.Tensor]:
    """A ``model.pt`` read safely (tensors only) and checked against ``task``'s model.

    Raises:
        ValueError: the file is unreadable, not a state dict, or of another model, with
            the names or shapes that differ.
    """
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"initial-model {path}: not a readable model.pt ({exc})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"initial-model {path}: not a state dict of tensors")
    expected = get_task(task).build_model().state_dict()
    if set(state) != set(expected):
        missing = sorted(set(expected) - set(state))[:3]
        extra = sorted(set(state) - set(expected))[:3]
        raise ValueError(
            f"initial-model {path} is not a {task} model: missing {missing}, unexpected {extra}"
        )
    for name, tensor in expected.items():
        if state[name].shape != tensor.shape:
            raise ValueError(
                f"initial-model {path} is not a {task} model: {name} has shape "
                f"{tuple(state[name].shape)}, not {tuple(tensor.shape)}"
            )
    return state


def central_evaluate_fn(config: RunConfig) -> Callable[[int, ArrayRecord], MetricRecord]:
    """Evaluate a global model on the task's held-out test set."""
    task = get_task(config.task)
    data = task.load_data(config.seed)
    model = task.build_model()

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        result = evaluate(model, data.x_test, data.y_test)
        return MetricRecord({"accuracy": result.accuracy, "loss": result.loss})

    return evaluate_fn


def build_loop(
    config: RunConfig,
    *,
    on_round: Callable[[RoundRecord], None] | None = None,
    run_config: Mapping[str, Any] | None = None,
    telemetry: TelemetrySource | None = None,
    energy: SiteEnergy | None = None,
) -> RoundLoop:
    """Assemble the round loop for ``config`` (strategy, selector, evaluation, checkpoints).

    ``run_config`` is the full Flower run config: the strategy side (``strategy-*``,
    selection, attack-resistant reply filters, FedBuff) reads its own keys from it.
    ``telemetry`` tells device-aware selection what each device reports (a fleet's
    telemetry; in simulation, the simulated devices' profiles and availability).
    """
    run_config = run_config or config.as_run_config()
    secagg = secagg_from_run_config(run_config, config)  # refuses bad settings before round 1
    audit = FairnessAudit.for_task(config.task, config.sensitive_attribute)
    secure = (
        SecAggExchange(secagg, extra_ints=4 * len(audit.group_names))
        if secagg is not None
        else None
    )
    setup = build_strategy_setup(
        config, run_config, exchange=secure, telemetry=telemetry, energy=energy
    )
    train = config.train_defaults()  # what the run sets, else the task's defaults
    train_config = ConfigRecord(
        {
            k.LOCAL_EPOCHS: train.local_epochs,
            k.BATCH_SIZE: train.batch_size,
            k.LEARNING_RATE: train.learning_rate,
            k.MOMENTUM: train.momentum,
        }
    )
    checkpoints = (
        CheckpointStore(Path(config.out_dir) / "checkpoint.pt") if config.out_dir else None
    )
    loop = RoundLoop(
        strategy=setup.strategy,
        selector=setup.selector,
        exchange=setup.exchange,
        reply_filters=setup.reply_filters + ([secure.round_stats] if secure else []),
        num_rounds=config.num_server_rounds,
        train_config=train_config,
        evaluate_fn=central_evaluate_fn(config),
        checkpoints=checkpoints,
        on_round=on_round,
        timeout=config.round_timeout,
        min_clients=setup.min_clients,
        fraction_evaluate=config.fraction_evaluate,
        fairness=audit,
        equal_opportunity=(
            EqualOpportunityWeights(audit.group_names, rate=config.equal_opportunity)
            if config.equal_opportunity > 0
            else None
        ),
    )
    return configure_dp(loop, config, run_config)  # dp=local|central|distributed


def run_federation(
    grid: Grid,
    context: Context,
    *,
    on_round: Callable[[RoundRecord], None] | None = None,
    telemetry: TelemetrySource | None = None,
    sections: SectionsSource | None = None,
) -> None:
    """The ServerApp's main: validate the run config, run the rounds, write results.

    ``sections`` gives further top-level sections of metrics.json at each write (the
    simulator's ``carbon``)."""
    # The task's training defaults filled in, so metrics.json records what ran.
    config = RunConfig.from_run_config(context.run_config).with_task_defaults()
    out_dir = Path(config.out_dir) if config.out_dir else None
    records: list[RoundRecord] = []
    tracker = RunTracker.for_run(context.run_config)  # deployment runs: status.json
    grid = tracker.wrap(grid)
    energy = SiteEnergy(
        names=site_names(context.run_config),
        selection=SelectionConfig.from_run_config(context.run_config).mode,
    )

    def all_sections() -> dict[str, Any]:
        # the sites' measured carbon, unless the caller's (the simulator's estimate) has one
        return {**energy.section(), **(sections() if sections else {})}

    def record_round(record: RoundRecord) -> None:
        tracker.annotate(record)
        records.append(record)
        log.info(
            "round %d: accuracy=%.4f loss=%.4f clients=%d/%d %.2fs",
            record.round,
            record.accuracy,
            record.loss,
            record.clients,
            record.selected,
            record.duration_s,
        )
        if out_dir is not None:
            write_results(
                out_dir,
                config=recorded_config,
                rounds=records,
                state_dict=None,
                sections=all_sections(),
            )
        if on_round is not None:
            on_round(record)

    # metrics.json records every switch of the run (secagg, dp, attack...), not only core keys.
    recorded_config = {**dict(context.run_config), **config.as_run_config()}
    if telemetry is None:  # a deployment: regions and carbon intensity from the run config
        telemetry = deployment_telemetry(
            context.run_config, registered=site_regions(context.run_config)
        )
    loop = build_loop(
        config,
        on_round=record_round,
        run_config=context.run_config,
        telemetry=telemetry,
        energy=energy,
    )
    previous = loop.checkpoints.load() if loop.checkpoints is not None else None
    if previous is not None:
        records.extend(previous.rounds)  # a resumed run's files keep the earlier rounds
        if out_dir is not None and previous.rounds:  # and the sites' measured energy
            energy.resume(out_dir / "metrics.json", up_to=previous.rounds[-1].round)
    nodes = wait_for_nodes(grid, minimum=config.clients_per_round, timeout=config.round_timeout)
    if previous is None and budget_preflight.asked_for(context.run_config):
        budget_preflight.check_site_budgets(  # raises BudgetHeld: nothing trains
            grid,
            node_ids=nodes,
            train_config=loop.train_config,
            minimum=loop.min_clients,
            rounds=config.num_server_rounds,
            timeout=config.round_timeout,
        )
    result = loop.run(grid, initial_arrays(config))
    if out_dir is not None:
        write_results(
            out_dir,
            config=recorded_config,
            rounds=result.rounds,
            state_dict=result.arrays.to_torch_state_dict(),
            sections=all_sections(),
        )


def build_server_app(
    *,
    on_round: Callable[[RoundRecord], None] | None = None,
    telemetry: TelemetrySource | None = None,
    sections: SectionsSource | None = None,
) -> ServerApp:
    """A ServerApp running fedfleet's round loop; ``on_round`` sees each round's record,
    ``telemetry`` feeds device-aware selection, ``sections`` adds metrics.json sections."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            run_federation(grid, context, on_round=on_round, telemetry=telemetry, sections=sections)
        except Exception as exc:
            # `fedfleet run submit --wait` and `run status` read this within seconds.
            RunTracker.for_run(context.run_config).record_failure(exc, flower_run=context.run_id)
            raise

    return server_app


# The component Flower loads (`[tool.flwr.app.components] serverapp`).
app = build_server_app()
