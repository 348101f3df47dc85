"""The dashboard's rollouts page: progress of every rollout per wave, and drift events
(an operator starts a retraining run from an event with one click)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlmodel import Session, col, select

from fleet.api.deps import get_session
from fleet.crud.rollouts import public_view
from fleet.crud.telemetry import event_public, retrain_from_event
from fleet.dashboard.pages import actor, require_operator
from fleet.dashboard.session import check_form, require_login
from fleet.models.ota import DriftEvent, Rollout

SessionDep = Annotated[Session, Depends(get_session)]


def rollout_router(pages: Any) -> APIRouter:
    """``GET /rollouts`` rendered with the dashboard's ``pages`` (see routes.Pages), and
    ``POST /drift-events/{id}/retrain``."""
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

    @router.post("/drift-events/{event_id}/retrain")
    def retrain(
        event_id: int,
        request: Request,
        session: SessionDep,
        csrf: Annotated[str, Form(max_length=200)] = "",
    ) -> Response:
        """The same as ``POST /api/v1/drift-events/{id}/runs``: a retraining run (status
        ``created``) for the coordinator to execute (``fedfleet run submit --retrain``)."""
        principal = require_login(request, session)
        check_form(request, csrf)
        require_operator(principal)
        event = session.get(DriftEvent, event_id) if 0 < event_id < 2**31 else None
        if event is None:
            raise HTTPException(404, f"drift event {event_id} does not exist")
        run = retrain_from_event(session, event, actor=actor(principal))
        session.commit()
        return RedirectResponse(f"/runs/{run.id}", status_code=303)

    return router
