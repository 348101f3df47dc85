"""The strategy side of a run, assembled in one place for ``build_loop``.

From the run config: the registered strategy with its ``strategy-*`` knobs, the
selector (``selection``, ``over-select``, ``min-battery``, ``min-per-group``, ``rest-rounds``), the train exchange (plain,
or buffered for an asynchronous strategy such as FedBuff), and the reply filters:

1. the update guard (non-finite / ``strategy-max-update-norm`` / malformed),
2. the device-aware selector's observer (learns failures and speeds),
3. the round deadline (synchronous rounds on the simulated clock: ``deadline-s``,
   over-selection surplus),
4. the buffered exchange's state (asynchronous rounds),
5. the sites' measured energy (``energy-kwh``, ``co2-g`` reply metrics, codecarbon at
   the sites; under SecAgg+ their masked sum) summed into the round's ``energy_kwh``
   and ``co2_g``, and booked per site for metrics.json's ``carbon`` (:class:`SiteEnergy`).

Asynchrony is chosen here, once, from the registry's ``asynchronous`` flag; the round
loop itself has no FedBuff case. Set-ups that cannot work are refused before round 1
(``strategies.validation``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from flwr.app import ArrayRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from coordinator.buffered import BufferedExchange, Clock, TopUpSelector
from coordinator.config import RunConfig
from coordinator.loop import PlainExchange, ReplyFilter, Selector, TrainExchange
from coordinator.secagg_exchange import ENERGY_SITES
from edge_client.protocol import keys as k
from edge_client.protocol.secagg import AGGREGATED_CLIENTS
from strategies import StrategyParams, build_strategy, strategy_info
from strategies.carbon_selection import BatteryAwareSelector, CarbonAwareSelector
from strategies.guard import UpdateGuard
from strategies.selection import (
    CountSelector,
    DeviceAwareSelector,
    RandomSelector,
    RoundDeadline,
    SelectionConfig,
    TelemetrySource,
)
from strategies.validation import check_strategy_setup


@dataclass
class InstructionLog:
    """Per node, the global weights its latest train instruction carried.

    Entries older than ``retain_rounds`` rounds are forgotten, so clients that never
    reply do not keep old models alive.
    """

    retain_rounds: int = 1
    _bases: dict[int, tuple[int, ArrayRecord]] = field(default_factory=dict)

    def record(self, messages: Iterable[Message], server_round: int) -> list[Message]:
        outgoing = list(messages)
        for message in outgoing:
            records = message.content.array_records
            if records:
                arrays = next(iter(records.values()))
                self._bases[message.metadata.dst_node_id] = (server_round, arrays)
        oldest = server_round - self.retain_rounds
        self._bases = {n: e for n, e in self._bases.items() if e[0] >= oldest}
        return outgoing

    def base_of(self, reply: Message) -> ArrayRecord | None:
        entry = self._bases.pop(reply.metadata.src_node_id, None)
        return entry[1] if entry is not None else None


@dataclass
class RecordingExchange:
    """Wraps a train exchange and logs what each node was sent."""

    inner: TrainExchange
    log: InstructionLog

    @property
    def in_flight(self) -> int:
        return int(getattr(self.inner, "in_flight", 0))

    def exchange(
        self, grid: Grid, messages: Iterable[Message], *, server_round: int, timeout: float
    ) -> list[Message]:
        outgoing = self.log.record(messages, server_round)
        return self.inner.exchange(grid, outgoing, server_round=server_round, timeout=timeout)


@dataclass
class StrategySetup:
    """What ``build_loop`` plugs into the round loop."""

    strategy: Strategy
    params: StrategyParams
    selector: Selector
    exchange: TrainExchange
    reply_filters: list[ReplyFilter]
    min_clients: int


def _clock(run_config: Mapping[str, Any]) -> Clock:
    clock = str(run_config.get(k.RC_CLOCK, "wall"))
    if clock not in ("wall", "simulated"):
        raise ValueError(f"run config {k.RC_CLOCK}={clock!r}: choose wall or simulated")
    return cast(Literal["wall", "simulated"], clock)


def _secure_aggregation(run_config: Mapping[str, Any]) -> bool:
    value = run_config.get("secagg", False)
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def measured_energy(
    server_round: int, replies: list[Message]
) -> tuple[list[Message], dict[str, float]]:
    """Reply filter: the round's ``energy_kwh`` and ``co2_g``, summed over the replies that
    report them (sites measuring with codecarbon); nothing when none does."""
    energy, co2, seen = 0.0, 0.0, False
    for reply in replies:
        reading = _reported(reply)
        if reading is not None:
            energy, co2, seen = energy + reading[0], co2 + reading[1], True
    return replies, ({"energy_kwh": energy, "co2_g": co2} if seen else {})


def _reported(reply: Message) -> tuple[float, float] | None:
    """The (kWh, g CO2) a reply reports, or None (also for values that are not finite
    and ≥ 0: a hostile site cannot poison the totals with NaN or a negative)."""
    for record in reply.content.metric_records.values():
        kwh, grams = record.get(k.ENERGY_KWH), record.get(k.CO2_G)
        if isinstance(kwh, int | float) and isinstance(grams, int | float):
            values = float(kwh), float(grams)
            ok = all(math.isfinite(v) and v >= 0 for v in values)
            return values if ok else None
    return None


def _masked(reply: Message) -> bool:
    """Whether ``reply`` is secure aggregation's sum (no single site's values)."""
    return any(AGGREGATED_CLIENTS in r for r in reply.content.metric_records.values())


@dataclass
class SiteEnergy:
    """The sites' measured energy over a run: the round filter and metrics.json's
    ``carbon`` section (``"source": "codecarbon"``).

    A plain reply is booked to the site that sent it: its node id's name in ``names``
    (the coordinator's ``sites.json``, kept by ``coordinator add-site`` from the node id
    Flower authenticates), else ``node-<id>``. Secure aggregation's reply is the
    survivors' sum: it counts in the totals and the round, not per site.
    """

    names: Mapping[int, str] = field(default_factory=dict)
    selection: str = "random"
    secure: bool = False  # SecAgg+: the one reply is the coordinator's own masked sum
    per_site: dict[str, dict[str, float]] = field(default_factory=dict)
    per_round: list[dict[str, Any]] = field(default_factory=list)

    def site_of(self, node_id: int) -> str:
        return self.names.get(node_id, f"node-{node_id}")

    def measured_energy(
        self, server_round: int, replies: list[Message]
    ) -> tuple[list[Message], dict[str, float]]:
        """Reply filter: :func:`measured_energy`, and the round booked per site."""
        kept, stats = measured_energy(server_round, replies)
        if not stats:
            return kept, stats
        sites: dict[str, dict[str, float]] | None = {}
        measured = 0
        for reply in replies:
            reading = _reported(reply)
            if reading is None:
                continue
            if self.secure and _masked(reply):  # the survivors' sum: no site's own values
                sites = None
                count = _metric(reply, ENERGY_SITES)
                measured += int(count) if count is not None else 1
                continue
            measured += 1
            if sites is None:
                continue
            name = self.site_of(reply.metadata.src_node_id)
            row = sites.setdefault(name, {"energy_kwh": 0.0, "co2_g": 0.0})
            row["energy_kwh"] += reading[0]
            row["co2_g"] += reading[1]
        self.book({"round": server_round, **stats, "sites": measured, "per_site": sites})
        return kept, stats

    def book(self, row: Mapping[str, Any]) -> None:
        """Add a finished round (a ``per_round`` row) to the per-site totals."""
        sites = row.get("per_site")
        for name, values in (sites or {}).items():
            total = self.per_site.setdefault(
                name, {"energy_kwh": 0.0, "co2_g": 0.0, "client_rounds": 0}
            )
            total["energy_kwh"] += float(values["energy_kwh"])
            total["co2_g"] += float(values["co2_g"])
            total["client_rounds"] += 1
        self.per_round.append(dict(row))

    def resume(self, metrics: Path, *, up_to: int) -> None:
        """Take back the rounds ≤ ``up_to`` (the checkpoint's) from a resumed run's
        previous ``metrics.json``; nothing when it has no measured carbon."""
        try:
            carbon = json.loads(metrics.read_text()).get("carbon") or {}
        except (OSError, ValueError, AttributeError):
            return
        if carbon.get("source") != "codecarbon":
            return
        for row in carbon.get("per_round") or []:
            if (
                isinstance(row, dict)
                and isinstance(row.get("round"), int)
                and row["round"] <= up_to
            ):
                self.book(row)

    def section(self) -> dict[str, Any]:
        """``{"carbon": ...}`` once a round was measured, else nothing."""
        if not self.per_round:
            return {}
        return {
            "carbon": {
                "energy_kwh": sum(r["energy_kwh"] for r in self.per_round),
                "co2_g": sum(r["co2_g"] for r in self.per_round),
                "selection": self.selection,
                "per_site": {name: dict(row) for name, row in sorted(self.per_site.items())},
                "masked_rounds": sum(1 for r in self.per_round if r["per_site"] is None),
                "per_round": [dict(r) for r in self.per_round],
                "source": "codecarbon",
            }
        }


def _metric(reply: Message, key: str) -> float | None:
    for record in reply.content.metric_records.values():
        value = record.get(key)
        if isinstance(value, int | float):
            return float(value)
    return None


def _registered_sites(run_config: Mapping[str, Any]) -> dict[int, dict[str, Any]]:
    """node id → its entry in the coordinator's ``sites.json`` (a deployment run's folder
    is ``<state>/runs/<run-id>``); empty for other runs or without the file."""
    out_dir = str(run_config.get("out-dir", ""))
    if not out_dir or not str(run_config.get(k.RC_RUN_ID, "")):
        return {}
    path = Path(out_dir).parent.parent / "sites.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict):
        return {}
    return {
        int(entry["node-id"]): {**entry, "name": str(name)}
        for name, entry in doc.items()
        if isinstance(entry, dict) and isinstance(entry.get("node-id"), int)
    }


def site_names(run_config: Mapping[str, Any]) -> dict[int, str]:
    """node id → site name from the coordinator's ``sites.json``."""
    return {node: entry["name"] for node, entry in _registered_sites(run_config).items()}


def site_regions(run_config: Mapping[str, Any]) -> dict[int, str]:
    """node id → the region the site was registered with (``coordinator add-site
    --region``), for sites registered with one."""
    return {
        node: entry["region"]
        for node, entry in _registered_sites(run_config).items()
        if isinstance(entry.get("region"), str)
    }


def build_strategy_setup(
    config: RunConfig,
    run_config: Mapping[str, Any],
    *,
    exchange: TrainExchange | None = None,
    telemetry: TelemetrySource | None = None,
    energy: SiteEnergy | None = None,
) -> StrategySetup:
    """Validate and assemble strategy, selector, exchange and reply filters.

    ``exchange`` replaces the plain synchronous exchange (e.g. secure aggregation);
    ``telemetry`` feeds device-aware selection (battery, charging, profile speed);
    ``energy`` books the sites' measured energy (a fresh one when not given).
    """
    params = StrategyParams.from_run_config(run_config)
    if params.client_lr is None:  # q-FFL's Lipschitz estimate: the run's learning rate
        params = dataclasses.replace(params, client_lr=config.train_defaults().learning_rate)
    secagg = _secure_aggregation(run_config)
    check_strategy_setup(
        strategy=config.strategy,
        params=params,
        clients_per_round=config.clients_per_round,
        min_clients=config.min_clients,
        secure_aggregation=secagg,
    )
    info = strategy_info(config.strategy)
    selection = SelectionConfig.from_run_config(run_config)
    clock = _clock(run_config)
    inner: CountSelector
    if selection.mode == "device-aware":
        inner = DeviceAwareSelector(
            clients_per_round=config.clients_per_round,
            seed=config.seed,
            over_select=0.0 if info.asynchronous else selection.over_select,
            min_battery=selection.min_battery,
            outstanding_rounds=params.max_staleness if info.asynchronous else 0,
            telemetry=telemetry,
            seconds_key=k.SIM_SECONDS,
        )
    elif selection.mode == "carbon-aware":
        inner = CarbonAwareSelector(
            clients_per_round=config.clients_per_round,
            seed=config.seed,
            over_select=0.0 if info.asynchronous else selection.over_select,
            min_per_group=selection.min_per_group,
            rest_rounds=selection.rest_rounds,
            telemetry=telemetry,
        )
    elif selection.mode == "battery-aware":
        inner = BatteryAwareSelector(
            clients_per_round=config.clients_per_round,
            seed=config.seed,
            over_select=0.0 if info.asynchronous else selection.over_select,
            min_per_group=selection.min_per_group,
            rest_rounds=selection.rest_rounds,
            telemetry=telemetry,
            min_battery=selection.min_battery,
        )
    else:
        inner = RandomSelector(
            clients_per_round=config.clients_per_round,
            seed=config.seed,
            over_select=0.0 if info.asynchronous else selection.over_select,
        )
    filters: list[ReplyFilter] = []
    selector: Selector = inner
    train_exchange: TrainExchange
    if info.asynchronous:
        buffered = BufferedExchange(
            buffer_size=params.buffer_size, clock=clock, seconds_key=k.SIM_SECONDS
        )
        selector = TopUpSelector(
            inner=inner, exchange=buffered, concurrency=config.clients_per_round
        )
        train_exchange = buffered
    else:
        train_exchange = exchange or PlainExchange()
    if not secagg:  # masked replies cannot be checked one by one; clients clip instead
        log = InstructionLog(retain_rounds=params.max_staleness + 1 if info.asynchronous else 1)
        train_exchange = RecordingExchange(inner=train_exchange, log=log)
        guard = UpdateGuard(max_norm=params.max_update_norm, weight_key=k.NUM_EXAMPLES)
        filters.append(functools.partial(guard.filter, base_of=log.base_of))
    if isinstance(inner, DeviceAwareSelector):
        filters.append(inner.observe)
    if info.asynchronous:
        filters.append(buffered.round_stats)
    elif clock == "simulated":
        deadline = RoundDeadline(
            target=config.clients_per_round,
            deadline_s=selection.deadline_s,
            seconds_key=k.SIM_SECONDS,
        )
        filters.append(deadline.filter)
    energy = energy or SiteEnergy(selection=selection.mode)
    energy.secure = secagg
    filters.append(energy.measured_energy)
    return StrategySetup(
        strategy=build_strategy(config.strategy, params),
        params=params,
        selector=selector,
        exchange=train_exchange,
        reply_filters=filters,
        min_clients=max(config.min_clients, info.min_updates(params)),
    )
