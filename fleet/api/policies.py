"""``/api/v1/policies`` (promotion policies, versioned per group) and ``/api/v1/promotions``.

Applying a policy and approving a promotion are **admin** operations (a policy decides
what reaches a group's devices without anyone typing a command, and may name a signing
key the fleet holds); everyone with a token reads them.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query

from fleet.api.deps import (
    COMMON_RESPONSES,
    CONFLICT,
    NOT_FOUND,
    Admin,
    SessionDep,
    SettingsDep,
    Viewer,
)
from fleet.crud import policies as crud
from fleet.crud.groups import group_by_name
from fleet.crud.timeline import TimelineItem, timeline
from fleet.models.common import MAX_ID, Slug
from fleet.models.policies import PolicyApply, PolicyPublic, Promotion, PromotionPublic

router = APIRouter(responses=COMMON_RESPONSES)

GroupName = Annotated[Slug, Path(description="Group name.")]


@router.post(
    "/policies",
    status_code=201,
    response_model=PolicyPublic,
    tags=["policies"],
    summary="Apply a promotion policy: its group's next version (admin)",
)
def apply_policy(
    body: PolicyApply, session: SessionDep, settings: SettingsDep, principal: Admin
) -> PolicyPublic:
    row = crud.apply_policy(
        session, body.source, actor=principal.actor("api"), key_dir=settings.signing_key_dir
    )
    session.commit()
    group = str(row.document["group"])
    return crud.policy_public(row, group=group, current=True)


@router.get("/policies", response_model=list[PolicyPublic], tags=["policies"])
def list_policies(session: SessionDep, principal: Viewer) -> list[PolicyPublic]:
    """Every group's current policy."""
    return crud.current_policies(session)


@router.get(
    "/policies/{group}", response_model=PolicyPublic, responses=NOT_FOUND, tags=["policies"]
)
def get_policy(
    group: GroupName,
    session: SessionDep,
    principal: Viewer,
    version: Annotated[
        int | None,
        Query(ge=1, le=MAX_ID, description="A past version (default: the current one)."),
    ] = None,
) -> PolicyPublic:
    found = group_by_name(session, group)
    if found is None:
        raise HTTPException(404, f"group '{group}' does not exist")
    policy = crud.policy_version(session, found, version)
    if policy is None:
        which = "no policy" if version is None else f"no policy version {version}"
        raise HTTPException(
            404, f"group '{group}' has {which}; see GET /api/v1/policies/{group}/versions"
        )
    return policy


@router.get(
    "/policies/{group}/versions",
    response_model=list[PolicyPublic],
    responses=NOT_FOUND,
    tags=["policies"],
)
def policy_versions(group: GroupName, session: SessionDep, principal: Viewer) -> list[PolicyPublic]:
    """Every version of the group's policy, newest first."""
    found = group_by_name(session, group)
    if found is None:
        raise HTTPException(404, f"group '{group}' does not exist")
    return crud.history(session, found)


@router.get("/promotions", response_model=list[PromotionPublic], tags=["policies"])
def list_promotions(session: SessionDep, principal: Viewer) -> list[PromotionPublic]:
    """The newest promotions (100), newest first."""
    return crud.list_promotions(session)


@router.post(
    "/promotions/{promotion_id}/approve",
    response_model=PromotionPublic,
    responses={**NOT_FOUND, **CONFLICT},
    tags=["policies"],
    summary="Approve a promotion waiting for an operator (admin)",
)
def approve_promotion(
    promotion_id: Annotated[int, Path(ge=1, le=MAX_ID, description="Promotion id.")],
    session: SessionDep,
    principal: Admin,
) -> PromotionPublic:
    promotion = session.get(Promotion, promotion_id)
    if promotion is None:
        raise HTTPException(404, f"promotion {promotion_id} does not exist")
    crud.approve_promotion(session, promotion, actor=principal.actor("api"))
    session.commit()
    return crud.promotion_public(session, promotion)


PromotionId = Annotated[int, Path(ge=1, le=MAX_ID, description="Promotion id.")]


@router.get(
    "/promotions/{promotion_id}",
    response_model=PromotionPublic,
    responses=NOT_FOUND,
    tags=["policies"],
)
def get_promotion(
    promotion_id: PromotionId, session: SessionDep, principal: Viewer
) -> PromotionPublic:
    promotion = session.get(Promotion, promotion_id)
    if promotion is None:
        raise HTTPException(404, f"promotion {promotion_id} does not exist")
    return crud.promotion_public(session, promotion)


@router.get(
    "/timeline",
    response_model=list[TimelineItem],
    responses=NOT_FOUND,
    tags=["policies"],
    summary="A group's chain: run, version, gates, bundles, promotion, waves, drift, retraining",
)
def get_timeline(
    session: SessionDep,
    principal: Viewer,
    group: Annotated[Slug, Query(description="Group name.")],
    model_version: Annotated[
        int | None, Query(ge=1, le=MAX_ID, description="Only this model version's chain.")
    ] = None,
) -> list[TimelineItem]:
    """Oldest first; each automatic decision with its actor, timestamp and reason."""
    found = group_by_name(session, group)
    if found is None:
        raise HTTPException(404, f"group '{group}' does not exist")
    return timeline(session, found, model_version_id=model_version)
