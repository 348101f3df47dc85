"""``/api/v1/runs``: federated runs as the coordinator reports them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query

from fleet.api.deps import COMMON_RESPONSES, CONFLICT, NOT_FOUND, Operator, SessionDep, Viewer
from fleet.crud import runs as crud
from fleet.models.common import MAX_ID, Page, Slug
from fleet.models.runs import (
    RoundReport,
    Run,
    RunCreate,
    RunDetail,
    RunPublic,
    RunRoundPublic,
    RunStatus,
    RunUpdate,
)

router = APIRouter(prefix="/runs", tags=["runs"], responses=COMMON_RESPONSES)

RunId = Annotated[int, Path(ge=1, le=MAX_ID, description="Run id.")]
RoundNumber = Annotated[int, Path(ge=0, le=MAX_ID, description="Round number (1 = first).")]


def _load(session: SessionDep, run_id: int) -> Run:
    run = crud.get_run(session, run_id)
    if run is None:
        raise HTTPException(404, f"run {run_id} does not exist")
    return run


@router.get("", response_model=Page[RunPublic])
def list_runs(
    session: SessionDep,
    principal: Viewer,
    task: Annotated[Slug | None, Query()] = None,
    status: Annotated[RunStatus | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> Page[RunPublic]:
    return crud.list_runs(session, task=task, status=status, limit=limit, offset=offset)


@router.post("", status_code=201, response_model=RunPublic, summary="Record a new run")
def create_run(body: RunCreate, session: SessionDep, principal: Operator) -> RunPublic:
    run = crud.create_run(session, body, actor=principal.actor("api"))
    session.commit()
    return crud.public_view(session, run)


@router.get("/{run_id}", response_model=RunDetail, responses=NOT_FOUND)
def get_run(run_id: RunId, session: SessionDep, principal: Viewer) -> RunDetail:
    return crud.detail_view(session, _load(session, run_id))


@router.patch(
    "/{run_id}",
    response_model=RunPublic,
    responses={**NOT_FOUND, **CONFLICT},
    summary="Change status (created → running → completed/failed/cancelled) or final model",
)
def update_run(
    run_id: RunId, body: RunUpdate, session: SessionDep, principal: Operator
) -> RunPublic:
    run = crud.update_run(session, _load(session, run_id), body, actor=principal.actor("api"))
    session.commit()
    return crud.public_view(session, run)


@router.put(
    "/{run_id}/rounds/{round_number}",
    response_model=RunRoundPublic,
    responses={**NOT_FOUND, **CONFLICT},
    summary="Report a round's metrics (idempotent: reporting a round again replaces it)",
)
def report_round(
    run_id: RunId,
    round_number: RoundNumber,
    body: RoundReport,
    session: SessionDep,
    principal: Operator,
) -> RunRoundPublic:
    row = crud.report_round(
        session, _load(session, run_id), round_number, body, actor=principal.actor("api")
    )
    session.commit()
    return crud.round_public(row)
