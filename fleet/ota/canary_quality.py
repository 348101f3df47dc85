"""Is the canary wave's model worse than the one it replaces? Pure math, no state.

The rollout controller (:mod:`fleet.ota.controller`) gathers, per device, the quality
signals devices report (docs/device-protocol.md, "Quality signals"): the **canary** side
is the rollout's devices that installed the new version (their reports naming it, since
their install), the **baseline** side the group's devices still on the previous version
(same period). :func:`compare` says, per signal, whether the canary regressed beyond the
rollout's thresholds:

- **accuracy** (where labels come back): the drop ``p_baseline - p_canary`` in points
  regresses when it exceeds ``max_accuracy_drop_points`` **and** is significant: its
  one-sided lower confidence bound (two-proportion normal interval, ``z`` = 2.326: 99 %)
  is above 0 — a model no worse than the previous one is aborted by sampling noise at
  most 1 % of the time. (Requiring the *bound* above the limit would need ~4x the labels
  to halt a model 3 points worse against a 2-point limit: measured in docs/decisions.md.)
- **latency**: the ratio of the sides' inference-weighted mean of window p95 latencies
  exceeds ``max_latency_ratio``;
- **errors**: the Wilson lower bound (``z``) of the canary's inference error rate exceeds
  ``max_error_rate`` (an absolute rate: a failing model needs no baseline);
- **predictions**: the total variation distance (0..1) between the canary's
  predicted-class distribution and a reference exceeds ``max_prediction_shift``. The
  reference is the new version's own **reference prediction distribution** when it has
  one (its predicted classes on the accuracy gate's held-out set, stored when the
  promotion controller built its bundle: ``model_versions.reference_predictions``), else
  the baseline devices' live traffic on the previous version; the finding's detail (and
  so the halt reason on the timeline) says which. A stored reference is one fixed
  distribution, not devices: it needs no baseline devices and is never left out.

Every signal needs ``min_devices`` devices (with data for it) and ``min_labelled`` labelled
samples / ``min_inferences`` inferences on each side it uses; otherwise it is *not
measured* (never a regression). And a regression must **hold with any one device left
out**, of either side (on the ``min_devices - 1`` devices left): one device's reports
alone — a liar, a broken sensor — cannot abort a rollout (docs/security.md). With the
default ``min_devices`` of 2, a canary of two devices aborts only when each of them shows
the regression on its own.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

Signal = Literal["accuracy", "latency", "errors", "predictions"]
SIGNALS: tuple[Signal, ...] = ("accuracy", "latency", "errors", "predictions")
Z_99 = 2.326  # one-sided 99 % normal quantile


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceQuality:
    """One device's quality signals for one model version over the comparison period.

    ``inferences`` answered samples and ``errors`` failed calls; ``latency_p95_ms`` the
    inference-weighted mean of its windows' p95 latency (ms); ``labelled`` labelled samples
    of which ``correct`` were predicted right; ``predictions`` samples per predicted class.
    """

    device_id: str
    inferences: int = 0
    errors: int = 0
    latency_p95_ms: float = 0.0
    labelled: int = 0
    correct: int = 0
    predictions: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if min(self.inferences, self.errors, self.labelled, self.correct) < 0:
            raise ValueError(f"device {self.device_id}: counts must be non-negative")
        if self.correct > self.labelled:
            raise ValueError(f"device {self.device_id}: correct exceeds labelled")
        if not (math.isfinite(self.latency_p95_ms) and self.latency_p95_ms >= 0):
            raise ValueError(f"device {self.device_id}: latency must be finite and >= 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class QualityThresholds:
    """What counts as a regression (None: that signal is not checked) and how much
    evidence a verdict needs (per side)."""

    max_accuracy_drop_points: float | None = None
    max_latency_ratio: float | None = None
    max_error_rate: float | None = None
    max_prediction_shift: float | None = None
    min_devices: int = 2
    min_labelled: int = 200
    min_inferences: int = 200
    z: float = Z_99

    def __post_init__(self) -> None:
        checks = (
            (self.max_accuracy_drop_points, 0.0, 100.0, "max_accuracy_drop_points", "2.0"),
            (self.max_latency_ratio, 1.0, 1000.0, "max_latency_ratio", "1.5"),
            (self.max_error_rate, 0.0, 1.0, "max_error_rate", "0.01"),
            (self.max_prediction_shift, 0.0, 1.0, "max_prediction_shift", "0.25"),
        )
        for value, low, high, name, example in checks:
            if value is not None and not (math.isfinite(value) and low <= value <= high):
                raise ValueError(f"{name} must be in {low:g}..{high:g}, e.g. {example}")
        if self.min_devices < 2:
            raise ValueError("min_devices must be at least 2 (one device never decides)")
        if self.min_labelled < 1 or self.min_inferences < 1:
            raise ValueError("min_labelled and min_inferences must be at least 1, e.g. 200")
        if not (math.isfinite(self.z) and 0 < self.z <= 10):
            raise ValueError("z must be in (0, 10], e.g. 2.326 (one-sided 99 %)")

    @property
    def enabled(self) -> bool:
        """Whether any signal is checked."""
        return any(
            v is not None
            for v in (
                self.max_accuracy_drop_points,
                self.max_latency_ratio,
                self.max_error_rate,
                self.max_prediction_shift,
            )
        )


@dataclass(frozen=True, slots=True)
class Finding:
    """One signal's outcome: ``value`` (None: not measured), ``limit``, and whether it
    ``regressed`` (held with any one device left out)."""

    signal: Signal
    value: float | None
    limit: float
    regressed: bool
    detail: str


@dataclass(frozen=True, slots=True)
class QualityVerdict:
    """The findings of every checked signal."""

    findings: tuple[Finding, ...]

    @property
    def regressed(self) -> bool:
        return any(f.regressed for f in self.findings)

    @property
    def reason(self) -> str:
        """One line naming the regressed signals (empty when none)."""
        return "; ".join(f.detail for f in self.findings if f.regressed)

    @property
    def measured(self) -> bool:
        """Whether every checked signal had enough evidence."""
        return all(f.value is not None for f in self.findings)


@dataclass(slots=True)
class _Totals:
    """One side's pooled sums (devices counted per signal they have data for)."""

    inferences: int = 0
    errors: int = 0
    calls_devices: int = 0  # devices with inferences or errors
    latency_weighted: float = 0.0
    labelled: int = 0
    correct: int = 0
    labelled_devices: int = 0
    predictions: Counter[str] = field(default_factory=Counter)

    def add(self, d: DeviceQuality, sign: int = 1) -> None:
        self.inferences += sign * d.inferences
        self.errors += sign * d.errors
        self.calls_devices += sign * (d.inferences + d.errors > 0)
        self.latency_weighted += sign * d.inferences * d.latency_p95_ms
        self.labelled += sign * d.labelled
        self.correct += sign * d.correct
        self.labelled_devices += sign * (d.labelled > 0)
        for k, v in d.predictions.items():
            self.predictions[k] += sign * v

    def copy(self) -> _Totals:
        return _Totals(
            self.inferences,
            self.errors,
            self.calls_devices,
            self.latency_weighted,
            self.labelled,
            self.correct,
            self.labelled_devices,
            Counter(self.predictions),
        )


def _pooled(devices: Iterable[DeviceQuality]) -> _Totals:
    totals = _Totals()
    for d in devices:
        totals.add(d)
    return totals


def wilson_lower(successes: int, trials: int, z: float) -> float:
    """Wilson score interval's lower bound of a proportion (0 when ``trials`` is 0)."""
    if trials <= 0:
        return 0.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = p + z * z / (2 * trials)
    margin = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return max(0.0, (centre - margin) / denominator)


def accuracy_drop_lower_points(
    *, correct_canary: int, labelled_canary: int, correct_base: int, labelled_base: int, z: float
) -> tuple[float, float]:
    """``(drop, lower)`` in points: the observed accuracy drop and its one-sided lower
    confidence bound (normal approximation of the two-proportion difference)."""
    pc, pb = correct_canary / labelled_canary, correct_base / labelled_base
    se = math.sqrt(pc * (1 - pc) / labelled_canary + pb * (1 - pb) / labelled_base)
    drop = pb - pc
    return 100.0 * drop, 100.0 * (drop - z * se)


def total_variation(a: Mapping[str, int], b: Mapping[str, int]) -> float:
    """Total variation distance (0..1) of two count distributions (0 if either is empty)."""
    na, nb = sum(v for v in a.values() if v > 0), sum(v for v in b.values() if v > 0)
    if na <= 0 or nb <= 0:
        return 0.0
    keys = set(a) | set(b)
    return 0.5 * sum(abs(max(a.get(k, 0), 0) / na - max(b.get(k, 0), 0) / nb) for k in keys)


# One signal on pooled sums: (value or None when not measured, regressed, detail).
_Outcome = tuple[float | None, bool, str]
# ``need``: devices each side must have (``min_devices``; one fewer with one left out).
_Check = Callable[[_Totals, _Totals, QualityThresholds, float, int], _Outcome]


def _accuracy(c: _Totals, b: _Totals, t: QualityThresholds, limit: float, need: int) -> _Outcome:
    if (
        min(c.labelled_devices, b.labelled_devices) < need
        or min(c.labelled, b.labelled) < t.min_labelled
    ):
        return None, False, ""
    drop, lower = accuracy_drop_lower_points(
        correct_canary=c.correct,
        labelled_canary=c.labelled,
        correct_base=b.correct,
        labelled_base=b.labelled,
        z=t.z,
    )
    detail = (
        f"accuracy {100 * c.correct / c.labelled:.1f}% vs {100 * b.correct / b.labelled:.1f}% "
        f"on the previous version: {drop:.1f} points lower (limit {limit:g}; at least "
        f"{lower:.1f} at z={t.z:g}; {c.labelled} vs {b.labelled} labelled samples)"
    )
    return drop, drop > limit and lower > 0, detail


def _latency(c: _Totals, b: _Totals, t: QualityThresholds, limit: float, need: int) -> _Outcome:
    if (
        min(c.calls_devices, b.calls_devices) < need
        or min(c.inferences, b.inferences) < t.min_inferences
    ):
        return None, False, ""
    pc, pb = c.latency_weighted / c.inferences, b.latency_weighted / b.inferences
    if pb <= 0:
        return None, False, ""
    ratio = pc / pb
    detail = f"latency p95 {pc:.2f} ms vs {pb:.2f} ms: {ratio:.2f}x (limit {limit:g}x)"
    return ratio, ratio > limit, detail


def _errors(c: _Totals, _b: _Totals, t: QualityThresholds, limit: float, need: int) -> _Outcome:
    calls = c.inferences + c.errors
    if c.calls_devices < need or calls < t.min_inferences:
        return None, False, ""
    rate = c.errors / calls
    lower = wilson_lower(c.errors, calls, t.z)
    detail = (
        f"inference errors {rate:.2%} of {calls} calls (at least {lower:.2%}; limit {limit:.2%})"
    )
    return rate, lower > limit, detail


def _predictions(c: _Totals, b: _Totals, t: QualityThresholds, limit: float, need: int) -> _Outcome:
    if (
        min(c.calls_devices, b.calls_devices) < need
        or min(sum(c.predictions.values()), sum(b.predictions.values())) < t.min_inferences
    ):
        return None, False, ""
    shift = total_variation(c.predictions, b.predictions)
    detail = (
        f"prediction distribution shifted by {shift:.3f} from the previous version's live "
        f"traffic (total variation; limit {limit:g})"
    )
    return shift, shift > limit, detail


def _predictions_vs(reference: Mapping[str, int]) -> _Check:
    """The predictions check against a version's stored reference distribution: the
    canary side alone needs devices and inferences; the reference needs samples."""
    samples = sum(v for v in reference.values() if v > 0)

    def check(c: _Totals, _b: _Totals, t: QualityThresholds, limit: float, need: int) -> _Outcome:
        if c.calls_devices < need or sum(c.predictions.values()) < t.min_inferences or not samples:
            return None, False, ""
        shift = total_variation(c.predictions, reference)
        detail = (
            f"prediction distribution shifted by {shift:.3f} from the version's reference "
            f"({samples} held-out samples; total variation; limit {limit:g})"
        )
        return shift, shift > limit, detail

    return check


_CHECKS: dict[Signal, _Check] = {
    "accuracy": _accuracy,
    "latency": _latency,
    "errors": _errors,
    "predictions": _predictions,
}


def _limit(t: QualityThresholds, signal: Signal) -> float | None:
    return {
        "accuracy": t.max_accuracy_drop_points,
        "latency": t.max_latency_ratio,
        "errors": t.max_error_rate,
        "predictions": t.max_prediction_shift,
    }[signal]


def _holds_without_any_one(
    check: _Check,
    canary: Sequence[DeviceQuality],
    baseline: Sequence[DeviceQuality],
    pooled: tuple[_Totals, _Totals],
    t: QualityThresholds,
    limit: float,
) -> bool:
    """Whether the regression still shows with each single device left out (O(devices):
    each leave-one-out subtracts one device from the pooled sums)."""
    c_all, b_all = pooled
    for side, devices in ((0, canary), (1, baseline)):
        for d in devices:
            less = (c_all if side == 0 else b_all).copy()
            less.add(d, -1)
            c, b = (less, b_all) if side == 0 else (c_all, less)
            value, regressed, _ = check(c, b, t, limit, t.min_devices - 1)
            if value is None or not regressed:
                return False
    return True


def compare(
    canary: Sequence[DeviceQuality],
    baseline: Sequence[DeviceQuality],
    thresholds: QualityThresholds,
    *,
    reference: Mapping[str, int] | None = None,
) -> QualityVerdict:
    """The canary's findings against the baseline for every signal with a threshold;
    predictions against ``reference`` (the new version's stored reference prediction
    distribution) when given and not empty, else against the baseline's."""
    pooled = (_pooled(canary), _pooled(baseline))
    findings = []
    for signal in SIGNALS:
        limit = _limit(thresholds, signal)
        if limit is None:
            continue
        check, others = _CHECKS[signal], baseline
        if signal == "predictions" and reference:
            check, others = _predictions_vs(reference), ()  # nothing to leave out there
        value, regressed, detail = check(*pooled, thresholds, limit, thresholds.min_devices)
        if regressed:
            regressed = _holds_without_any_one(check, canary, others, pooled, thresholds, limit)
        findings.append(
            Finding(
                signal=signal,
                value=value,
                limit=limit,
                regressed=regressed,
                detail=detail if value is not None else f"{signal}: not enough data yet",
            )
        )
    return QualityVerdict(findings=tuple(findings))
