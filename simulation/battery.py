"""Simulated batteries: a device profile's ``[battery]`` model on the simulated clock.

A profile with a ``[battery]`` table (``simulation/devices/*.toml``) gives each of its
clients a battery:

- ``capacity-wh``: capacity in Wh (default: ``[power] battery-wh``; must be > 0);
- ``start-level = [LO, HI]``: the state of charge at 09:00 on day 0, uniform in
  ``[LO, HI]`` per client (default ``[1.0, 1.0]``);
- ``plugged``: 24 probabilities, one per hour of the local day, that the device is on a
  charger in that hour (drawn once per client and hour of the run, like availability);
- ``charge-w``: watts into the battery while plugged (default 10);
- ``use-w``: the owner's own draw while unplugged (screen, apps; default 0).

The clock drains a battery by each completed instruction's energy (``train-w`` ×
compute seconds + ``idle-w`` × transfer seconds, :func:`simulation.devices.client_energy_kwh`)
unless it is plugged in that hour, and between instructions charges it by ``charge-w``
(plugged) or drains it by ``use-w`` (unplugged), hour by hour. Levels stay in [0, 1].
A battery at 0 that is not plugged in cannot train (the fleet refuses the instruction);
one that runs out during an instruction loses its reply.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

HOURLY = 24


@dataclass(frozen=True)
class BatterySpec:
    """A profile's battery model (see the module docstring for the TOML keys)."""

    capacity_wh: float
    start_level: tuple[float, float] = (1.0, 1.0)
    plugged: tuple[float, ...] = (0.0,) * HOURLY
    charge_w: float = 10.0
    use_w: float = 0.0

    def __post_init__(self) -> None:
        if not (self.capacity_wh > 0 and math.isfinite(self.capacity_wh)):
            raise ValueError(
                f"battery.capacity-wh must be a positive number, got {self.capacity_wh!r}"
            )
        lo, hi = self.start_level
        if not (0.0 <= lo <= hi <= 1.0):
            raise ValueError(
                f"battery.start-level must be [LO, HI] with 0 <= LO <= HI <= 1, got {[lo, hi]}"
            )
        if len(self.plugged) != HOURLY or not all(0.0 <= p <= 1.0 for p in self.plugged):
            raise ValueError("battery.plugged needs 24 probabilities in [0, 1] (00:00 .. 23:00)")
        for key, watts in (("charge-w", self.charge_w), ("use-w", self.use_w)):
            if not (watts >= 0 and math.isfinite(watts)):
                raise ValueError(f"battery.{key} must be a number of watts >= 0, got {watts!r}")

    @classmethod
    def from_table(cls, table: Mapping[str, Any], *, default_capacity_wh: float) -> BatterySpec:
        """Parse a ``[battery]`` table; unknown keys are refused (a typo would be silent)."""
        known = {"capacity-wh", "start-level", "plugged", "charge-w", "use-w"}
        extra = sorted(set(table) - known)
        if extra:
            raise ValueError(
                f"[battery] has unknown key(s) {', '.join(extra)}; known: {sorted(known)}"
            )
        start = table.get("start-level", [1.0, 1.0])
        if not isinstance(start, list) or len(start) != 2:
            raise ValueError("battery.start-level must be a list [LO, HI]")
        plugged = table.get("plugged", [0.0] * HOURLY)
        if not isinstance(plugged, list):
            raise ValueError("battery.plugged must be a list of 24 probabilities")
        return cls(
            capacity_wh=float(table.get("capacity-wh", default_capacity_wh)),
            start_level=(float(start[0]), float(start[1])),
            plugged=tuple(float(p) for p in plugged),
            charge_w=float(table.get("charge-w", 10.0)),
            use_w=float(table.get("use-w", 0.0)),
        )


class FleetBatteries:
    """The batteries of a simulated fleet: client ``i`` has ``specs[i]`` (``None``: mains).

    ``slot`` arguments are hours of the run (hour 0 = 00:00 of day 0), as
    :meth:`simulation.fleet.SimulatedFleet._slot` counts them.
    """

    def __init__(self, specs: Sequence[BatterySpec | None], *, seed: int) -> None:
        self.specs = list(specs)
        self.seed = seed
        rng = np.random.default_rng([seed, 0xBA77])
        draws = rng.random(len(self.specs))
        self.level = np.full(len(self.specs), np.nan)
        self._with_battery = [i for i, spec in enumerate(self.specs) if spec is not None]
        for i, spec in enumerate(self.specs):
            if spec is not None:
                lo, hi = spec.start_level
                self.level[i] = lo + (hi - lo) * draws[i]

    @property
    def any(self) -> bool:
        """Whether any client has a battery."""
        return bool(self._with_battery)

    def plugged(self, i: int, slot: int) -> bool:
        """Whether client ``i`` is on a charger in hour ``slot`` of the run."""
        spec = self.specs[i]
        if spec is None:
            return False
        u = np.random.default_rng([self.seed, i, slot, 0xC4A6]).random()
        return bool(u < spec.plugged[slot % HOURLY])

    def status(self, i: int, slot: int) -> tuple[float | None, bool | None]:
        """(state of charge, charging) as telemetry reports it; ``(None, None)``: mains."""
        if self.specs[i] is None:
            return None, None
        return float(self.level[i]), self.plugged(i, slot)

    def empty(self, i: int, slot: int) -> bool:
        """A battery at 0 that is not plugged in: the device cannot train."""
        return self.specs[i] is not None and self.level[i] <= 0.0 and not self.plugged(i, slot)

    def drain(self, i: int, joules: float, slot: int) -> bool:
        """Take an instruction's ``joules`` (none while plugged); ``True``: it ran flat."""
        spec = self.specs[i]
        if spec is None or self.plugged(i, slot):
            return False
        need = joules / (spec.capacity_wh * 3600.0)
        flat = bool(need > self.level[i])
        self.level[i] = max(0.0, float(self.level[i]) - need)
        return flat

    def advance(self, from_s: float, to_s: float, *, start_hour: float) -> None:
        """Charge (plugged) or drain by ``use-w`` (unplugged) from ``from_s`` to ``to_s``
        simulated seconds (since ``start_hour`` on day 0), hour by hour."""
        if to_s <= from_s or not self._with_battery:
            return
        t0 = start_hour * 3600.0 + from_s
        t1 = start_hour * 3600.0 + to_s
        spans: list[tuple[int, float]] = []
        t = t0
        while t < t1:
            slot = math.floor(t / 3600.0)
            end = min(t1, (slot + 1) * 3600.0)
            spans.append((slot, end - t))
            t = end
        for i in self._with_battery:
            spec = self.specs[i]
            if spec is None:  # pragma: no cover - _with_battery lists only batteries
                continue
            level = float(self.level[i])
            for slot, seconds in spans:
                watts = spec.charge_w if self.plugged(i, slot) else -spec.use_w
                level = min(1.0, max(0.0, level + watts * seconds / (spec.capacity_wh * 3600.0)))
            self.level[i] = level
