"""The quality signals of a rollout's canary and baseline devices, read from the database.

:func:`wave_quality` gathers, per device, what :func:`fleet.ota.canary_quality.compare`
needs (:class:`~fleet.ota.canary_quality.DeviceQuality`) and compares:

- **canary**: devices of the rollout's sent waves (``wave <= current_wave``) that
  installed the new version and that the fleet records as running it; only their
  telemetry and feedback **naming the new version** and received **after their install
  was acknowledged**;
- **baseline**: devices of waves not sent yet that the fleet records as running another
  version; only their reports naming **the version the fleet records** for them, received
  since the current wave went out (the same period as the canary's). The predictions
  signal compares with the new version's stored reference distribution instead, when
  it has one (``model_versions.reference_predictions``).

What the fleet records a device runs comes from its status and acks (signed data on the
device side), so a report naming a version the device does not run — a forgery or a stale
window — is ignored. One query per table over the period's rows (numbers only; the
predicted classes, JSON, only when their threshold is set).
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from sqlalchemy import literal
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from fleet.models.devices import Device
from fleet.models.ota import (
    DeviceRolloutState,
    FeedbackRecord,
    Rollout,
    RolloutDevice,
    TelemetryRecord,
)
from fleet.models.registry import ModelVersion
from fleet.ota.canary_quality import DeviceQuality, QualityThresholds, QualityVerdict, compare


def thresholds_of(rollout: Rollout) -> QualityThresholds:
    """The rollout's quality thresholds and evidence bounds."""
    return QualityThresholds(
        max_accuracy_drop_points=rollout.max_accuracy_drop_points,
        max_latency_ratio=rollout.max_latency_ratio,
        max_error_rate=rollout.max_error_rate,
        max_prediction_shift=rollout.max_prediction_shift,
        min_devices=rollout.min_quality_devices,
        min_labelled=rollout.min_quality_samples,
        min_inferences=rollout.min_quality_samples,
    )


def wave_quality(
    session: Session, rollout: Rollout, rows: list[RolloutDevice], *, since: datetime
) -> QualityVerdict:
    """Compare the canary with the baseline (see the module docstring); ``rows`` are the
    rollout's device rows, ``since`` when the current wave went out."""
    new = rollout.model_version_id
    canary_rows = {
        r.device_id: r
        for r in rows
        if r.wave <= rollout.current_wave and r.state is DeviceRolloutState.installed
    }
    baseline_ids = {
        r.device_id
        for r in rows
        if r.wave > rollout.current_wave and r.state is DeviceRolloutState.pending
    }
    running = dict(
        session.exec(
            select(Device.id, Device.model_version_id).where(
                col(Device.id).in_(set(canary_rows) | baseline_ids),
                col(Device.retired_at).is_(None),
            )
        ).all()
    )
    # Who counts, and the one version each device's reports must name.
    expected: dict[str, int] = {}
    for device_id in canary_rows:
        if running.get(device_id) == new:
            expected[device_id] = new
    for device_id in baseline_ids:
        version = running.get(device_id)
        if version is not None and version != new:
            expected[device_id] = version
    if not expected:
        return compare([], [], thresholds_of(rollout))
    acked = {d: r.acked_at or since for d, r in canary_rows.items()}
    quality = _gather(session, expected, acked, since, rollout.max_prediction_shift is not None)
    canary = [quality[d] for d in expected if d in canary_rows and d in quality]
    baseline = [quality[d] for d in expected if d in baseline_ids and d in quality]
    reference = None
    if rollout.max_prediction_shift is not None:  # the version's own, when it has one
        model = session.get(ModelVersion, new)
        reference = model.reference_predictions if model is not None else None
    return compare(canary, baseline, thresholds_of(rollout), reference=_counts(reference))


def _counts(stored: object) -> dict[str, int] | None:
    """A stored reference distribution as counts (None when absent or malformed)."""
    if not isinstance(stored, dict):
        return None
    into: Counter[str] = Counter()
    _add_counts(into, stored)
    return dict(into) or None


def _gather(
    session: Session,
    expected: dict[str, int],
    acked: dict[str, datetime],
    since: datetime,
    with_predictions: bool,
) -> dict[str, DeviceQuality]:
    """Each device's sums over its reports naming ``expected[device]``, received after
    ``acked[device]`` (canary) or ``since`` (baseline)."""
    ids = list(expected)
    sums: dict[str, list[float]] = {}
    predictions: dict[str, Counter[str]] = {}

    def counts(device_id: str, version: int | None, at: datetime) -> list[float] | None:
        if version != expected[device_id] or at <= acked.get(device_id, since):
            return None
        return sums.setdefault(device_id, [0, 0, 0.0, 0, 0])

    t, f = TelemetryRecord, FeedbackRecord
    telemetry = sa_select(
        col(t.device_id),
        col(t.model_version_id),
        col(t.received_at),
        col(t.count),
        col(t.errors),
        col(t.latency_p95_ms),
        col(t.predictions) if with_predictions else literal(None),
    ).where(col(t.device_id).in_(ids), col(t.received_at) > since)
    for device_id, version, at, count, errors, p95, classes in session.execute(telemetry):
        row = counts(device_id, version, at)
        if row is not None:
            row[0] += count
            row[1] += errors
            row[2] += count * p95
            if with_predictions:
                _add_counts(predictions.setdefault(device_id, Counter()), classes)
    feedback = sa_select(
        col(f.device_id),
        col(f.model_version_id),
        col(f.received_at),
        col(f.labelled),
        col(f.correct),
    ).where(col(f.device_id).in_(ids), col(f.received_at) > since)
    for device_id, version, at, labelled, correct in session.execute(feedback):
        row = counts(device_id, version, at)
        if row is not None:
            row[3] += labelled
            row[4] += correct
    out = {}
    for device_id, (count, errors, weighted, labelled, correct) in sums.items():
        out[device_id] = DeviceQuality(
            device_id=device_id,
            inferences=int(count),
            errors=int(errors),
            latency_p95_ms=weighted / count if count else 0.0,
            labelled=int(labelled),
            correct=min(int(correct), int(labelled)),
            predictions=predictions.get(device_id, {}),
        )
    return out


def _add_counts(into: Counter[str], counts: object) -> None:
    """Add a stored predictions object (bounded by the decoder; checked again here)."""
    if not isinstance(counts, dict):
        return
    for key, value in counts.items():
        if isinstance(key, str) and isinstance(value, int) and not isinstance(value, bool):
            into[key] += max(0, value)
