"""Drift checks over the stored device telemetry, run periodically by the MQTT service.

The bridge stores each telemetry message as a row (:class:`TelemetryRecord`). The check
sums the devices' input bin counts since the last event and compares them with the model's
training reference (:mod:`fleet.ota.drift`), recording a :class:`DriftEvent` above the
threshold. Summaries, references and retraining runs from an event are the admin app's
(:mod:`fleet.crud.telemetry`).

A bad stored row never stops the service: a reference that breaks
:func:`~fleet.models.ota.check_reference`, or a telemetry row whose bin counts are not
lists of integers in ``0..MAX_COUNT`` (rows stored before the decoder bounded them), is
skipped and reported once (one log line per row, remembered in the ``reported`` set the
caller keeps); any other failure of one (model, group) check is logged with its traceback
and the others still run.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from edge_client.protocol.mqtt import MAX_COUNT
from fleet import audit
from fleet.crud.telemetry import event_public, group_id_by_name, list_records
from fleet.db import session_scope
from fleet.models.devices import Device, Group
from fleet.models.ota import (
    DriftEvent,
    DriftReference,
    Reference,
    TelemetryRecord,
    check_reference,
)
from fleet.ota.drift import DEFAULT_THRESHOLD, psi_per_feature

log = logging.getLogger(__name__)

SYSTEM = audit.Actor(name="system:drift", role="operator", source="cli")


def check_drift(
    session: Session,
    *,
    model_version_id: int,
    group: str | None,
    threshold: float = DEFAULT_THRESHOLD,
    min_samples: int = 200,
    actor: audit.Actor = SYSTEM,
    reported: set[str] | None = None,
) -> DriftEvent | None:
    """Compare the inputs seen since the last event with the reference; maybe record one.

    Returns the new event, or None when there is no usable reference, too few samples
    (``min_samples`` per feature), or no feature's PSI exceeds ``threshold``. Bad stored
    rows are skipped and logged once per ``reported`` set (see the module docstring).
    """
    reported = set() if reported is None else reported
    stored = session.get(DriftReference, model_version_id)
    if stored is None:
        return None
    try:
        check_reference(stored.edges, stored.proportions)
    except ValueError as err:
        _report_once(
            reported,
            f"reference:{model_version_id}:{stored.created_at}",
            f"drift reference of model version {model_version_id} skipped: {err}; "
            "set a valid one (PUT /api/v1/models/{id}/drift-reference)",
        )
        return None
    reference = Reference(
        edges=tuple(tuple(e) for e in stored.edges),
        proportions=tuple(tuple(p) for p in stored.proportions),
        samples=stored.samples,
    )
    group_id = group_id_by_name(session, group)
    last = session.exec(
        select(DriftEvent.created_at)
        .where(DriftEvent.model_version_id == model_version_id, DriftEvent.group_id == group_id)
        .order_by(col(DriftEvent.created_at).desc())
    ).first()
    rows = list_records(session, model_version_id=model_version_id, group_id=group_id, since=last)
    totals = [np.zeros(len(p), dtype=np.int64) for p in reference.proportions]
    for r in rows:
        if not _counts_ok(r.features):
            _report_once(
                reported,
                f"row:{r.id}",
                f"telemetry row {r.id} of device {r.device_id} skipped by the drift check: "
                f"its bin counts are not lists of integers in 0..{MAX_COUNT}",
            )
            continue
        for j, counts in enumerate(r.features[: len(totals)]):
            if len(counts) == len(totals[j]):
                totals[j] += np.asarray(counts, dtype=np.int64)
    samples = int(min((t.sum() for t in totals), default=0))
    if samples < min_samples:
        return None
    scores = psi_per_feature(reference, [t.tolist() for t in totals])
    if max(scores) <= threshold:
        return None
    event = DriftEvent(
        model_version_id=model_version_id,
        group_id=group_id,
        method="psi",
        score=max(scores),
        threshold=threshold,
        per_feature=scores,
        samples=samples,
    )
    session.add(event)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="drift.detected",
        entity_type="drift_event",
        entity_id=event.id or 0,
        after=event_public(session, event),
    )
    return event


def _counts_ok(features: Any) -> bool:
    """Whether a stored row's features are lists of bin counts the check can add up."""
    return isinstance(features, list) and all(
        isinstance(counts, list)
        and all(
            isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= MAX_COUNT for c in counts
        )
        for counts in features
    )


def _report_once(reported: set[str], key: str, message: str) -> None:
    if key not in reported:
        reported.add(key)
        log.warning("%s", message)


def check_all(
    engine: Engine, *, threshold: float = DEFAULT_THRESHOLD, reported: set[str] | None = None
) -> list[DriftEvent]:
    """Run :func:`check_drift` for every (model version with a reference, group) pair that
    sent telemetry; the fleet's MQTT service calls this periodically, with one
    ``reported`` set for its lifetime (each bad row is logged once)."""
    reported = set() if reported is None else reported
    with Session(engine) as session:
        pairs = session.exec(
            select(TelemetryRecord.model_version_id, Device.group_id)
            .join(Device, col(Device.id) == col(TelemetryRecord.device_id))
            .join(
                DriftReference,
                col(DriftReference.model_version_id) == col(TelemetryRecord.model_version_id),
            )
            .distinct()
        ).all()
        groups = {g.id: g.name for g in session.exec(select(Group)).all()}
    events = []
    for model_version_id, group_id in pairs:
        if model_version_id is None:
            continue
        try:
            with session_scope(engine, write=True) as session:
                event = check_drift(
                    session,
                    model_version_id=model_version_id,
                    group=groups.get(group_id) if group_id is not None else None,
                    threshold=threshold,
                    reported=reported,
                )
        except Exception:  # one pair's failure never stops the others, nor the service
            key = f"failed:{model_version_id}:{group_id}"
            if key not in reported:
                reported.add(key)
                log.exception(
                    "drift check of model version %s, group %s failed; skipped",
                    model_version_id,
                    group_id,
                )
            continue
        if event is not None:
            events.append(event)
    return events
