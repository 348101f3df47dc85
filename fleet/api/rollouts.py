"""``/api/v1/rollouts``, telemetry summaries and drift events (OTA, issue 7).

Creating a rollout only records it; the fleet's MQTT service (``fedfleet fleet mqtt``)
carries it out wave by wave. Progress per wave is part of every rollout view.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query
from pydantic import Field as PydanticField
from pydantic import model_validator
from sqlmodel import col, func, select

from fleet.api.deps import COMMON_RESPONSES, CONFLICT, NOT_FOUND, Operator, SessionDep, Viewer
from fleet.crud import telemetry
from fleet.crud.rollouts import (
    abort_rollout,
    create_rollout,
    detail_view,
    pause_rollout,
    public_view,
    resume_rollout,
)
from fleet.models.common import MAX_ID, FiniteFloat, InputModel, Page, Slug
from fleet.models.devices import Group
from fleet.models.ota import (
    DriftEvent,
    DriftEventPublic,
    DriftReferencePublic,
    Reference,
    Rollout,
    RolloutAbort,
    RolloutCreate,
    RolloutDetail,
    RolloutPublic,
    RolloutStatus,
    check_reference,
)
from fleet.models.runs import RunPublic

router = APIRouter(tags=["rollouts"], responses=COMMON_RESPONSES)

RolloutId = Annotated[int, Path(ge=1, le=MAX_ID, description="Rollout id.")]
EventId = Annotated[int, Path(ge=1, le=MAX_ID, description="Drift event id.")]
ModelId = Annotated[int, Query(ge=1, le=MAX_ID, description="Model version id.")]
Limit = Annotated[int, Query(ge=1, le=500)]
Offset = Annotated[int, Query(ge=0, le=1_000_000)]


@router.post(
    "/rollouts",
    status_code=201,
    response_model=RolloutPublic,
    responses=CONFLICT,
    summary="Start a staged rollout of a model version to a group",
)
def post_rollout(body: RolloutCreate, session: SessionDep, principal: Operator) -> RolloutPublic:
    rollout = create_rollout(session, body, actor=principal.actor("api"))
    session.commit()
    return public_view(session, rollout)


@router.get("/rollouts", response_model=Page[RolloutPublic])
def list_rollouts(
    session: SessionDep,
    principal: Viewer,
    status: Annotated[RolloutStatus | None, Query()] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[RolloutPublic]:
    statement = select(Rollout)
    counter = select(func.count()).select_from(Rollout)
    if status is not None:
        statement = statement.where(Rollout.status == status)
        counter = counter.where(Rollout.status == status)
    rows = session.exec(
        statement.order_by(col(Rollout.id).desc()).limit(limit).offset(offset)
    ).all()
    return Page[RolloutPublic](
        items=[public_view(session, r) for r in rows],
        total=session.exec(counter).one(),
        limit=limit,
        offset=offset,
    )


@router.get(
    "/rollouts/{rollout_id}",
    response_model=RolloutDetail,
    responses=NOT_FOUND,
    summary="A rollout with each wave's devices, their states and who is waited for",
)
def get_rollout(rollout_id: RolloutId, session: SessionDep, principal: Viewer) -> RolloutDetail:
    rollout = session.get(Rollout, rollout_id)
    if rollout is None:
        raise HTTPException(404, f"rollout {rollout_id} does not exist")
    return detail_view(session, rollout)


def _steered(session: SessionDep, rollout: Rollout | None, rollout_id: int) -> RolloutDetail:
    if rollout is None:
        raise HTTPException(404, f"rollout {rollout_id} does not exist")
    session.commit()
    return detail_view(session, rollout)


@router.post(
    "/rollouts/{rollout_id}/pause",
    response_model=RolloutDetail,
    responses={**NOT_FOUND, **CONFLICT},
    summary="Pause a running rollout: no new wave, no resend; answers still count",
)
def pause(rollout_id: RolloutId, session: SessionDep, principal: Operator) -> RolloutDetail:
    rollout = pause_rollout(session, rollout_id, actor=principal.actor("api"))
    return _steered(session, rollout, rollout_id)


@router.post(
    "/rollouts/{rollout_id}/resume",
    response_model=RolloutDetail,
    responses={**NOT_FOUND, **CONFLICT},
    summary="Resume a paused rollout",
)
def resume(rollout_id: RolloutId, session: SessionDep, principal: Operator) -> RolloutDetail:
    rollout = resume_rollout(session, rollout_id, actor=principal.actor("api"))
    return _steered(session, rollout, rollout_id)


@router.post(
    "/rollouts/{rollout_id}/abort",
    response_model=RolloutDetail,
    responses={**NOT_FOUND, **CONFLICT},
    summary="Abort a running or paused rollout, rolling its current wave back or not",
)
def abort(
    rollout_id: RolloutId, body: RolloutAbort, session: SessionDep, principal: Operator
) -> RolloutDetail:
    rollout = abort_rollout(
        session, rollout_id, rollback=body.rollback, actor=principal.actor("api")
    )
    return _steered(session, rollout, rollout_id)


@router.get("/telemetry/summary", response_model=telemetry.TelemetrySummary)
def telemetry_summary(
    session: SessionDep,
    principal: Viewer,
    model_version_id: ModelId,
    group: Annotated[Slug | None, Query()] = None,
) -> telemetry.TelemetrySummary:
    return telemetry.summarize(session, model_version_id=model_version_id, group=group)


class DriftReferenceIn(InputModel):
    """A model's training reference: per-feature interior bin edges (at least one, so at
    least two bins; strictly increasing) and the fraction of training samples per bin
    (``len(edges[j]) + 1`` values summing to 1); rules in ``check_reference``."""

    edges: list[list[FiniteFloat]] = PydanticField(min_length=1, max_length=4096)
    proportions: list[list[FiniteFloat]] = PydanticField(min_length=1, max_length=4096)
    samples: int = PydanticField(ge=1, le=2**31 - 1)

    @model_validator(mode="after")
    def _consistent(self) -> DriftReferenceIn:
        check_reference(self.edges, self.proportions)
        return self


@router.put(
    "/models/{model_id}/drift-reference",
    status_code=204,
    responses=NOT_FOUND,
    summary="Set the training reference drift is measured against",
)
def put_reference(
    model_id: Annotated[int, Path(ge=1, le=MAX_ID)],
    body: DriftReferenceIn,
    session: SessionDep,
    principal: Operator,
) -> None:
    from fleet.models.registry import ModelVersion

    if session.get(ModelVersion, model_id) is None:
        raise HTTPException(404, f"model version {model_id} does not exist")
    telemetry.set_reference(
        session,
        model_version_id=model_id,
        reference=Reference(
            edges=tuple(tuple(e) for e in body.edges),
            proportions=tuple(tuple(p) for p in body.proportions),
            samples=body.samples,
        ),
        actor=principal.actor("api"),
    )
    session.commit()


@router.get(
    "/models/{model_id}/drift-reference",
    response_model=DriftReferencePublic,
    responses=NOT_FOUND,
    summary="Read the training reference drift is measured against",
)
def get_reference(
    model_id: Annotated[int, Path(ge=1, le=MAX_ID)],
    session: SessionDep,
    principal: Viewer,
) -> DriftReferencePublic:
    reference = telemetry.get_reference(session, model_id)
    if reference is None:
        raise HTTPException(404, f"model version {model_id} has no drift reference; set one (PUT)")
    return reference


@router.get("/drift-events", response_model=Page[DriftEventPublic])
def list_drift_events(
    session: SessionDep,
    principal: Viewer,
    model_version_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    group: Annotated[Slug | None, Query()] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[DriftEventPublic]:
    statement = select(DriftEvent)
    counter = select(func.count()).select_from(DriftEvent)
    if model_version_id is not None:
        statement = statement.where(DriftEvent.model_version_id == model_version_id)
        counter = counter.where(DriftEvent.model_version_id == model_version_id)
    if group is not None:
        row = session.exec(select(Group).where(Group.name == group)).first()
        group_id = row.id if row else -1
        statement = statement.where(DriftEvent.group_id == group_id)
        counter = counter.where(DriftEvent.group_id == group_id)
    rows = session.exec(
        statement.order_by(col(DriftEvent.id).desc()).limit(limit).offset(offset)
    ).all()
    return Page[DriftEventPublic](
        items=[telemetry.event_public(session, e) for e in rows],
        total=session.exec(counter).one(),
        limit=limit,
        offset=offset,
    )


@router.post(
    "/drift-events/{event_id}/runs",
    status_code=201,
    response_model=RunPublic,
    responses={**NOT_FOUND, **CONFLICT},
    summary="Create a retraining run from a drift event",
)
def retrain(event_id: EventId, session: SessionDep, principal: Operator) -> RunPublic:
    from fleet.crud import runs as runs_crud

    event = session.get(DriftEvent, event_id)
    if event is None:
        raise HTTPException(404, f"drift event {event_id} does not exist")
    run = telemetry.retrain_from_event(session, event, actor=principal.actor("api"))
    session.commit()
    return runs_crud.public_view(session, run)
