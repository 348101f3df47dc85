"""Input drift: the Population Stability Index per feature against the training reference.

Pure functions, no state. The training reference (:class:`fleet.models.ota.Reference`,
stored with the admin app's models, built by :mod:`fleet.drift_reference`) is, per
feature, the interior edges of ``n_bins`` quantile bins of the training inputs and the
fraction of training samples in each bin. Devices count their inputs in the same bins (the edges travel in the install
command), so the fleet only ever sees counts, never inputs.

PSI (Siddiqi, *Credit Risk Scorecards*, 2006; statistical properties in Yurdakul,
"Statistical Properties of Population Stability Index", 2018)::

    PSI = sum_i (a_i - e_i) * ln(a_i / e_i)

over bins, with expected fractions ``e`` and actual fractions ``a`` (both floored at
``eps`` so an empty bin stays finite). Rule of thumb: < 0.1 stable, 0.1–0.25 moderate
shift, > 0.25 significant shift; a device drifts when one feature's PSI exceeds 0.2 by
default.

**Agreement** (:func:`agreeing`): one device's counts can be forged, so the fleet raises
an event for a (model version, group) only when enough devices drift *each on its own
window*: at least ``min_devices`` of them and at least ``min_share`` of the devices the
fleet has on record as running that version in the group (:class:`AgreementRule`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fleet.drift_reference import DEFAULT_BINS, bin_counts, reference_from_data
from fleet.models.ota import Reference

__all__ = [
    "DEFAULT_BINS",
    "AgreementRule",
    "agreeing",
    "bin_counts",
    "psi",
    "psi_per_feature",
    "reference_from_data",
]
DEFAULT_THRESHOLD = 0.2
EPS = 1e-4
DEFAULT_MIN_DEVICES = 3
DEFAULT_MIN_SHARE = 0.2
DEFAULT_MIN_SAMPLES = 100


@dataclass(frozen=True, kw_only=True)
class AgreementRule:
    """When the devices' separate verdicts make a drift event.

    Attributes:
        threshold: A device drifts when its largest per-feature PSI exceeds this.
        min_devices: At least this many devices must drift (>= 1).
        min_share: And at least this fraction (0..1] of the devices running the model
            version in the group (the fleet's record, not the telemetry's claim).
        min_samples: A device's window counts only with at least this many inputs in
            every feature's bins; below it the device is not scored (but still counted
            in the population).
    """

    threshold: float = DEFAULT_THRESHOLD
    min_devices: int = DEFAULT_MIN_DEVICES
    min_share: float = DEFAULT_MIN_SHARE
    min_samples: int = DEFAULT_MIN_SAMPLES

    def __post_init__(self) -> None:
        if not self.threshold > 0 or self.threshold != self.threshold:
            raise ValueError(f"drift threshold must be positive, got {self.threshold}")
        if self.min_devices < 1:
            raise ValueError(f"drift min_devices must be at least 1, got {self.min_devices}")
        if not 0 < self.min_share <= 1:
            raise ValueError(f"drift min_share must be in (0, 1], got {self.min_share}")
        if self.min_samples < 1:
            raise ValueError(f"drift min_samples must be at least 1, got {self.min_samples}")


def agreeing(
    scores: Mapping[str, float], *, population: int, rule: AgreementRule
) -> list[str] | None:
    """The devices whose score exceeds ``rule.threshold``, sorted, when they are at least
    ``rule.min_devices`` and at least ``rule.min_share`` of ``population`` (the devices
    running the version; never fewer than those scored); None when they are not."""
    drifting = sorted(d for d, s in scores.items() if s > rule.threshold)
    population = max(population, len(scores))
    if not drifting or len(drifting) < rule.min_devices:
        return None
    if len(drifting) < rule.min_share * population - 1e-9:  # 3 of 15 is 20 %, in floats too
        return None
    return drifting


def psi(expected: Sequence[float], actual: Sequence[float], *, eps: float = EPS) -> float:
    """Population Stability Index of ``actual`` against ``expected`` (fractions or counts)."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape or e.ndim != 1 or len(e) < 2:
        raise ValueError("expected and actual must be 1-D with the same number (>= 2) of bins")
    if np.any(e < 0) or np.any(a < 0) or e.sum() <= 0 or a.sum() <= 0:
        raise ValueError("bin counts must be non-negative with a positive total")
    e = np.maximum(e / e.sum(), eps)
    a = np.maximum(a / a.sum(), eps)
    return float(np.sum((a - e) * np.log(a / e)))


def psi_per_feature(reference: Reference, counts: Sequence[Sequence[int]]) -> list[float]:
    """PSI of each feature's observed bin ``counts``; features with no counts give 0."""
    if len(counts) != len(reference.proportions):
        raise ValueError(
            f"got counts for {len(counts)} features, the reference has {len(reference.proportions)}"
        )
    out = []
    for expected, observed in zip(reference.proportions, counts, strict=True):
        if len(observed) != len(expected):
            raise ValueError("observed bins do not match the reference's bins")
        out.append(psi(expected, observed) if sum(observed) > 0 else 0.0)
    return out
