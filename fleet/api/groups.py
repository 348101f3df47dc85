"""``/api/v1/groups`` and ``/api/v1/tags``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Response

from fleet.api.deps import COMMON_RESPONSES, CONFLICT, NOT_FOUND, Operator, SessionDep, Viewer
from fleet.crud import groups as crud
from fleet.models.common import Slug
from fleet.models.devices import Group, GroupCreate, GroupPublic, GroupUpdate, TagCreate, TagPublic

router = APIRouter(responses=COMMON_RESPONSES)

GroupName = Annotated[Slug, Path(description="Group name.")]
TagName = Annotated[Slug, Path(description="Tag name.")]


def _load(session: SessionDep, name: str) -> Group:
    group = crud.group_by_name(session, name)
    if group is None:
        raise HTTPException(404, f"group '{name}' does not exist")
    return group


@router.get("/groups", response_model=list[GroupPublic], tags=["groups"])
def list_groups(session: SessionDep, principal: Viewer) -> list[GroupPublic]:
    return crud.list_groups(session)


@router.post(
    "/groups", status_code=201, response_model=GroupPublic, responses=CONFLICT, tags=["groups"]
)
def create_group(body: GroupCreate, session: SessionDep, principal: Operator) -> GroupPublic:
    group = crud.create_group(session, body, actor=principal.actor("api"))
    session.commit()
    return crud.group_public(session, group)


@router.get("/groups/{name}", response_model=GroupPublic, responses=NOT_FOUND, tags=["groups"])
def get_group(name: GroupName, session: SessionDep, principal: Viewer) -> GroupPublic:
    return crud.group_public(session, _load(session, name))


@router.patch(
    "/groups/{name}",
    response_model=GroupPublic,
    responses={**NOT_FOUND, **CONFLICT},
    tags=["groups"],
)
def update_group(
    name: GroupName, body: GroupUpdate, session: SessionDep, principal: Operator
) -> GroupPublic:
    group = crud.update_group(session, _load(session, name), body, actor=principal.actor("api"))
    session.commit()
    return crud.group_public(session, group)


@router.delete(
    "/groups/{name}",
    status_code=204,
    responses={**NOT_FOUND, **CONFLICT},
    tags=["groups"],
    summary="Delete a group that has no active devices",
)
def delete_group(name: GroupName, session: SessionDep, principal: Operator) -> Response:
    crud.delete_group(session, _load(session, name), actor=principal.actor("api"))
    session.commit()
    return Response(status_code=204)


@router.get("/tags", response_model=list[TagPublic], tags=["tags"])
def list_tags(session: SessionDep, principal: Viewer) -> list[TagPublic]:
    return crud.list_tags(session)


@router.post("/tags", status_code=201, response_model=TagPublic, responses=CONFLICT, tags=["tags"])
def create_tag(body: TagCreate, session: SessionDep, principal: Operator) -> TagPublic:
    tag = crud.create_tag(session, body.name, actor=principal.actor("api"))
    session.commit()
    return crud.tag_public(session, tag)


@router.delete(
    "/tags/{name}",
    status_code=204,
    responses=NOT_FOUND,
    tags=["tags"],
    summary="Delete a tag and remove it from every device",
)
def delete_tag(name: TagName, session: SessionDep, principal: Operator) -> Response:
    tag = crud.tag_by_name(session, name)
    if tag is None:
        raise HTTPException(404, f"tag '{name}' does not exist")
    crud.delete_tag(session, tag, actor=principal.actor("api"))
    session.commit()
    return Response(status_code=204)
