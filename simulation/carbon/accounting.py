"""Energy and CO2 of simulated clients: which grid region each client draws from, and a
ledger that charges each instruction's energy at its region's intensity in that hour.

Energy per instruction is :func:`simulation.devices.client_energy_kwh` (``train-w`` ×
compute seconds + ``idle-w`` × transfer seconds, from the profile's ``[power]``); CO2 is
that energy × the trace's g CO2/kWh of the client's region in the simulated hour the
round started in. Instructions a device never completed (offline, dropped out) are not
charged. Per round the ledger gives ``energy_kwh`` and ``co2_g`` (the round's total
over its clients); per run, :meth:`CarbonLedger.section` is metrics.json's ``carbon``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from simulation.carbon.trace import CarbonTrace

RegionMix = tuple[tuple[str, float], ...]
CarbonSource = Literal["estimated", "codecarbon"]


def parse_region_mix(text: str) -> RegionMix:
    """Parse ``--regions``: ``REGION=FRACTION,...`` summing to 1, or one region name."""
    hint = "use e.g. --regions FR=0.2,SE=0.2,GB=0.2,DE=0.2,PL=0.2"
    items = [part.strip() for part in text.split(",") if part.strip()]
    if not items:
        raise ValueError(f"--regions is empty; {hint}")
    if len(items) == 1 and "=" not in items[0]:
        return ((items[0], 1.0),)
    mix: dict[str, float] = {}
    for item in items:
        name, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not name:
            raise ValueError(f"--regions item {item!r} is not REGION=FRACTION; {hint}")
        if name in mix:
            raise ValueError(f"--regions names {name!r} twice; {hint}")
        try:
            fraction = float(value)
        except ValueError:
            raise ValueError(f"--regions {name}={value!r}: the fraction must be a number") from None
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"--regions {name}={value}: the fraction must be in (0, 1]")
        mix[name] = fraction
    total = sum(mix.values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"--regions fractions sum to {total:g}, not 1; {hint}")
    return tuple(mix.items())


def assign_regions(num_clients: int, mix: RegionMix, *, seed: int) -> list[str]:
    """Each client's region: exact shares (largest remainder), shuffled by ``seed``
    independently of the device assignment."""
    quotas = [fraction * num_clients for _, fraction in mix]
    counts = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(mix)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in by_remainder[: num_clients - sum(counts)]:
        counts[i] += 1
    names = [name for (name, _), count in zip(mix, counts, strict=True) for _ in range(count)]
    order = np.random.default_rng([seed, 0xC0_2E61]).permutation(num_clients)
    return [names[i] for i in order]


@dataclass
class RegionTotals:
    """What one region's clients spent."""

    energy_kwh: float = 0.0
    co2_g: float = 0.0
    client_rounds: int = 0


@dataclass
class CarbonLedger:
    """Running energy and CO2 totals of a run, per round and per region.

    ``selection`` and ``source`` only label the run's ``carbon`` section.
    """

    trace: CarbonTrace
    selection: str = "random"
    source: CarbonSource = "estimated"
    per_region: dict[str, RegionTotals] = field(default_factory=dict)
    _round_energy_kwh: float = 0.0
    _round_co2_g: float = 0.0
    _round_clients: set[tuple[str, int]] = field(default_factory=set)

    def charge(self, *, node_id: int, region: str, hour: int, energy_kwh: float) -> float:
        """Book ``energy_kwh`` spent by ``node_id`` in ``region`` during simulated hour
        ``hour``; returns the grams of CO2 it emitted."""
        co2_g = energy_kwh * self.trace.intensity(region, hour)
        totals = self.per_region.setdefault(region, RegionTotals())
        totals.energy_kwh += energy_kwh
        totals.co2_g += co2_g
        if (region, node_id) not in self._round_clients:
            self._round_clients.add((region, node_id))
            totals.client_rounds += 1
        self._round_energy_kwh += energy_kwh
        self._round_co2_g += co2_g
        return co2_g

    def take_round(self) -> dict[str, float]:
        """The finished round's ``energy_kwh`` and ``co2_g``, and start the next round."""
        stats = {"energy_kwh": self._round_energy_kwh, "co2_g": self._round_co2_g}
        self._round_energy_kwh, self._round_co2_g = 0.0, 0.0
        self._round_clients.clear()
        return stats

    def section(self) -> dict[str, Any]:
        """metrics.json's ``carbon`` object (totals over the run so far)."""
        regions = {
            name: {
                "energy_kwh": t.energy_kwh,
                "co2_g": t.co2_g,
                "client_rounds": t.client_rounds,
            }
            for name, t in sorted(self.per_region.items())
        }
        return {
            "energy_kwh": sum(t.energy_kwh for t in self.per_region.values()),
            "co2_g": sum(t.co2_g for t in self.per_region.values()),
            "selection": self.selection,
            "trace": self.trace.name,
            "per_region": regions,
            "source": self.source,
        }
