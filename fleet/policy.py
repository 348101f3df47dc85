"""Promotion policies: the one home of their TOML format, its meaning and its validation.

A promotion policy says, for one device group, what a finished run must pass before its
model goes to the group's devices (``[gates]``), which hardware targets bundles are
built for (``targets``), how it goes out (``[canary]``: cumulative waves, soak time, abort
thresholds), how its bundles are signed (``[signing]``: a key the fleet holds, or an
operator's approval), and how often drift may start a retraining run (``[retrain]``).
``docs/policies.md`` is the format for people; a test parses its full example.

This module checks everything a file can get wrong by itself (types, ranges, unknown
keys) and raises :class:`PolicyError` with one line that names the key and the fix. What
only the fleet can know (the group exists, its devices have those targets, the fleet can
read the key) is checked by the fleet when the policy is applied (``fleet/crud/policies.py``).

Units are in the key names: accuracies and rates are fractions in [0, 1]; accuracy drops
are percentage points in [0, 100], like the bundle gate of ``firmware_images/targets``;
durations are seconds. Standard library only: the CLI parses a file before sending it.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import Any, Literal

import tomllib

#: The only operator-approval mode today: signing waits for ``fedfleet policy approve``.
APPROVAL_OPERATOR = "operator"
MAX_POLICY_BYTES = 64 * 1024
MAX_WAVES = 20
MAX_SOAK_S = 7 * 86400.0
MAX_COOLDOWN_S = 30 * 86400.0
MAX_RUNS_PER_DAY = 24


class PolicyError(ValueError):
    """A policy file is wrong; ``str(err)`` is one line that says how to fix it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Gates:
    """What a finished run must pass. ``None``: that gate is not applied."""

    min_accuracy: float  # fraction in [0, 1], the run's final accuracy
    max_epsilon: float | None = None  # the run's DP epsilon; None: no privacy gate
    max_fairness_gap: float | None = None  # metrics.json fairness.max_gap, where measured
    max_bundle_accuracy_drop_points: float = 1.0  # the bundle build's accuracy gate

    def failures(
        self, *, accuracy: float | None, epsilon: float | None, fairness_gap: float | None
    ) -> list[str]:
        """Why a finished run does not pass these gates (empty: it passes), one reason each.

        ``accuracy`` is the run's final accuracy (None: it reported none, which fails);
        ``epsilon`` its DP epsilon (None: no DP, which fails a privacy gate);
        ``fairness_gap`` its ``fairness.max_gap`` (None: not measured, which passes).
        The bundle accuracy drop is the bundle build's own gate.
        """
        reasons = []
        if accuracy is None or not accuracy >= self.min_accuracy:
            reasons.append(f"accuracy {_show(accuracy)} is below the gate {self.min_accuracy:g}")
        if self.max_epsilon is not None and (epsilon is None or not epsilon <= self.max_epsilon):
            reasons.append(f"epsilon {_show(epsilon)} is above the gate {self.max_epsilon:g}")
        gap_gate = self.max_fairness_gap
        if gap_gate is not None and fairness_gap is not None and not fairness_gap <= gap_gate:
            reasons.append(f"fairness gap {_show(fairness_gap)} is above the gate {gap_gate:g}")
        return reasons


def _show(value: float | None) -> str:
    return "(not reported)" if value is None else f"{value:g}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Canary:
    """How a promoted model goes out: cumulative ``waves`` (percent of the group, ending
    at 100), ``soak_s`` seconds of watching each wave, and the thresholds that abort."""

    waves: tuple[int, ...] = (1, 10, 50, 100)
    soak_s: float = 600.0
    max_install_failure_rate: float = 0.1  # failed fraction of a wave
    # Quality regressions against devices still on the previous version
    # (fleet/ota/canary_quality.py):
    max_latency_ratio: float = 1.5  # canary p95 latency / previous version's
    max_accuracy_drop_points: float = 2.0  # where labels come back
    max_error_rate: float = 0.01  # inference errors per inference
    max_prediction_shift: float = 0.25  # total variation of predicted classes, [0, 1]
    min_quality_devices: int = 2  # devices with data per side before a signal counts
    min_quality_samples: int = 200  # labelled samples / inferences per side

    def rollout_fields(self) -> dict[str, Any]:
        """The ``RolloutCreate`` fields (and ``create_rollout`` keywords) this canary
        sets: waves, install failure rate, soak and quality thresholds."""
        return {
            "waves": list(self.waves),
            "max_failure_rate": self.max_install_failure_rate,
            "soak_s": self.soak_s,
            "max_latency_ratio": self.max_latency_ratio,
            "max_accuracy_drop_points": self.max_accuracy_drop_points,
            "max_error_rate": self.max_error_rate,
            "max_prediction_shift": self.max_prediction_shift,
            "min_quality_devices": self.min_quality_devices,
            "min_quality_samples": self.min_quality_samples,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Signing:
    """Exactly one of ``key`` (absolute path of an Ed25519 private key the fleet reads)
    and ``approval`` (``"operator"``: bundles wait for ``fedfleet policy approve``)."""

    key: str | None = None
    approval: Literal["operator"] | None = None

    @property
    def mode(self) -> Literal["key", "approval"]:
        return "key" if self.key is not None else "approval"


@dataclass(frozen=True, slots=True, kw_only=True)
class Retrain:
    """Drift-triggered retraining under this policy (parsed now, used by the controller)."""

    enabled: bool = False
    cooldown_s: float = 6 * 3600.0  # after a run starts, none before this many seconds
    max_runs_per_day: int = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """One group's promotion policy (see the module docstring)."""

    group: str
    targets: tuple[str, ...]
    gates: Gates
    signing: Signing
    canary: Canary = field(default_factory=Canary)
    retrain: Retrain = field(default_factory=Retrain)
    # The task whose new model versions this policy promotes; None: the tasks the group's
    # devices already run (a group with no model yet needs it).
    task: str | None = None

    def to_document(self) -> dict[str, Any]:
        """The policy as JSON-ready data with the TOML file's shape (what the API serves)."""
        doc = asdict(self)
        doc["targets"] = list(self.targets)
        doc["canary"]["waves"] = list(self.canary.waves)
        doc["gates"] = {k: v for k, v in doc["gates"].items() if v is not None}
        doc["signing"] = {k: v for k, v in doc["signing"].items() if v is not None}
        if self.task is None:
            del doc["task"]
        return doc


def parse_policy(text: str, *, source: str = "<policy>") -> Policy:
    """Parse and check a policy file's text; :class:`PolicyError` names what to fix."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_POLICY_BYTES:
        raise PolicyError(f"{source}: a policy file is at most {MAX_POLICY_BYTES} bytes")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise PolicyError(f"{source} is not valid TOML: {err}") from None
    return policy_from_document(data, source=source)


def policy_from_document(data: dict[str, Any], *, source: str = "<policy>") -> Policy:
    """Build a :class:`Policy` from parsed TOML (or a stored document), checking each key."""
    top = _Table(data, source, "")
    # A misspelt table ([gatez]) is named as such, not as the table it leaves missing.
    top.read.update(("group", "targets", "gates", "canary", "signing", "retrain", "task"))
    top.done()
    group = top.slug("group")
    task = top.slug("task") if top.data.get("task") is not None else None
    targets = top.targets("targets")
    gates = _gates(top.table("gates", required=True))
    canary = _canary(top.table("canary"))
    signing = _signing(top.table("signing", required=True))
    retrain = _retrain(top.table("retrain"))
    top.done()
    return Policy(
        group=group,
        targets=targets,
        gates=gates,
        canary=canary,
        signing=signing,
        retrain=retrain,
        task=task,
    )


def _gates(t: _Table) -> Gates:
    gates = Gates(
        min_accuracy=t.number("min_accuracy", 0.0, 1.0, required=True, example="0.9") or 0.0,
        max_epsilon=t.number("max_epsilon", 0.0, 1e6, low_open=True, example="8.0"),
        max_fairness_gap=t.number("max_fairness_gap", 0.0, 1.0, example="0.1"),
        max_bundle_accuracy_drop_points=t.number(
            "max_bundle_accuracy_drop_points", 0.0, 100.0, default=1.0, example="1.0"
        )
        or 0.0,
    )
    t.done()
    return gates


def _canary(t: _Table) -> Canary:
    base = Canary()
    canary = Canary(
        waves=t.waves("waves", default=base.waves),
        soak_s=t.require(t.number("soak_s", 0.0, MAX_SOAK_S, default=base.soak_s)),
        max_install_failure_rate=t.require(
            t.number("max_install_failure_rate", 0.0, 1.0, default=base.max_install_failure_rate)
        ),
        max_latency_ratio=t.require(
            t.number(
                "max_latency_ratio", 1.0, 1000.0, default=base.max_latency_ratio, example="1.5"
            )
        ),
        max_accuracy_drop_points=t.require(
            t.number("max_accuracy_drop_points", 0.0, 100.0, default=base.max_accuracy_drop_points)
        ),
        max_error_rate=t.require(t.number("max_error_rate", 0.0, 1.0, default=base.max_error_rate)),
        max_prediction_shift=t.require(
            t.number("max_prediction_shift", 0.0, 1.0, default=base.max_prediction_shift)
        ),
        min_quality_devices=t.integer(
            "min_quality_devices", 2, 100_000, default=base.min_quality_devices
        ),
        min_quality_samples=t.integer(
            "min_quality_samples", 1, 10_000_000, default=base.min_quality_samples
        ),
    )
    t.done()
    return canary


def _signing(t: _Table) -> Signing:
    key = t.string("key")
    approval = t.string("approval")
    t.done()
    if (key is None) == (approval is None):
        raise PolicyError(
            f'{t.where}: set exactly one of key = "/path/to/signing.key" (the fleet signs) '
            f'or approval = "{APPROVAL_OPERATOR}" (signing waits for `fedfleet policy approve`)'
        )
    if approval is not None and approval != APPROVAL_OPERATOR:
        raise PolicyError(f'{t.where}.approval must be "{APPROVAL_OPERATOR}", not {approval!r}')
    if key is not None and not PurePosixPath(key).is_absolute():
        raise PolicyError(
            f"{t.where}.key must be an absolute path on the fleet's host (the fleet reads it), "
            f"not {key!r}"
        )
    return Signing(key=key, approval="operator" if approval is not None else None)


def _retrain(t: _Table) -> Retrain:
    base = Retrain()
    retrain = Retrain(
        enabled=t.boolean("enabled", default=base.enabled),
        cooldown_s=t.require(t.number("cooldown_s", 0.0, MAX_COOLDOWN_S, default=base.cooldown_s)),
        max_runs_per_day=t.integer("max_runs_per_day", 0, MAX_RUNS_PER_DAY, base.max_runs_per_day),
    )
    t.done()
    return retrain


class _Table:
    """One TOML table being read: typed getters with one-line errors, unknown keys refused."""

    def __init__(self, data: Any, source: str, name: str) -> None:
        self.where = f"{source} [{name}]" if name else source
        if not isinstance(data, dict):
            raise PolicyError(f"{self.where} must be a table, e.g. [{name}]")
        self.data: dict[str, Any] = data
        self.source = source
        self.name = name
        self.read: set[str] = set()

    def _get(self, key: str) -> Any:
        self.read.add(key)
        return self.data.get(key)

    def _key(self, key: str) -> str:
        return f"{self.where}: {key}"

    def table(self, key: str, *, required: bool = False) -> _Table:
        value = self._get(key)
        if value is None and required:
            raise PolicyError(f"{self.where}: the [{key}] table is missing; see docs/policies.md")
        return _Table({} if value is None else value, self.source, key)

    def slug(self, key: str) -> str:
        from fleet.models.common import SLUG_PATTERN  # one home of the group-name rule

        value = self._get(key)
        if not isinstance(value, str) or not re.fullmatch(SLUG_PATTERN, value):
            what, example = (
                ("a task", "digits-cnn") if key == "task" else ("a device group", "ward-3")
            )
            raise PolicyError(f'{self._key(key)} must name {what}, e.g. {key} = "{example}"')
        return value

    def targets(self, key: str) -> tuple[str, ...]:
        value = self._get(key)
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(v, str) and v for v in value)
        ):
            raise PolicyError(
                f"{self._key(key)} must be a non-empty list of hardware targets, e.g. {key} = "
                '["rpi5", "cpu-x86"]'
            )
        if len(set(value)) != len(value):
            raise PolicyError(f"{self._key(key)} names a target twice; list each once")
        return tuple(value)

    def string(self, key: str) -> str | None:
        value = self._get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise PolicyError(f"{self._key(key)} must be a non-empty string")
        return value

    def boolean(self, key: str, *, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise PolicyError(f"{self._key(key)} must be true or false")
        return value

    def integer(self, key: str, low: int, high: int, default: int) -> int:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise PolicyError(f"{self._key(key)} must be a whole number in {low}..{high}")
        return value

    def number(
        self,
        key: str,
        low: float,
        high: float,
        *,
        default: float | None = None,
        required: bool = False,
        low_open: bool = False,
        example: str = "",
    ) -> float | None:
        value = self._get(key)
        if value is None:
            if required:
                raise PolicyError(
                    f"{self._key(key)} is missing; add {key} = {example or low} to the "
                    f"[{self.name}] table"
                )
            return default
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        number = float(value) if ok else math.nan
        in_range = (low < number if low_open else low <= number) and number <= high
        if not ok or not math.isfinite(number) or not in_range:
            bracket = "(" if low_open else "["
            raise PolicyError(
                f"{self._key(key)} = {value!r} is out of range: use a number in "
                f"{bracket}{low:g}, {high:g}]" + (f", e.g. {example}" if example else "")
            )
        return number

    @staticmethod
    def require(value: float | None) -> float:
        # Keys with a default never come back None; this keeps the types precise.
        if value is None:  # pragma: no cover - unreachable with a default
            raise PolicyError("internal: a defaulted key came back empty")
        return value

    def waves(self, key: str, *, default: tuple[int, ...]) -> tuple[int, ...]:
        value = self._get(key)
        if value is None:
            return default
        example = "e.g. waves = [1, 10, 50, 100]"
        if (
            not isinstance(value, list)
            or not 1 <= len(value) <= MAX_WAVES
            or any(isinstance(w, bool) or not isinstance(w, int) for w in value)
        ):
            raise PolicyError(
                f"{self._key(key)} must be a list of 1..{MAX_WAVES} whole percentages, {example}"
            )
        if any(not 1 <= w <= 100 for w in value):
            raise PolicyError(f"{self._key(key)}: each wave is a percentage in 1..100, {example}")
        if any(b <= a for a, b in itertools.pairwise(value)) or value[-1] != 100:
            raise PolicyError(f"{self._key(key)} = {value} must increase and end at 100, {example}")
        return tuple(value)

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.read)
        if unknown:
            known = ", ".join(sorted(self.read))
            raise PolicyError(
                f"{self.where}: unknown key '{unknown[0]}'; known keys here: {known} "
                "(see docs/policies.md)"
            )
