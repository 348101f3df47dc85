"""``/api/v1/audit``: the append-only change log (read only)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from fleet.api.deps import COMMON_RESPONSES, SessionDep, Viewer
from fleet.crud.audit_log import AuditFilter, list_events
from fleet.models.audit import AuditEventPublic
from fleet.models.common import Page

router = APIRouter(prefix="/audit", tags=["audit"], responses=COMMON_RESPONSES)

_ACTION = r"^[a-z][a-z0-9_.]{0,62}$"
_ENTITY = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_ACTOR = r"^[A-Za-z0-9][A-Za-z0-9:#._@-]{0,99}$"


@router.get("", response_model=Page[AuditEventPublic], summary="Audit events, newest first")
def list_audit(
    session: SessionDep,
    principal: Viewer,
    actor: Annotated[str | None, Query(pattern=_ACTOR, description="'token:NAME#ID'.")] = None,
    action: Annotated[
        str | None,
        Query(pattern=_ACTION, description="Action, or a prefix ending in '.' ('device.')."),
    ] = None,
    entity_type: Annotated[str | None, Query(pattern=r"^[a-z][a-z_]{0,31}$")] = None,
    entity_id: Annotated[str | None, Query(pattern=_ENTITY)] = None,
    since: Annotated[datetime | None, Query(description="Events at or after (ISO 8601).")] = None,
    until: Annotated[datetime | None, Query(description="Events before (ISO 8601).")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> Page[AuditEventPublic]:
    filters = AuditFilter(
        actor=actor,
        action=action,
        entity_type=entity_type,
        entity_id=entity_id,
        since=since,
        until=until,
    )
    return list_events(session, filters=filters, limit=limit, offset=offset)
