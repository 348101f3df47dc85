"""The dashboard's rollouts page: progress of every rollout per wave, and drift events."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse
from sqlmodel import Session, col, select

from fleet.api.deps import get_session
from fleet.dashboard.session import require_login
from fleet.models.ota import DriftEvent, Rollout
from fleet.rollouts import public_view
from fleet.telemetry import event_public

SessionDep = Annotated[Session, Depends(get_session)]


def rollout_router(pages: Any) -> APIRouter:
    """``GET /rollouts`` rendered with the dashboard's ``pages`` (see routes.Pages)."""
    router = APIRouter(include_in_schema=False)

    @router.get("/rollouts")
    def rollouts(request: Request, session: SessionDep) -> HTMLResponse:
        principal = require_login(request, session)
        rows = session.exec(select(Rollout).order_by(col(Rollout.id).desc()).limit(100)).all()
        events = session.exec(
            select(DriftEvent).order_by(col(DriftEvent.id).desc()).limit(100)
        ).all()
        return pages.render(  # type: ignore[no-any-return]
            request,
            "rollouts.html",
            principal=principal,
            rollouts=[public_view(session, r) for r in rows],
            events=[event_public(session, e) for e in events],
        )

    return router
