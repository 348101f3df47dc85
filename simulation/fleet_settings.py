"""``fedfleet simulate`` flags of the simulated fleet.

``--devices jetson-orin=0.2,rpi5=0.5,cpu-x86=0.3`` gives every client a device profile
and puts the run on the simulated clock (run-config ``devices``, ``clock=simulated``);
the round deadline and over-selection (``--round-deadline``/``--deadline``,
``--over-select``) then act on the simulated seconds the devices take.
``--carbon-trace FILE`` (with ``--regions``, ``--round-hours``) adds carbon accounting
to the simulated fleet (``simulation.carbon``) and what ``--selection carbon-aware``
reads. Validation happens here, before any run folder exists.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from edge_client.protocol import keys as k
from simulation.devices import describe, get_profile, parse_device_mix
from simulation.run_config import RunConfigDict

if TYPE_CHECKING:
    from simulation.fleet import SimulatedFleet
    from simulation.inprocess import InProcessGrid

RC_DEVICES = "devices"  # run-config key: the device mix, e.g. "rpi5=0.5,cpu-x86=0.5"
RC_CARBON_TRACE = "carbon-trace"  # the trace's name or path (recorded, read by the engine)
RC_REGIONS = "regions"  # the region mix, e.g. "FR=0.5,PL=0.5"
RC_ROUND_HOURS = "round-hours"  # simulated hours between round starts


class FleetFields(Protocol):
    """The simulate settings this section reads."""

    @property
    def task(self) -> str: ...
    @property
    def clients(self) -> int: ...
    @property
    def seed(self) -> int: ...
    @property
    def engine(self) -> str: ...
    @property
    def threads(self) -> int: ...
    @property
    def devices(self) -> str: ...
    @property
    def speeds(self) -> str: ...
    @property
    def selection(self) -> str: ...
    @property
    def carbon_trace(self) -> str: ...
    @property
    def regions(self) -> str: ...
    @property
    def round_hours(self) -> float: ...


def fleet_run_config(settings: FleetFields) -> RunConfigDict:
    """Run-config keys of the simulated fleet (none without ``--devices``)."""
    if not settings.devices:
        return {}
    rc: RunConfigDict = {
        RC_DEVICES: describe(parse_device_mix(settings.devices)),
        k.RC_CLOCK: "simulated",
    }
    if settings.carbon_trace:
        rc[RC_CARBON_TRACE] = settings.carbon_trace
    if settings.regions:
        rc[RC_REGIONS] = settings.regions
    if settings.round_hours:
        rc[RC_ROUND_HOURS] = float(settings.round_hours)
    return rc


def validate_fleet_settings(settings: FleetFields) -> None:
    """Refuse fleet settings that cannot work, naming the flag to change."""
    if settings.threads < 0:
        raise ValueError("--threads must be >= 1, or 0 for torch's default")
    if settings.devices:
        parse_device_mix(settings.devices)
        if settings.engine == "flower":
            raise ValueError(
                "--devices is simulated by fedfleet's engines (inprocess, ray); drop --engine flower"
            )
        if settings.speeds:
            raise ValueError("--devices and --speeds both model device speed; keep one")
    validate_carbon_settings(settings)


def validate_carbon_settings(settings: FleetFields) -> None:
    """Refuse carbon settings that cannot work: each needs the simulated fleet, the
    trace must load and name every client's region, the profiles must have watts."""
    from simulation.carbon.accounting import parse_region_mix

    carbon_selection = settings.selection in ("carbon-aware",)
    given = [
        flag
        for flag, value in (
            ("--carbon-trace", settings.carbon_trace),
            ("--regions", settings.regions),
            ("--round-hours", settings.round_hours),
            ("--selection carbon-aware", carbon_selection),
        )
        if value
    ]
    if given and not settings.devices:
        raise ValueError(
            f"{given[0]} needs simulated devices; add e.g. --devices rpi5=0.5,cpu-x86=0.5"
        )
    if not (settings.round_hours >= 0 and math.isfinite(settings.round_hours)):
        raise ValueError("--round-hours must be >= 0 simulated hours (0: back to back)")
    if (settings.regions or carbon_selection) and not settings.carbon_trace:
        raise ValueError(
            f"{given[0]} needs a carbon trace; add --carbon-trace europe-2023 or a CSV file"
        )
    regions = parse_region_mix(settings.regions) if settings.regions else None
    if settings.carbon_trace:
        from simulation.carbon.trace import load_trace

        trace = load_trace(settings.carbon_trace)
        profiles = [get_profile(name) for name, _ in parse_device_mix(settings.devices)]
        for profile in profiles:
            if profile.train_w is None or profile.idle_w is None:
                raise ValueError(
                    f"device profile {profile.name!r} has no [power] train-w and idle-w; "
                    "add them to use --carbon-trace"
                )
        names = [r for r, _ in regions] if regions else [p.region for p in profiles]
        for region in names:
            if region is None:
                raise ValueError("give --regions: some device profiles have no [power] region")
            if region not in trace.intensities:
                raise ValueError(trace.unknown_region(region) + "; check --regions")


def apply_threads(settings: FleetFields) -> None:
    """Set torch's intra-op threads for the in-process engine (``--threads``).

    One thread is the default: a round's work is many small operations (one client's
    minibatch, one batched step), where splitting each operation across cores costs
    more than it gains and, on a busy machine, threads spin against each other
    (measured in bench/simulation.py). Torch, numpy's BLAS and OpenMP are all limited.
    """
    if settings.engine == "inprocess" and settings.threads > 0:
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(settings.threads)
        # numpy's OpenBLAS and the OpenMP runtime keep their own pools (the server's
        # aggregation runs in numpy): limit them too, for the rest of this process.
        threadpool_limits(limits=settings.threads)


def build_fleet(settings: FleetFields, *, task: str | None = None) -> SimulatedFleet | None:
    """The run's simulated fleet, or ``None`` without ``--devices``."""
    if not settings.devices:
        return None
    from simulation.carbon.accounting import CarbonLedger, parse_region_mix
    from simulation.carbon.trace import load_trace
    from simulation.fleet import SimulatedFleet
    from simulation.inprocess import InProcessGrid

    carbon = (
        CarbonLedger(trace=load_trace(settings.carbon_trace), selection=settings.selection)
        if settings.carbon_trace
        else None
    )
    return SimulatedFleet(
        mix=parse_device_mix(settings.devices),
        num_nodes=settings.clients,
        node_id_base=InProcessGrid.NODE_ID_BASE,
        task=task or settings.task,
        seed=settings.seed,
        round_hours=settings.round_hours,
        regions=parse_region_mix(settings.regions) if settings.regions else None,
        carbon=carbon,
    )


def fleet_round_stats(fleet: SimulatedFleet, extra: dict[str, float], *, server_round: int) -> None:
    """After a round: add the fleet's counters to the round's ``extra`` and move the
    fleet's clock to the simulated time the coordinator reports (``sim_time_s``) or to
    the next round's scheduled start (``--round-hours``)."""
    extra.update(fleet.take_stats())
    fleet.end_round(server_round, extra.get("sim_time_s"))


def fleet_sections(fleet: SimulatedFleet | None) -> Callable[[], dict[str, Any]] | None:
    """metrics.json's sections the fleet contributes (``carbon``), or ``None``."""
    if fleet is None or fleet.carbon is None:
        return None
    ledger = fleet.carbon
    return lambda: {"carbon": ledger.section()}


def grid_summary(grid: InProcessGrid) -> str:
    """One line about the engine's work: clients materialised, batching achieved."""
    stats = grid.cohort_stats
    batching = (
        f", {stats.jobs} local trainings in {stats.batches} batched steps" if stats.jobs else ""
    )
    return f"{grid.materialised_clients} clients materialised{batching}"
