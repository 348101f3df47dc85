"""The dashboard's rollouts pages: progress of every rollout per wave, and drift events
(an operator starts a retraining run from an event with one click); ``/rollouts/{id}``,
each wave's devices and who is waited for, with Pause/Resume/Abort for operators (the
same changes as ``POST /api/v1/rollouts/{id}/pause|resume|abort``, audited as coming from
the dashboard)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlmodel import Session, col, select

from fleet.api.deps import get_session
from fleet.crud.rollouts import (
    abort_rollout,
    detail_view,
    pause_rollout,
    public_view,
    resume_rollout,
)
from fleet.crud.telemetry import event_public, retrain_from_event
from fleet.dashboard.pages import actor, require_operator
from fleet.dashboard.session import check_form, require_login
from fleet.models.ota import DriftEvent, Rollout

SessionDep = Annotated[Session, Depends(get_session)]


def rollout_router(pages: Any) -> APIRouter:
    """``GET /rollouts`` rendered with the dashboard's ``pages`` (see routes.Pages), and
    ``POST /drift-events/{id}/retrain``; ``GET /rollouts/{id}`` and its steering forms."""
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

    @router.get("/rollouts/{rollout_id}")
    def rollout_page(rollout_id: int, request: Request, session: SessionDep) -> HTMLResponse:
        principal = require_login(request, session)
        rollout = session.get(Rollout, rollout_id) if 0 < rollout_id < 2**31 else None
        if rollout is None:
            raise HTTPException(404, f"rollout {rollout_id} does not exist")
        return pages.render(  # type: ignore[no-any-return]
            request, "rollout_detail.html", principal=principal, r=detail_view(session, rollout)
        )

    @router.post("/rollouts/{rollout_id}/{action}")
    def steer(
        rollout_id: int,
        action: str,
        request: Request,
        session: SessionDep,
        csrf: Annotated[str, Form(max_length=200)] = "",
        rollback: Annotated[str, Form(max_length=10)] = "",
    ) -> Response:
        """Pause, resume or abort (``rollback`` = ``true``/``false``) from the page."""
        principal = require_login(request, session)
        check_form(request, csrf)
        require_operator(principal)
        if action not in ("pause", "resume", "abort") or not 0 < rollout_id < 2**31:
            raise HTTPException(404, f"no such page: /rollouts/{rollout_id}/{action}")
        who = actor(principal)
        if action == "pause":
            rollout = pause_rollout(session, rollout_id, actor=who)
        elif action == "resume":
            rollout = resume_rollout(session, rollout_id, actor=who)
        else:
            if rollback not in ("true", "false"):
                raise HTTPException(400, "choose whether to roll the current wave back")
            rollout = abort_rollout(session, rollout_id, rollback=rollback == "true", actor=who)
        if rollout is None:
            raise HTTPException(404, f"rollout {rollout_id} does not exist")
        session.commit()
        return RedirectResponse(f"/rollouts/{rollout_id}", status_code=303)

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
