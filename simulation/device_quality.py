"""Synthetic inference traffic for simulated devices: quality signals per model version.

A benchmark or test of model-aware canaries needs devices whose model is measurably
worse (less accurate, slower, erroring) on one version than on another, without running
real inference on hundreds of agents. :class:`VersionQuality` says how a model version
behaves; :class:`TrafficModel` turns it into one window's ``telemetry`` and ``feedback``
messages (the same messages a real agent sends, docs/device-protocol.md "Quality"), drawn
from a seeded generator: ``samples`` inferences, ``labelled`` of them with a label that
came back, correct with probability ``accuracy``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from edge_client.protocol import mqtt as proto


@dataclass(frozen=True, slots=True, kw_only=True)
class VersionQuality:
    """How one model version behaves on a simulated device.

    ``accuracy`` (0..1) of the labelled inferences; ``latency_ms`` median latency per
    call (p95 is ``p95_factor`` times it); ``error_rate`` (0..1) of calls that raise;
    ``classes`` predicted uniformly unless ``prediction_weights`` (one per class) says
    otherwise.
    """

    accuracy: float = 0.95
    latency_ms: float = 2.0
    p95_factor: float = 1.8
    error_rate: float = 0.0
    classes: int = 10
    prediction_weights: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not 0.0 <= self.accuracy <= 1.0 or not 0.0 <= self.error_rate <= 1.0:
            raise ValueError("accuracy and error_rate are fractions in 0..1, e.g. 0.95")
        if not self.latency_ms > 0 or self.p95_factor < 1.0:
            raise ValueError("latency_ms must be > 0 and p95_factor >= 1, e.g. 2.0 and 1.8")
        if not 1 <= self.classes <= proto.MAX_CLASSES:
            raise ValueError(f"classes must be in 1..{proto.MAX_CLASSES}")
        if self.prediction_weights and len(self.prediction_weights) != self.classes:
            raise ValueError("prediction_weights needs one weight per class")

    def slower(self, factor: float) -> VersionQuality:
        """The same model, ``factor`` times slower."""
        return _replace(self, latency_ms=self.latency_ms * factor)

    def worse(self, points: float) -> VersionQuality:
        """The same model, ``points`` accuracy points (percent) less accurate."""
        return _replace(self, accuracy=max(0.0, self.accuracy - points / 100.0))


def _replace(quality: VersionQuality, **changes: float) -> VersionQuality:
    from dataclasses import replace

    return replace(quality, **changes)  # type: ignore[arg-type]


@dataclass(slots=True, kw_only=True)
class TrafficModel:
    """One window of synthetic traffic per call, by the version a device runs.

    ``by_version`` maps a fleet model version id to its behaviour (``default`` for the
    others); ``samples`` inferences per window of which ``labelled`` carry a label.
    """

    by_version: Mapping[int, VersionQuality] = field(default_factory=dict)
    default: VersionQuality = field(default_factory=VersionQuality)
    samples: int = 500
    labelled: int = 500
    window_s: float = 1.0
    seed: int = 0
    _rng: np.random.Generator | None = None

    def __post_init__(self) -> None:
        if self.samples < 1 or not 0 <= self.labelled <= self.samples:
            raise ValueError("samples must be >= 1 and labelled in 0..samples")
        self._rng = np.random.default_rng(self.seed)

    def window(
        self, *, seq: int, model_version_id: int | None
    ) -> tuple[proto.Telemetry, proto.Feedback | None]:
        """One window's telemetry and feedback (None when nothing is labelled)."""
        rng = self._rng
        assert rng is not None  # noqa: S101 - set in __post_init__
        quality = (
            self.by_version.get(model_version_id, self.default)
            if model_version_id is not None
            else self.default
        )
        errors = int(rng.binomial(self.samples, quality.error_rate))
        served = self.samples - errors
        weights = np.asarray(quality.prediction_weights or [1.0] * quality.classes, dtype=float)
        predicted = rng.multinomial(served, weights / weights.sum())
        jitter = float(rng.uniform(0.95, 1.05))
        telemetry = proto.Telemetry(
            seq=seq,
            window_s=self.window_s,
            count=served,
            latency_p50_ms=quality.latency_ms * jitter,
            latency_p95_ms=quality.latency_ms * quality.p95_factor * jitter,
            model_version_id=model_version_id,
            predictions={str(c): int(n) for c, n in enumerate(predicted) if n},
            errors=errors,
        )
        labelled = min(self.labelled, served)
        if labelled < 1:
            return telemetry, None
        per_class = rng.multinomial(labelled, [1.0 / quality.classes] * quality.classes)
        labels = {}
        for c, n in enumerate(per_class):
            if n:
                correct = int(rng.binomial(int(n), quality.accuracy))
                labels[str(c)] = proto.LabelCount(correct=correct, wrong=int(n) - correct)
        feedback = proto.Feedback(
            seq=seq, window_s=self.window_s, model_version_id=model_version_id, labels=labels
        )
        return telemetry, feedback
