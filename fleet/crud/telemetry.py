"""Telemetry summaries, drift references and drift events of the stored device telemetry.

The MQTT bridge stores each telemetry message as a row (:class:`TelemetryRecord`). This
module reads them back: a per model/group summary (inferences, latency percentiles,
prediction mix) for the API and dashboard; it stores a model's training reference, shows
drift events and creates a retraining run from one. The drift check itself (PSI of the
inputs seen against the reference) is the OTA service's (``fleet/ota/telemetry.py``).
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

import numpy as np
from pydantic import Field as PydanticField
from sqlmodel import Session, col, select

from fleet import audit
from fleet.crud import runs as runs_crud
from fleet.errors import Conflict, InvalidReference
from fleet.models.common import FleetModel, utcnow
from fleet.models.devices import Device, Group
from fleet.models.ota import (
    DriftDeviceScore,
    DriftEvent,
    DriftEventPublic,
    DriftReference,
    DriftReferencePublic,
    Reference,
    TelemetryRecord,
    check_reference,
)
from fleet.models.registry import ModelVersion
from fleet.models.runs import Run, RunCreate


class TelemetrySummary(FleetModel):
    """Telemetry of one model version (optionally one group) over the stored window."""

    model_version_id: int
    group: str | None
    devices: int = PydanticField(description="Devices that reported.")
    messages: int
    inferences: int
    latency_p50_ms: float | None = PydanticField(description="Inference-weighted mean of p50s.")
    latency_p95_ms: float | None = PydanticField(description="Largest reported p95.")
    predictions: dict[str, int]


def list_records(
    session: Session, *, model_version_id: int, group_id: int | None, since: datetime | None
) -> list[TelemetryRecord]:
    """Telemetry rows of a model version (in a group, received after ``since``)."""
    statement = select(TelemetryRecord).where(TelemetryRecord.model_version_id == model_version_id)
    if group_id is not None:
        statement = statement.join(Device, col(Device.id) == col(TelemetryRecord.device_id)).where(
            Device.group_id == group_id
        )
    if since is not None:
        statement = statement.where(col(TelemetryRecord.received_at) > since)
    return list(session.exec(statement).all())


def group_id_by_name(session: Session, group: str | None) -> int | None:
    """The id of group ``group`` (None for None); raises if there is no such group."""
    if group is None:
        return None
    row = session.exec(select(Group).where(Group.name == group)).first()
    if row is None:
        raise InvalidReference(f"group '{group}' does not exist")
    return row.id


def summarize(session: Session, *, model_version_id: int, group: str | None) -> TelemetrySummary:
    """Inferences, latency and prediction mix of a model version (in a group)."""
    rows = list_records(
        session,
        model_version_id=model_version_id,
        group_id=group_id_by_name(session, group),
        since=None,
    )
    total = sum(r.count for r in rows)
    predictions: Counter[str] = Counter()
    for r in rows:
        predictions.update({str(k): int(v) for k, v in r.predictions.items()})
    weighted = [r for r in rows if r.count > 0]
    return TelemetrySummary(
        model_version_id=model_version_id,
        group=group,
        devices=len({r.device_id for r in rows}),
        messages=len(rows),
        inferences=total,
        latency_p50_ms=(
            float(
                np.average(
                    [r.latency_p50_ms for r in weighted], weights=[r.count for r in weighted]
                )
            )
            if weighted
            else None
        ),
        latency_p95_ms=max((r.latency_p95_ms for r in weighted), default=None),
        predictions=dict(predictions),
    )


def set_reference(
    session: Session, *, model_version_id: int, reference: Reference, actor: audit.Actor
) -> DriftReference:
    """Store (or replace) a model version's training reference."""
    if session.get(ModelVersion, model_version_id) is None:
        raise InvalidReference(f"model version {model_version_id} is not registered")
    try:
        check_reference(reference.edges, reference.proportions)
    except ValueError as err:
        raise InvalidReference(
            f"drift reference of model version {model_version_id}: {err}"
        ) from None
    row = session.get(DriftReference, model_version_id) or DriftReference(
        model_version_id=model_version_id, edges=[], proportions=[], samples=0
    )
    row.edges = [list(e) for e in reference.edges]
    row.proportions = [list(p) for p in reference.proportions]
    row.samples = reference.samples
    row.created_at = utcnow()
    row.pushed_at = None  # the MQTT service sends the new bins to the devices running it
    session.add(row)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="drift.reference",
        entity_type="model",
        entity_id=model_version_id,
        after={"features": len(reference.edges), "samples": reference.samples},
    )
    return row


def get_reference(session: Session, model_version_id: int) -> DriftReferencePublic | None:
    """A model version's stored training reference; None when it has none."""
    row = session.get(DriftReference, model_version_id)
    if row is None:
        return None
    return DriftReferencePublic(
        model_version_id=row.model_version_id,
        edges=row.edges,
        proportions=row.proportions,
        samples=row.samples,
        created_at=row.created_at,
        pushed_at=row.pushed_at,
    )


def event_public(session: Session, event: DriftEvent) -> DriftEventPublic:
    group = session.get(Group, event.group_id) if event.group_id is not None else None
    return DriftEventPublic(
        id=event.id or 0,
        model_version_id=event.model_version_id,
        group=group.name if group else None,
        created_at=event.created_at,
        method=event.method,
        score=event.score,
        threshold=event.threshold,
        per_feature=[float(v) for v in event.per_feature],
        samples=event.samples,
        run_id=event.run_id,
        agreeing=event.agreeing,
        population=event.population,
        devices=[DriftDeviceScore.model_validate(d) for d in event.devices],
    )


def retrain_from_event(session: Session, event: DriftEvent, *, actor: audit.Actor) -> Run:
    """Create a federated run (status ``created``) to retrain the drifted model."""
    if event.run_id is not None:
        raise Conflict(f"drift event {event.id} already started run {event.run_id}")
    model = session.get(ModelVersion, event.model_version_id)
    if model is None:  # pragma: no cover - foreign key
        raise InvalidReference(f"model version {event.model_version_id} is gone")
    view = event_public(session, event)
    run = runs_crud.create_run(
        session,
        RunCreate(
            name=f"retrain model {model.id} after drift event {event.id}",
            task=model.task,
            config={
                "reason": "drift",
                "drift_event_id": event.id,
                "parent_model_version_id": model.id,
                "group": view.group,
                "psi": view.score,
            },
        ),
        actor=actor,
    )
    event.run_id = run.id
    session.add(event)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="drift.retrain",
        entity_type="drift_event",
        entity_id=event.id or 0,
        after=event_public(session, event),
    )
    return run
