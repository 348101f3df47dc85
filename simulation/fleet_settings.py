"""``fedfleet simulate`` flags of the simulated fleet.

``--devices jetson-orin=0.2,rpi5=0.5,cpu-x86=0.3`` gives every client a device profile
and puts the run on the simulated clock (run-config ``devices``, ``clock=simulated``);
the round deadline and over-selection (``--round-deadline``/``--deadline``,
``--over-select``) then act on the simulated seconds the devices take.
Validation happens here, before any run folder exists.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from edge_client.protocol import keys as k
from simulation.devices import describe, parse_device_mix
from simulation.run_config import RunConfigDict

if TYPE_CHECKING:
    from simulation.fleet import SimulatedFleet
    from simulation.inprocess import InProcessGrid

RC_DEVICES = "devices"  # run-config key: the device mix, e.g. "rpi5=0.5,cpu-x86=0.5"


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


def fleet_run_config(settings: FleetFields) -> RunConfigDict:
    """Run-config keys of the simulated fleet (none without ``--devices``)."""
    if not settings.devices:
        return {}
    return {RC_DEVICES: describe(parse_device_mix(settings.devices)), k.RC_CLOCK: "simulated"}


def validate_fleet_settings(settings: FleetFields) -> None:
    """Refuse fleet settings that cannot work, naming the flag to change."""
    if settings.threads < 0:
        raise ValueError("--threads must be >= 1, or 0 for torch's default")
    if settings.devices:
        parse_device_mix(settings.devices)
        if settings.engine != "inprocess":
            raise ValueError(
                "--devices is simulated by the in-process engine; drop --engine flower"
            )
        if settings.speeds:
            raise ValueError("--devices and --speeds both model device speed; keep one")


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
    from simulation.fleet import SimulatedFleet
    from simulation.inprocess import InProcessGrid

    return SimulatedFleet(
        mix=parse_device_mix(settings.devices),
        num_nodes=settings.clients,
        node_id_base=InProcessGrid.NODE_ID_BASE,
        task=task or settings.task,
        seed=settings.seed,
    )


def fleet_round_stats(fleet: SimulatedFleet, extra: dict[str, float]) -> None:
    """After a round: add the fleet's counters to the round's ``extra`` and move the
    fleet's clock to the simulated time the coordinator reports (``sim_time_s``)."""
    extra.update(fleet.take_stats())
    if "sim_time_s" in extra:
        fleet.advance_to(extra["sim_time_s"])


def grid_summary(grid: InProcessGrid) -> str:
    """One line about the engine's work: clients materialised, batching achieved."""
    stats = grid.cohort_stats
    batching = (
        f", {stats.jobs} local trainings in {stats.batches} batched steps" if stats.jobs else ""
    )
    return f"{grid.materialised_clients} clients materialised{batching}"
