"""Drift checks over the stored device telemetry, run periodically by the MQTT service.

The bridge stores each telemetry message as a row (:class:`TelemetryRecord`). The check
sums *each device's* input bin counts since the last event of its (model version, group),
scores that device alone against the model's training reference (:mod:`fleet.ota.drift`),
and records a :class:`DriftEvent` only when enough devices drift
(:class:`~fleet.ota.drift.AgreementRule`: one device's forged counts never do). Only
devices the fleet has on record as running the version count, and only their telemetry
naming that version. Summaries, references and retraining runs from an event are the admin app's
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
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from edge_client.protocol.mqtt import MAX_COUNT
from fleet import audit
from fleet.crud.telemetry import event_public, group_id_by_name
from fleet.db import session_scope
from fleet.models.devices import Device, Group
from fleet.models.ota import (
    DriftEvent,
    DriftReference,
    Reference,
    TelemetryRecord,
    check_reference,
)
from fleet.ota.drift import AgreementRule, agreeing, psi_per_feature

log = logging.getLogger(__name__)

SYSTEM = audit.Actor(name="system:drift", role="operator", source="cli")


def check_drift(
    session: Session,
    *,
    model_version_id: int,
    group: str | None,
    rule: AgreementRule | None = None,
    actor: audit.Actor = SYSTEM,
    reported: set[str] | None = None,
) -> DriftEvent | None:
    """Score each device's inputs since the last event against the reference; record an
    event when enough of them drift (:func:`fleet.ota.drift.agreeing`).

    Only devices the fleet has on record as running ``model_version_id`` (in ``group``;
    None: any group) count, and only their telemetry that names that version: telemetry
    claiming another version is ignored. Returns the new event, or None when there is no
    usable reference or too few devices agree. Bad stored rows are skipped and logged once
    per ``reported`` set (see the module docstring).
    """
    rule = rule or AgreementRule()
    reported = set() if reported is None else reported
    reference = _usable_reference(session, model_version_id, reported)
    if reference is None:
        return None
    group_id = group_id_by_name(session, group)
    last = session.exec(
        select(DriftEvent.created_at)
        .where(DriftEvent.model_version_id == model_version_id, DriftEvent.group_id == group_id)
        .order_by(col(DriftEvent.created_at).desc())
    ).first()
    running = select(Device.id).where(
        Device.model_version_id == model_version_id, col(Device.retired_at).is_(None)
    )
    if group_id is not None:
        running = running.where(Device.group_id == group_id)
    population = set(session.exec(running).all())
    totals = _device_totals(session, reference, model_version_id, population, last, reported)
    scored: dict[str, tuple[list[float], int]] = {}
    for device_id, counts in totals.items():
        samples = int(min(c.sum() for c in counts))
        if samples >= rule.min_samples:
            scored[device_id] = (psi_per_feature(reference, [c.tolist() for c in counts]), samples)
    agreed = agreeing(
        {d: max(s) for d, (s, _) in scored.items()}, population=len(population), rule=rule
    )
    if agreed is None:
        return None
    # The event's per-feature PSI: the agreeing devices' counts pooled.
    pooled = [sum(totals[d][j] for d in agreed) for j in range(len(reference.proportions))]
    scores = psi_per_feature(reference, [np.asarray(c).tolist() for c in pooled])
    event = DriftEvent(
        model_version_id=model_version_id,
        group_id=group_id,
        method="psi",
        score=max(scores),
        threshold=rule.threshold,
        per_feature=scores,
        samples=int(min(np.asarray(c).sum() for c in pooled)),
        population=len(population),
        devices=sorted(
            (
                {
                    "device_id": d,
                    "score": max(s),
                    "samples": n,
                    "drifted": d in agreed,
                }
                for d, (s, n) in scored.items()
            ),
            key=lambda v: (-float(v["score"]), str(v["device_id"])),
        ),
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


def _usable_reference(
    session: Session, model_version_id: int, reported: set[str]
) -> Reference | None:
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
    return Reference(
        edges=tuple(tuple(e) for e in stored.edges),
        proportions=tuple(tuple(p) for p in stored.proportions),
        samples=stored.samples,
    )


def _device_totals(
    session: Session,
    reference: Reference,
    model_version_id: int,
    population: set[str],
    since: datetime | None,
    reported: set[str],
) -> dict[str, list[np.ndarray]]:
    """Each running device's bin counts per feature, summed over its telemetry of this
    model version since ``since``; a feature whose bin count differs from the reference's
    is left out of that row (its counts are for other bins)."""
    statement = select(TelemetryRecord).where(
        TelemetryRecord.model_version_id == model_version_id,
        col(TelemetryRecord.device_id).in_(population),
    )
    if since is not None:
        statement = statement.where(col(TelemetryRecord.received_at) > since)
    totals: dict[str, list[np.ndarray]] = {}
    for r in session.exec(statement).all() if population else ():
        if not _counts_ok(r.features):
            _report_once(
                reported,
                f"row:{r.id}",
                f"telemetry row {r.id} of device {r.device_id} skipped by the drift check: "
                f"its bin counts are not lists of integers in 0..{MAX_COUNT}",
            )
            continue
        device = totals.setdefault(
            r.device_id, [np.zeros(len(p), dtype=np.int64) for p in reference.proportions]
        )
        for j, counts in enumerate(r.features[: len(device)]):
            if len(counts) == len(device[j]):
                device[j] += np.asarray(counts, dtype=np.int64)
    return totals


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
    engine: Engine, *, rule: AgreementRule | None = None, reported: set[str] | None = None
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
                    rule=rule,
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
