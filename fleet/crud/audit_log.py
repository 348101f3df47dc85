"""Reading the audit log (writing goes through :func:`fleet.audit.record`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func
from sqlmodel import Session, col, select

from fleet.models.audit import AuditEvent, AuditEventPublic
from fleet.models.common import Page


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditFilter:
    actor: str | None = None
    action: str | None = None
    entity_type: str | None = None
    entity_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def list_events(
    session: Session, *, filters: AuditFilter, limit: int, offset: int
) -> Page[AuditEventPublic]:
    """Audit events matching ``filters``, newest first.

    ``action`` matches a whole action (``device.enroll``) or a prefix ending in a dot
    (``device.`` for every device action).
    """
    conditions = []
    if filters.actor is not None:
        conditions.append(col(AuditEvent.actor) == filters.actor)
    if filters.action is not None:
        if filters.action.endswith("."):
            conditions.append(col(AuditEvent.action).startswith(filters.action, autoescape=True))
        else:
            conditions.append(col(AuditEvent.action) == filters.action)
    if filters.entity_type is not None:
        conditions.append(col(AuditEvent.entity_type) == filters.entity_type)
    if filters.entity_id is not None:
        conditions.append(col(AuditEvent.entity_id) == filters.entity_id)
    if filters.since is not None:
        conditions.append(col(AuditEvent.at) >= filters.since)
    if filters.until is not None:
        conditions.append(col(AuditEvent.at) < filters.until)
    total = session.exec(select(func.count()).select_from(AuditEvent).where(*conditions)).one()
    rows = session.exec(
        select(AuditEvent)
        .where(*conditions)
        .order_by(col(AuditEvent.id).desc())
        .limit(limit)
        .offset(offset)
    ).all()
    items = [AuditEventPublic.model_validate(r, from_attributes=True) for r in rows]
    return Page[AuditEventPublic](items=items, total=total, limit=limit, offset=offset)
