"""Who trains: client selectors, over-selection and the round deadline.

Selectors implement the round loop's ``Selector`` protocol
(``select(server_round, node_ids) -> list[int]``) plus ``select_count`` (choose
exactly ``count`` of the given nodes), which the buffered asynchronous exchange uses
to top up the clients in flight.

- :class:`RandomSelector`: uniform, reproducible from ``(seed, round)``.
- :class:`DeviceAwareSelector`: skips unavailable devices, low batteries that are not
  charging and recently failed clients (exponential back-off), then samples the rest
  with probability proportional to expected speed × reliability — from the device's
  profile (telemetry) when known, else from the seconds it took before.
- Over-selection (Bonawitz et al., "Towards Federated Learning at Scale", MLSys 2019):
  start ``⌈k·(1+o)⌉`` clients and keep the first ``k`` that finish.
- :class:`RoundDeadline`: a reply filter that ends a synchronous round at the
  ``k``-th arrival or at the deadline, in the simulated seconds clients report.

Quorum is the loop's ``min_clients``: below it a round is not applied.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from tasks.run_config import as_number

if TYPE_CHECKING:  # annotations only: validating --selection must not load Flower
    from flwr.app import Message

SIM_SECONDS_KEY = "sim-seconds"  # reply metric with a client's simulated train+upload seconds
# Run-config keys parsed by SelectionConfig.from_run_config.
RC_SELECTION = "selection"  # random | device-aware | carbon-aware | battery-aware
RC_OVER_SELECT = "over-select"  # fraction of extra clients to start, >= 0
RC_DEADLINE_S = "deadline-s"  # round deadline in simulated seconds, 0 = none
RC_MIN_BATTERY = "min-battery"  # state of charge in [0, 1]
RC_MIN_PER_GROUP = "min-per-group"  # participation floor of carbon/battery-aware selection
RC_REST_ROUNDS = "rest-rounds"  # rounds a node chosen by preference rests (carbon/battery)
SelectionMode = Literal["random", "device-aware", "carbon-aware", "battery-aware"]
SELECTION_MODES: tuple[SelectionMode, ...] = (
    "random",
    "device-aware",
    "carbon-aware",
    "battery-aware",
)


@dataclass(frozen=True)
class NodeStatus:
    """What telemetry says about a device now; ``None`` where it says nothing.

    ``battery`` is the state of charge in [0, 1]; ``speed`` the device profile's
    training speed relative to a reference device (2.0 = twice as fast); ``region`` the
    grid region (or any group) it belongs to; ``carbon_intensity`` its grid's g CO2/kWh now;
    ``power_w`` its draw while training, in watts.
    """

    available: bool = True
    battery: float | None = None
    charging: bool | None = None
    speed: float | None = None
    region: str | None = None
    carbon_intensity: float | None = None
    power_w: float | None = None


TelemetrySource = Callable[[int], NodeStatus | None]
"""Node id → its latest status (e.g. from the fleet's telemetry), or ``None``."""


class CountSelector(Protocol):
    """A selector that can also choose an exact number of nodes."""

    clients_per_round: int

    def select(self, server_round: int, node_ids: Sequence[int]) -> list[int]: ...

    def select_count(self, server_round: int, node_ids: Sequence[int], count: int) -> list[int]: ...


def over_selected(target: int, fraction: float) -> int:
    """``⌈target · (1 + fraction)⌉``: how many clients to start to get ``target``."""
    if target < 1 or fraction < 0:
        raise ValueError("over-selection needs target >= 1 and fraction >= 0")
    return math.ceil(target * (1.0 + fraction) - 1e-9)


@dataclass
class RandomSelector:
    """``clients_per_round`` (over-selected) clients uniformly, reproducible from
    ``(seed, round)`` — the same draw as the loop's ``UniformSelector``."""

    clients_per_round: int
    seed: int
    over_select: float = 0.0

    def select(self, server_round: int, node_ids: Sequence[int]) -> list[int]:
        count = over_selected(self.clients_per_round, self.over_select)
        return self.select_count(server_round, node_ids, count)

    def select_count(self, server_round: int, node_ids: Sequence[int], count: int) -> list[int]:
        ordered = sorted(node_ids)
        k = min(count, len(ordered))
        rng = np.random.default_rng([self.seed, server_round, 0x5E1EC7])
        return sorted(int(ordered[i]) for i in rng.choice(len(ordered), size=k, replace=False))


@dataclass
class NodeHistory:
    """What the coordinator has seen a node do."""

    consecutive_failures: int = 0
    last_failure_round: int = -(10**9)
    seconds_ema: float | None = None  # smoothed train+upload seconds it reported


def weighted_sample(weights: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``count`` draws without replacement, probability ∝ ``weights``
    (Efraimidis & Spirakis 2006: the largest keys ``u^(1/w)``)."""
    keys = np.log(rng.random(len(weights))) / np.maximum(weights, 1e-12)
    return np.argsort(-keys, kind="stable")[:count]


@dataclass
class DeviceAwareSelector:
    """Device-aware selection with availability, battery, failure back-off and speed.

    Hard rule: a node telemetry reports unavailable is never chosen. Soft rules, relaxed
    in this order when too few nodes pass: a node that failed recently is skipped for
    ``cooldown_rounds · 2^(consecutive failures − 1)`` rounds (capped at 32×); a
    battery below ``min_battery`` that is not charging is skipped. Among the rest,
    nodes are drawn with probability ∝ ``speed^speed_power / (1 + consecutive
    failures)``; a node never seen has the median speed, so new devices get tried.
    ``observe`` is a reply filter (put it last) that learns from each round.
    """

    clients_per_round: int
    seed: int
    over_select: float = 0.0
    min_battery: float = 0.2
    cooldown_rounds: int = 2
    speed_power: float = 1.0
    outstanding_rounds: int = 0
    telemetry: TelemetrySource | None = None
    seconds_key: str = SIM_SECONDS_KEY
    history: dict[int, NodeHistory] = field(default_factory=dict)
    _outstanding: dict[int, int] = field(default_factory=dict)
    _last_stats: dict[str, float] = field(default_factory=dict)

    def select(self, server_round: int, node_ids: Sequence[int]) -> list[int]:
        count = over_selected(self.clients_per_round, self.over_select)
        return self.select_count(server_round, node_ids, count)

    def select_count(self, server_round: int, node_ids: Sequence[int], count: int) -> list[int]:
        ordered = sorted(int(n) for n in node_ids)
        status = {n: self._status(n) for n in ordered}
        available = [n for n in ordered if status[n].available]
        cooling = {n for n in available if self._cooling(n, server_round)}
        low = {n for n in available if self._low_battery(status[n])}
        eligible = [n for n in available if n not in cooling and n not in low]
        # Relax the soft rules in order until enough nodes are eligible.
        for relaxed in (sorted(cooling - low), sorted(low)):
            if len(eligible) >= count:
                break
            eligible = sorted({*eligible, *relaxed})
        k = min(count, len(eligible))
        rng = np.random.default_rng([self.seed, server_round, 0xDE71CE])
        chosen = sorted(
            eligible[i] for i in weighted_sample(self._weights(eligible, status), k, rng)
        )
        self._last_stats = {
            "unavailable": float(len(ordered) - len(available)),
            "skipped_low_battery": float(len(low - set(chosen))),
            "skipped_cooldown": float(len(cooling - set(chosen))),
        }
        for n in chosen:
            self._outstanding[n] = server_round
        return chosen

    def _status(self, node_id: int) -> NodeStatus:
        status = self.telemetry(node_id) if self.telemetry is not None else None
        return status or NodeStatus()

    def _low_battery(self, status: NodeStatus) -> bool:
        return (
            status.battery is not None and status.battery < self.min_battery and not status.charging
        )

    def _cooling(self, node_id: int, server_round: int) -> bool:
        h = self.history.get(node_id)
        if h is None or h.consecutive_failures == 0:
            return False
        backoff = self.cooldown_rounds * 2 ** min(h.consecutive_failures - 1, 5)
        return server_round - h.last_failure_round <= backoff

    def _weights(self, nodes: list[int], status: Mapping[int, NodeStatus]) -> np.ndarray:
        observed = {
            n: 1.0 / h.seconds_ema
            for n, h in self.history.items()
            if h.seconds_ema is not None and h.seconds_ema > 0
        }
        prior = float(np.median(list(observed.values()))) if observed else 1.0
        speeds = []
        for n in nodes:
            profile = status[n].speed
            speeds.append(profile if profile is not None else observed.get(n, prior))
        s = np.asarray(speeds, dtype=np.float64)
        s = s / (np.median(s) if len(s) and np.median(s) > 0 else 1.0)
        failures = np.array(
            [self.history.get(n, NodeHistory()).consecutive_failures for n in nodes]
        )
        return np.power(np.maximum(s, 1e-6), self.speed_power) / (1.0 + failures)

    def observe(
        self, server_round: int, replies: list[Message]
    ) -> tuple[list[Message], dict[str, float]]:
        """Reply filter: learn successes (and their seconds) and failures; keep all."""
        for reply in replies:
            node = reply.metadata.src_node_id
            self._outstanding.pop(node, None)
            h = self.history.setdefault(node, NodeHistory())
            h.consecutive_failures = 0
            seconds = _reply_seconds(reply, self.seconds_key)
            if seconds is not None and seconds > 0:
                h.seconds_ema = (
                    seconds if h.seconds_ema is None else 0.7 * h.seconds_ema + 0.3 * seconds
                )
        failed = [
            n for n, r in self._outstanding.items() if server_round - r >= self.outstanding_rounds
        ]
        for node in failed:
            del self._outstanding[node]
            h = self.history.setdefault(node, NodeHistory())
            h.consecutive_failures += 1
            h.last_failure_round = server_round
        stats = dict(self._last_stats)
        stats["selection_failed"] = float(len(failed))
        return replies, stats


def _reply_seconds(reply: Message, key: str) -> float | None:
    if reply.has_error():
        return None
    for metrics in reply.content.metric_records.values():
        value = metrics.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


@dataclass
class RoundDeadline:
    """Reply filter for synchronous rounds on a simulated clock.

    Each reply reports the simulated seconds its client took (``seconds_key``). The
    round keeps the first ``target`` replies that arrive by ``deadline_s`` (``None``:
    no deadline) and lasts until the ``target``-th arrival, else until the deadline
    (or the last arrival). Records ``late`` (after the deadline), ``surplus``
    (over-selected replies not needed), ``sim_round_s`` and the running ``sim_time_s``.
    Replies without the key (a real deployment) pass through untimed.
    """

    target: int
    deadline_s: float | None = None
    seconds_key: str = SIM_SECONDS_KEY
    sim_time_s: float = 0.0

    def filter(
        self, server_round: int, replies: list[Message]
    ) -> tuple[list[Message], dict[str, float]]:
        timed = [(_reply_seconds(r, self.seconds_key), r) for r in replies]
        if any(s is None for s, _ in timed):
            return replies, {}
        arrivals = sorted(
            ((float(s), r) for s, r in timed if s is not None),
            key=lambda sr: (sr[0], sr[1].metadata.src_node_id),
        )
        on_time = [(s, r) for s, r in arrivals if self.deadline_s is None or s <= self.deadline_s]
        kept = on_time[: self.target]
        if len(kept) == self.target:
            round_s = kept[-1][0] if kept else 0.0
        elif self.deadline_s is not None and len(on_time) < len(arrivals):
            round_s = self.deadline_s
        else:
            round_s = arrivals[-1][0] if arrivals else (self.deadline_s or 0.0)
        self.sim_time_s += round_s
        stats = {
            "late": float(len(arrivals) - len(on_time)),
            "surplus": float(len(on_time) - len(kept)),
            "sim_round_s": round_s,
            "sim_time_s": self.sim_time_s,
        }
        return sorted((r for _, r in kept), key=lambda m: m.metadata.src_node_id), stats


@dataclass(frozen=True)
class SelectionConfig:
    """Selection settings from the run config: ``selection`` (random | device-aware |
    carbon-aware | battery-aware), ``over-select`` (fraction ≥ 0), ``deadline-s``
    (simulated seconds, 0 = none), ``min-battery`` (state of charge in [0, 1]),
    ``min-per-group`` (clients each group gets per round under carbon- or
    battery-aware selection, ≥ 0), ``rest-rounds`` (rounds before their preference
    pass may choose a node again, ≥ 0)."""

    mode: SelectionMode = "random"
    over_select: float = 0.0
    deadline_s: float | None = None
    min_battery: float = 0.2
    min_per_group: int = 1
    rest_rounds: int = 1

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> SelectionConfig:
        mode = str(run_config.get(RC_SELECTION, "random"))
        if mode not in SELECTION_MODES:
            raise ValueError(f"unknown selection {mode!r}; choose {' | '.join(SELECTION_MODES)}")
        over = _number(run_config, RC_OVER_SELECT, 0.0)
        deadline = _number(run_config, RC_DEADLINE_S, 0.0)
        battery = _number(run_config, RC_MIN_BATTERY, 0.2)
        floor = _number(run_config, RC_MIN_PER_GROUP, 1)
        if floor < 0 or floor != int(floor):
            raise ValueError("min-per-group must be a whole number >= 0 (0: no floor)")
        rest = _number(run_config, RC_REST_ROUNDS, 1)
        if rest < 0 or rest != int(rest):
            raise ValueError("rest-rounds must be a whole number >= 0")
        if over < 0:
            raise ValueError("over-select must be >= 0 (0.3 starts 30% more clients)")
        if deadline < 0:
            raise ValueError("deadline-s must be >= 0 simulated seconds (0: no deadline)")
        if not 0 <= battery <= 1:
            raise ValueError("min-battery must be a state of charge between 0 and 1")
        return cls(
            mode=mode,  # type: ignore[arg-type]
            over_select=over,
            deadline_s=deadline or None,
            min_battery=battery,
            min_per_group=int(floor),
            rest_rounds=int(rest),
        )


def _number(run_config: Mapping[str, Any], key: str, default: float) -> float:
    value: float = as_number(key, run_config.get(key, default))
    if not math.isfinite(value):
        raise ValueError(f"run config {key} must be finite")
    return value
