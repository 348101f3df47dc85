"""Low-cost selection with a participation floor: carbon-aware and battery-aware.

Both selectors choose the round's clients in two passes over the available nodes
(telemetry says ``available``):

1. **Floor.** Every group (``NodeStatus.region``; nodes without one form the group
   ``"-"``) gets ``min_per_group`` of its available nodes: those chosen longest ago
   (never chosen first), the cheapest among equals — the floor is for the group's data,
   so it rotates through the group's members. When the round has fewer slots than
   groups × floor, the groups served longest ago go first, so with ``G`` groups and
   ``count`` slots each group is served at least once every ``⌈G·min_per_group /
   count⌉`` rounds.
2. **Preference.** The remaining slots go to the cheapest nodes overall, among nodes not
   chosen in the last ``rest_rounds`` rounds (relaxed, cheapest first, when too few
   remain). Without a rest the few cheapest nodes trained every round and the model
   lost the others' data: bench/carbon.py (3 seeds) measured final accuracy 1.3 points
   below random's with no rest; rest 1: +0.7 points and 47% less CO2 to the target;
   rest 2: −0.2 points, 39% less; a rest that keeps every node at or below uniform
   sampling's rate (4 rounds there): +0.3 points but only 20% less.

The cost is what the selector prefers to avoid; ties are broken at random, reproducibly
from ``(seed, round)``, so equally cheap nodes take turns:

- :class:`CarbonAwareSelector`: the grams a round of training there is expected to
  emit, up to a common factor: the node's grid intensity now (g CO2/kWh,
  ``NodeStatus.carbon_intensity``; unknown = the most expensive known) × its training
  watts / its relative speed (``power_w``, ``speed``; each 1 when unknown), i.e. ×
  the joules per example. The idea of
  shifting federated work to low-carbon clients and hours is FedZero's (Wiesner et al.,
  "FedZero: Leveraging Renewable Excess Energy in Federated Learning", e-Energy 2024);
  the floor keeps every group's data in the model.
- :class:`BatteryAwareSelector`: charging devices first, then the fullest batteries
  (``NodeStatus.charging``, ``battery``); a battery below ``min_battery`` that is not
  charging is not chosen, not even for the floor, unless too few others are available.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from strategies.selection import NodeStatus, TelemetrySource, over_selected

NO_GROUP = "-"


@dataclass
class _FloorSelector:
    """Shared two-pass selection; subclasses define :meth:`_costs` and :meth:`_eligible`."""

    clients_per_round: int
    seed: int
    over_select: float = 0.0
    min_per_group: int = 1
    telemetry: TelemetrySource | None = None
    rest_rounds: int = 1
    last_served: dict[str, int] = field(default_factory=dict)
    last_chosen: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.min_per_group < 0:
            raise ValueError("min-per-group must be >= 0 (0: no participation floor)")
        if self.rest_rounds < 0:
            raise ValueError("rest-rounds must be >= 0 (0: the cheapest nodes every round)")

    def select(self, server_round: int, node_ids: Sequence[int]) -> list[int]:
        count = over_selected(self.clients_per_round, self.over_select)
        return self.select_count(server_round, node_ids, count)

    def select_count(self, server_round: int, node_ids: Sequence[int], count: int) -> list[int]:
        ordered = sorted(int(n) for n in node_ids)
        status = {n: self._status(n) for n in ordered}
        nodes = self._eligible([n for n in ordered if status[n].available], status, count)
        if not nodes:
            return []
        rng = np.random.default_rng([self.seed, server_round, 0xCA2B0])
        costs = self._costs(nodes, status)
        tiebreak = rng.random(len(nodes))
        rank = {n: (float(c), float(t)) for n, c, t in zip(nodes, costs, tiebreak, strict=True)}
        by_cost = sorted(nodes, key=rank.__getitem__)
        chosen = self._floor(by_cost, status, rank, count)
        taken = set(chosen)
        rested = [
            n
            for n in by_cost
            if n not in taken
            and server_round - self.last_chosen.get(n, -(10**9)) > self.rest_rounds
        ]
        tired = [n for n in by_cost if n not in taken and n not in set(rested)]
        chosen.extend([*rested, *tired][: max(0, count - len(chosen))])
        for n in chosen:
            self.last_served[status[n].region or NO_GROUP] = server_round
            self.last_chosen[n] = server_round
        return sorted(chosen)

    def _floor(
        self,
        by_cost: list[int],
        status: dict[int, NodeStatus],
        rank: dict[int, tuple[float, float]],
        count: int,
    ) -> list[int]:
        """Pass 1: ``min_per_group`` nodes of each group, least recently chosen first."""
        if not self.min_per_group:
            return []
        groups: dict[str, list[int]] = {}
        for n in sorted(by_cost, key=lambda n: (self.last_chosen.get(n, -(10**9)), rank[n])):
            groups.setdefault(status[n].region or NO_GROUP, []).append(n)
        order = sorted(
            groups,
            key=lambda g: (self.last_served.get(g, -(10**9)), min(rank[n] for n in groups[g]), g),
        )
        chosen: list[int] = []
        for g in order:
            room = count - len(chosen)
            if room <= 0:
                break
            chosen.extend(groups[g][: min(self.min_per_group, room)])
        return chosen

    def _status(self, node_id: int) -> NodeStatus:
        status = self.telemetry(node_id) if self.telemetry is not None else None
        return status or NodeStatus()

    def _eligible(
        self, available: list[int], status: dict[int, NodeStatus], count: int
    ) -> list[int]:
        return available

    def _costs(self, nodes: list[int], status: dict[int, NodeStatus]) -> np.ndarray:
        raise NotImplementedError


@dataclass
class CarbonAwareSelector(_FloorSelector):
    """Prefer nodes on low-carbon grids now, with a per-group participation floor."""

    def _costs(self, nodes: list[int], status: dict[int, NodeStatus]) -> np.ndarray:
        values = [status[n].carbon_intensity for n in nodes]
        known: list[float] = [v for v in values if v is not None and math.isfinite(v)]
        unknown = max(known, default=0.0)
        intensity = np.array(
            [v if v is not None and math.isfinite(v) else unknown for v in values],
            dtype=np.float64,
        )
        return intensity * np.array([_joules_per_unit(status[n]) for n in nodes])


def _joules_per_unit(status: NodeStatus) -> float:
    """Watts / relative speed: energy per unit of work, up to a common factor."""
    watts = status.power_w if status.power_w is not None and status.power_w > 0 else 1.0
    speed = status.speed if status.speed is not None and status.speed > 0 else 1.0
    return watts / speed


@dataclass
class BatteryAwareSelector(_FloorSelector):
    """Prefer charging devices, then full batteries; skip low batteries not charging."""

    min_battery: float = 0.2

    def _low(self, s: NodeStatus) -> bool:
        return s.battery is not None and s.battery < self.min_battery and not s.charging

    def _eligible(
        self, available: list[int], status: dict[int, NodeStatus], count: int
    ) -> list[int]:
        ok = [n for n in available if not self._low(status[n])]
        return ok if len(ok) >= count else available  # too few: relax, as device-aware does

    def _costs(self, nodes: list[int], status: dict[int, NodeStatus]) -> np.ndarray:
        costs = []
        for n in nodes:
            s = status[n]
            if s.charging:
                costs.append(0.0)
            else:  # 1 (full) .. 2 (empty); an unknown battery counts as half full
                costs.append(2.0 - (s.battery if s.battery is not None else 0.5))
        return np.array(costs, dtype=np.float64)
