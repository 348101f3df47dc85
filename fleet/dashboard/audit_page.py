"""The dashboard's audit page: the audit log, filtered by actor, action and entity type,
each event with the fields it changed."""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from fleet.crud.audit_log import AuditFilter, list_events
from fleet.dashboard.pages import (
    PAGE_SIZE,
    Pages,
    SessionDep,
    audit_diff,
    page_count,
    page_number,
)
from fleet.dashboard.session import require_login


def audit_router(pages: Pages) -> APIRouter:
    """``GET /audit``."""
    router = APIRouter(include_in_schema=False)

    @router.get("/audit")
    def audit(request: Request, session: SessionDep) -> HTMLResponse:
        principal = require_login(request, session)
        params = request.query_params
        actor = (params.get("actor") or "")[:100] or None
        action = (params.get("action") or "")[:63] or None
        entity = (params.get("entity_type") or "")[:32] or None
        page = page_number(params)
        result = list_events(
            session,
            filters=AuditFilter(actor=actor, action=action, entity_type=entity),
            limit=PAGE_SIZE,
            offset=(page - 1) * PAGE_SIZE,
        )
        rows = [(event, audit_diff(event.before, event.after)) for event in result.items]
        kept = {
            k: v for k, v in {"actor": actor, "action": action, "entity_type": entity}.items() if v
        }
        return pages.render(
            request,
            "audit.html",
            principal=principal,
            result=result,
            rows=rows,
            filters=kept,
            page=page,
            pages=page_count(result.total),
            query=lambda **extra: urlencode({**kept, **extra}),
        )

    return router
