"""One timeline per group (or per model version in it): run → version → gates → bundles →
promotion → rollout waves → drift → retraining run, oldest first.

Built from what the fleet already records, nothing stored twice: the audit log's events
of the group's promotions, rollouts, their model versions, those versions' artifacts and
source runs, and the drift events of the group (with the retraining run each started).
Every automatic decision is an audit event by a ``system:`` actor whose snapshot carries
its reason, so each item has a timestamp, who decided, what, and why.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from pydantic import Field as PydanticField
from sqlalchemy import and_, or_
from sqlmodel import Session, col, select

from fleet.models.audit import AuditEvent
from fleet.models.common import FleetModel
from fleet.models.devices import Group
from fleet.models.ota import DriftEvent, Rollout
from fleet.models.policies import Promotion
from fleet.models.registry import Artifact, ModelVersion

MAX_ITEMS = 1000
# Per-round reports are the run's own chart, not decisions: left off the timeline.
_NOISE = ("run.round",)


class TimelineItem(FleetModel):
    at: datetime
    kind: str = PydanticField(description="run, model, artifact, promotion, rollout or drift.")
    subject: str = PydanticField(description="What it is about, e.g. 'promotion 4'.")
    action: str = PydanticField(description="The audit action, e.g. 'promotion.reject'.")
    actor: str = PydanticField(description="Who decided: 'system:promotions' when automatic.")
    summary: str = PydanticField(description="What happened, one line.")
    reason: str = PydanticField(default="", description="Why, where a decision was made.")


def timeline(
    session: Session, group: Group, *, model_version_id: int | None = None
) -> list[TimelineItem]:
    """``group``'s chain of events, oldest first (at most :data:`MAX_ITEMS`, the newest)."""

    def only_model(column: Any) -> Any:
        return True if model_version_id is None else column == model_version_id

    promotions = session.exec(
        select(Promotion.id, Promotion.model_version_id).where(
            col(Promotion.group_id) == group.id, only_model(col(Promotion.model_version_id))
        )
    ).all()
    rollouts = session.exec(
        select(Rollout.id, Rollout.model_version_id).where(
            col(Rollout.group_id) == group.id, only_model(col(Rollout.model_version_id))
        )
    ).all()
    drifts = session.exec(
        select(DriftEvent).where(
            col(DriftEvent.group_id) == group.id, only_model(col(DriftEvent.model_version_id))
        )
    ).all()
    models = {m for _, m in promotions} | {m for _, m in rollouts}
    models |= {d.model_version_id for d in drifts}
    if model_version_id is not None:
        models.add(model_version_id)
    runs = {
        r
        for r in session.exec(
            select(ModelVersion.source_run_id).where(col(ModelVersion.id).in_(models or [0]))
        ).all()
        if r is not None
    } | {d.run_id for d in drifts if d.run_id is not None}
    artifacts = session.exec(
        select(Artifact.id).where(col(Artifact.model_version_id).in_(models or [0]))
    ).all()
    wanted: dict[str, set[int] | set[int | None]] = {
        "promotion": {i for i, _ in promotions},
        "rollout": {i for i, _ in rollouts},
        "model": models,
        "run": runs,
        "artifact": set(artifacts),
        "drift_event": {d.id for d in drifts},
    }
    clauses = [
        and_(col(AuditEvent.entity_type) == kind, col(AuditEvent.entity_id).in_(_ids(ids)))
        for kind, ids in wanted.items()
        if ids
    ]
    if not clauses:
        return []
    events = session.exec(
        select(AuditEvent)
        .where(or_(*clauses), col(AuditEvent.action).not_in(_NOISE))
        .order_by(col(AuditEvent.at).desc(), col(AuditEvent.id).desc())
        .limit(MAX_ITEMS)
    ).all()
    return [item(e) for e in reversed(events)]


def _ids(ids: Iterable[int | None]) -> list[str]:
    return [str(i) for i in ids if i is not None]


def item(event: AuditEvent) -> TimelineItem:
    """One audit event as a timeline item: a one-line summary and the decision's reason."""
    after: dict[str, Any] = event.after or {}
    kind = "drift" if event.entity_type == "drift_event" else event.entity_type
    return TimelineItem(
        at=event.at,
        kind=kind,
        subject=f"{kind} {event.entity_id}",
        action=event.action,
        actor=event.actor,
        summary=_summary(event.action, event.entity_id, after),
        reason=str(after.get("reason") or ""),
    )


def _summary(action: str, entity_id: str, after: dict[str, Any]) -> str:
    verb = action.split(".", 1)[-1]
    if action == "promotion.retrain":
        return f"drift event {entity_id} started retraining run {after.get('run_id')}"
    if action == "promotion.retrain_wait":
        return f"drift event {entity_id}: no retraining run yet"
    if action == "promotion.retrain_skip":
        return f"drift event {entity_id}: no retraining run (its model was replaced)"
    if action.startswith("promotion."):
        return (
            f"promotion {entity_id} of model version {after.get('model_version_id')} to "
            f"group '{after.get('group')}': {after.get('state')}"
        )
    if action.startswith("rollout."):
        waves, wave = after.get("waves"), after.get("current_wave")
        shown = wave + 1 if isinstance(wave, int) else "?"  # stored 0-based
        return (
            f"rollout {entity_id} of model version {after.get('model_version_id')} "
            f"({verb}): {after.get('status')}, wave {shown} of "
            f"{len(waves) if isinstance(waves, list) else '?'}"
        )
    if action == "model.register":
        metrics = after.get("metrics") or {}
        accuracy = metrics.get("final_accuracy")
        shown = f", accuracy {accuracy:g}" if isinstance(accuracy, int | float) else ""
        return (
            f"model version {entity_id} registered ({after.get('task')}, from run "
            f"{after.get('source_run_id')}{shown})"
        )
    if action.startswith("model."):
        return f"model version {entity_id}: {verb} (stage {after.get('stage')})"
    if action.startswith("artifact."):
        return (
            f"{after.get('format')} artifact {entity_id} for {after.get('target')} stored for "
            f"model version {after.get('model_version_id')}"
            + (", signed" if after.get("signature") else "")
        )
    if action.startswith("run."):
        return f"run {entity_id} ({after.get('task')}): {after.get('status')}"
    if action == "drift.detected":
        return (
            f"drift on model version {after.get('model_version_id')}: PSI "
            f"{_num(after.get('score'))} > {_num(after.get('threshold'))}"
        )
    if action == "drift.reference":
        return f"drift reference of model version {entity_id} stored"
    if action == "drift.retrain":
        return f"drift event {entity_id} started retraining run {after.get('run_id')}"
    return f"{action} {entity_id}"


def _num(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, int | float) else "?"
