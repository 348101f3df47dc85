"""The simulated world around the clients: which device each is, whether it is online,
whether it drops out, how long it takes and how many bytes cross the network.

The in-process engine consults a :class:`SimulatedFleet` for every instruction:

- ``admit``: a device that is offline at the current simulated time of day, or that
  drops out during this instruction, never runs the ClientApp; the server gets the error
  reply Flower's SuperLink gives for an unreachable node (``NODE_UNAVAILABLE``).
- ``stamp``: times a successful reply: the seconds the device took to download, compute
  and upload (``simulation.devices.client_duration_s``). For fedfleet's own apps the
  reply carries them under ``sim-seconds``: the coordinator's round deadline and
  over-selection (``deadline-s``, ``over-select`` on the ``simulated`` clock) and
  asynchronous strategies read arrival times from it, as a real coordinator reads them
  from its own clock. A third-party app's replies are never written to
  (``write=False``); its simulated seconds reach only fedfleet's own records.

All random draws are functions of (seed, node, hour or per-node instruction count), so
a run is reproducible and independent of the order in which the engine executes clients.
The clock itself is the coordinator's: after each round the engine sets ``now_s`` to the
simulated time the coordinator reports (``sim_time_s``), or to the next round's scheduled
start when rounds are spaced (``round_hours``).

With a carbon ledger (``--carbon-trace``) each client draws from a grid region
(``--regions``, else its profile's ``[power] region``); ``stamp`` charges each completed
instruction's energy at the region's intensity in the current simulated hour, and
``telemetry`` reports region and intensity to selectors (``--selection carbon-aware``).

Clients whose profile has a ``[battery]`` (:mod:`simulation.battery`) report its level
and whether it is charging in ``telemetry`` (``--selection battery-aware``); ``stamp``
drains it by the instruction's energy, the clock charges or drains it between rounds;
``admit`` refuses a device whose battery is empty and that is not plugged in, and a
device that runs flat during an instruction loses its reply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Error, Message, MetricRecord
from flwr.common.constant import ErrorCode

from edge_client.protocol import keys as k
from simulation.battery import FleetBatteries
from simulation.carbon.accounting import CarbonLedger, RegionMix, assign_regions
from simulation.devices import (
    ClientTiming,
    DeviceMix,
    DeviceProfile,
    MessageKind,
    assign_devices,
    client_energy_kwh,
    client_timing,
    draw_slowdown,
    get_profile,
    relative_speed,
)
from strategies.selection import NodeStatus

START_HOUR = 9.0  # the simulated run starts at 09:00 local time on day 0
LOW_BATTERY = 0.2  # battery_low counts levels under this (battery-aware's default floor)


def payload_bytes(message: Message) -> int:
    """Bytes of the arrays a message carries (what dominates it on the wire)."""
    if message.has_error():
        return 0
    return sum(
        len(array.data)
        for record in message.content.array_records.values()
        for array in record.values()
    )


@dataclass
class FleetStats:
    """Counters since the last :meth:`SimulatedFleet.take_stats`."""

    instructions: int = 0
    offline: int = 0
    dropped: int = 0
    timed_out: int = 0
    battery_empty: int = 0
    ran_flat: int = 0
    bytes_down: int = 0
    bytes_up: int = 0
    seconds: list[float] = field(default_factory=list)


class SimulatedFleet:
    """Device assignment, availability, dropouts and timing for ``num_nodes`` clients.

    Node ``node_id_base + i`` is client ``i``; its profile comes from ``mix`` by
    :func:`simulation.devices.assign_devices`. ``task`` selects the profiles' compute
    times (an unknown task uses their defaults).
    """

    def __init__(
        self,
        *,
        mix: DeviceMix,
        num_nodes: int,
        node_id_base: int,
        task: str,
        seed: int,
        start_hour: float = START_HOUR,
        round_hours: float = 0.0,
        regions: RegionMix | None = None,
        carbon: CarbonLedger | None = None,
    ) -> None:
        if not 0.0 <= start_hour < 24.0:
            raise ValueError("start_hour must be in [0, 24)")
        if not (round_hours >= 0 and math.isfinite(round_hours)):
            raise ValueError("round_hours must be >= 0")
        self.mix = mix
        self.task = task
        self.seed = seed
        self.start_hour = start_hour
        self.now_s = 0.0
        self._base = node_id_base
        self._num_nodes = num_nodes
        names = assign_devices(num_nodes, mix, seed=seed)
        self._profiles: list[DeviceProfile] = [get_profile(n) for n, _ in mix]
        index = {name: i for i, (name, _) in enumerate(mix)}
        self._kind = np.array([index[n] for n in names], dtype=np.int16)
        self._count: dict[int, int] = {}
        self._stats = FleetStats()
        self._online: tuple[int, list[int]] | None = None
        self._deferred: set[int] = set()  # nodes to drop at their next message
        self.round_hours = round_hours
        self.carbon = carbon
        self._regions: list[str | None] = (
            list(assign_regions(num_nodes, regions, seed=seed))
            if regions is not None
            else [get_profile(n).region for n in names]
        )
        if carbon is not None:
            self._check_carbon(carbon)
        self.batteries = FleetBatteries([get_profile(n).battery for n in names], seed=seed)

    def _check_carbon(self, carbon: CarbonLedger) -> None:
        """Refuse, before round 1, regions the trace lacks and profiles without watts."""
        for profile in self._profiles:
            if profile.train_w is None or profile.idle_w is None:
                raise ValueError(
                    f"device profile {profile.name!r} has no [power] train-w and idle-w; "
                    "add them to use --carbon-trace"
                )
        for region in sorted({r or "" for r in self._regions}):
            if not region:
                raise ValueError(
                    "some clients have no grid region; give --regions or a [power] region "
                    "in their device profiles"
                )
            if region not in carbon.trace.intensities:
                raise ValueError(carbon.trace.unknown_region(region) + " (check --regions)")

    # -- who is who --------------------------------------------------------------------
    def _index(self, node_id: int) -> int:
        i = node_id - self._base
        if not 0 <= i < self._num_nodes:
            raise ValueError(f"no simulated node with id {node_id}")
        return i

    def profile_of(self, node_id: int) -> DeviceProfile:
        """The device profile of ``node_id``."""
        return self._profiles[int(self._kind[self._index(node_id)])]

    def region_of(self, node_id: int) -> str | None:
        """The grid region ``node_id`` draws power from (``None``: not known)."""
        return self._regions[self._index(node_id)]

    def carbon_intensity(self, node_id: int) -> float | None:
        """g CO2/kWh of the node's grid now (``None`` without a carbon trace)."""
        region = self.region_of(node_id)
        if self.carbon is None or region is None:
            return None
        return self.carbon.trace.intensity(region, self._slot())

    def counts(self) -> dict[str, int]:
        """How many clients have each profile."""
        values, counts = np.unique(self._kind, return_counts=True)
        return {self._profiles[int(v)].name: int(c) for v, c in zip(values, counts, strict=True)}

    # -- time and availability -------------------------------------------------------
    def hour_of_day(self) -> float:
        """Local time of day at the current simulated time, in hours [0, 24)."""
        return (self.start_hour + self.now_s / 3600.0) % 24.0

    def _slot(self) -> int:
        """The hour of the run the simulated clock is in (availability is drawn per hour)."""
        return math.floor((self.start_hour * 3600.0 + self.now_s) / 3600.0)

    def online(self, node_id: int) -> bool:
        """Whether the device is online now: one draw per (node, hour of the run)."""
        i = self._index(node_id)
        u = np.random.default_rng([self.seed, i, self._slot(), 0xA7A1]).random()
        return bool(u < self.profile_of(node_id).availability_at(self.hour_of_day()))

    def online_nodes(self) -> list[int]:
        """The nodes online now, as a SuperLink would list them (those connected);
        drawn once per hour of the run."""
        slot = self._slot()
        if self._online is None or self._online[0] != slot:
            nodes = range(self._base, self._base + self._num_nodes)
            self._online = (slot, [n for n in nodes if self.online(n)])
        return list(self._online[1])

    def next_hour(self) -> None:
        """Move the simulated clock to the start of the next hour (a server that waits
        for devices to come online waits in simulated time)."""
        self.advance_to((self._slot() + 1) * 3600.0 - self.start_hour * 3600.0)

    def telemetry(self, node_id: int) -> NodeStatus:
        """What a fleet's telemetry would say about the device now (a
        ``strategies.selection.TelemetrySource`` for device-aware selection)."""
        battery, charging = self.batteries.status(self._index(node_id), self._slot())
        return NodeStatus(
            available=self.online(node_id)
            and not self.batteries.empty(self._index(node_id), self._slot()),
            battery=battery,
            charging=charging,
            speed=relative_speed(self.profile_of(node_id), self.task),
            region=self.region_of(node_id),
            carbon_intensity=self.carbon_intensity(node_id),
            power_w=self.profile_of(node_id).train_w,
        )

    # -- one instruction ---------------------------------------------------------------
    def _draws(self, node_id: int) -> tuple[float, float]:
        """(dropout uniform, compute slowdown) of the node's current instruction."""
        i = self._index(node_id)
        rng = np.random.default_rng([self.seed, i, self._count.get(node_id, 0), 0xD209])
        return float(rng.random()), draw_slowdown(self.profile_of(node_id), rng)

    def admit(self, message: Message, *, can_drop: bool = True) -> str | None:
        """``None`` if the device receives and completes ``message``, else why not.

        ``can_drop=False``: the device must not be lost at this message (a SecAgg+
        setup or key-sharing one, :mod:`simulation.secaggplus_stages`); it completes it,
        and a dropout drawn now happens at its next message that allows one."""
        node = message.metadata.dst_node_id
        self._count[node] = self._count.get(node, 0) + 1
        self._stats.instructions += 1
        if not can_drop:
            self._stats.bytes_down += payload_bytes(message)
            if self._draws(node)[0] < self.profile_of(node).dropout:
                self._deferred.add(node)
            return None
        if node in self._deferred:
            self._deferred.discard(node)
            self._stats.dropped += 1
            return f"simulated device {node} ({self.profile_of(node).name}) dropped out"
        if not self.online(node):
            self._stats.offline += 1
            return f"simulated device {node} ({self.profile_of(node).name}) is offline"
        if self.batteries.empty(self._index(node), self._slot()):
            self._stats.battery_empty += 1
            return f"simulated device {node} ({self.profile_of(node).name}) has an empty battery"
        self._stats.bytes_down += payload_bytes(message)
        u, _ = self._draws(node)
        if u < self.profile_of(node).dropout:
            self._stats.dropped += 1
            return f"simulated device {node} ({self.profile_of(node).name}) dropped out"
        return None

    def duration_s(self, message: Message, reply: Message) -> float:
        """Seconds the device took for ``message`` → ``reply`` (download to upload)."""
        return self.timing(message, reply).total_s

    def timing(self, message: Message, reply: Message) -> ClientTiming:
        """Compute and transfer seconds of ``message`` → ``reply`` on the device."""
        node = message.metadata.dst_node_id
        kind: MessageKind = (
            "train" if message.metadata.message_type.startswith("train") else ("evaluate")
        )
        _, slowdown = self._draws(node)
        return client_timing(
            self.profile_of(node),
            task=self.task,
            num_examples=_metric_int(reply, k.NUM_EXAMPLES),
            model_bytes=payload_bytes(message),
            upload_bytes=payload_bytes(reply),
            epochs=_config_int(message, k.LOCAL_EPOCHS, default=1),
            kind=kind,
            slowdown=slowdown,
        )

    def count_late(self) -> None:
        """Count a reply that missed the server's timeout (it never arrived)."""
        self._stats.timed_out += 1

    def stamp(self, message: Message, reply: Message, *, write: bool = True) -> Message:
        """Time a successful reply; with ``write``, put the simulated seconds on it
        (``sim-seconds``)."""
        if reply.has_error():
            return reply
        timing = self.timing(message, reply)
        seconds = timing.total_s
        node = message.metadata.dst_node_id
        if self.carbon is not None:
            self.carbon.charge(
                node_id=node,
                region=str(self.region_of(node)),
                hour=self._slot(),
                energy_kwh=client_energy_kwh(self.profile_of(node), timing),
            )
        if self.profile_of(node).battery is not None:
            joules = client_energy_kwh(self.profile_of(node), timing) * 3.6e6
            if self.batteries.drain(self._index(node), joules, self._slot()):
                self._stats.ran_flat += 1
                reason = f"simulated device {node} ({self.profile_of(node).name}) ran flat"
                return Message(
                    Error(code=ErrorCode.NODE_UNAVAILABLE, reason=reason), reply_to=message
                )
        self._stats.bytes_up += payload_bytes(reply)
        self._stats.seconds.append(seconds)
        if not write:
            return reply
        records = reply.content.metric_records
        record = records.get(k.METRICS) or next(iter(records.values()), None)
        if record is None:
            record = MetricRecord()
            reply.content[k.METRICS] = record
        record[k.SIM_SECONDS] = seconds
        return reply

    # -- reporting ---------------------------------------------------------------------
    def take_stats(self) -> dict[str, float]:
        """Per-round keys for metrics.json, and reset the counters.

        ``sim_hour`` (time of day at the round's start), ``offline`` and ``dropped``
        (instructions that never came back), ``timed_out`` (replies past a server's timeout,
        third-party apps only), ``bytes_down``/``bytes_up`` (array payload
        bytes sent to and received from devices), ``sim_median_s``/``sim_slowest_s``
        (device durations of the replies that came back: the stragglers); with a carbon
        ledger, ``energy_kwh`` and ``co2_g`` (the round's total over its clients); with
        batteries, ``battery_empty`` (instructions refused: battery at 0, not plugged in),
        ``ran_flat`` (replies lost: the battery ran out during the instruction),
        ``battery_low`` (battery devices online now under 20%, not charging: those
        ``--selection battery-aware`` skips at its default ``min-battery``) and
        ``battery_mean`` (mean state of charge).
        """
        s = self._stats
        stats: dict[str, float] = {
            "sim_hour": round(self.hour_of_day(), 3),
            "offline": float(s.offline),
            "dropped": float(s.dropped),
            "timed_out": float(s.timed_out),
            "bytes_down": float(s.bytes_down),
            "bytes_up": float(s.bytes_up),
        }
        if self.carbon is not None:
            stats.update(self.carbon.take_round())
        if self.batteries.any:
            stats.update(self._battery_stats(s))
        if s.seconds:
            stats["sim_median_s"] = float(np.median(s.seconds))
            stats["sim_slowest_s"] = float(max(s.seconds))
        self._stats = FleetStats()
        return stats

    def _battery_stats(self, s: FleetStats) -> dict[str, float]:
        slot = self._slot()
        levels = self.batteries.level[~np.isnan(self.batteries.level)]
        low = sum(
            1
            for i, spec in enumerate(self.batteries.specs)
            if spec is not None
            and self.batteries.level[i] < LOW_BATTERY
            and not self.batteries.plugged(i, slot)
            and self.online(self._base + i)
        )
        return {
            "battery_empty": float(s.battery_empty),
            "ran_flat": float(s.ran_flat),
            "battery_low": float(low),
            "battery_mean": round(float(levels.mean()), 4),
        }

    def end_round(self, server_round: int, sim_time_s: float | None) -> None:
        """After ``server_round``: move the clock to the coordinator's simulated time, and
        to the next round's scheduled start (``round_hours`` after the first round's)."""
        scheduled = server_round * self.round_hours * 3600.0
        self.advance_to(max(scheduled, sim_time_s or 0.0))

    def advance_to(self, sim_time_s: float) -> None:
        """Set the simulated clock (never backwards); batteries charge or drain meanwhile."""
        new = max(self.now_s, float(sim_time_s))
        self.batteries.advance(self.now_s, new, start_hour=self.start_hour)
        self.now_s = new


def _metric_int(reply: Message, key: str) -> int:
    for record in reply.content.metric_records.values():
        value = record.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return max(0, int(value))
    return 0


def _config_int(message: Message, key: str, *, default: int) -> int:
    for record in message.content.config_records.values():
        value = record.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return max(1, value)
    return default
