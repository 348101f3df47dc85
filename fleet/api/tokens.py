"""``/api/v1/tokens`` (admin only) and ``/api/v1/me`` (any token)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request, Response

from fleet.api.deps import COMMON_RESPONSES, NOT_FOUND, Admin, SessionDep, Viewer
from fleet.crud import tokens as crud
from fleet.models.auth import ApiTokenCreate, ApiTokenCreated, ApiTokenPublic, Role
from fleet.models.common import MAX_ID, FleetModel

router = APIRouter(responses=COMMON_RESPONSES)


class Me(FleetModel):
    """The caller as the fleet sees it."""

    token_id: int
    name: str
    role: Role


@router.get("/me", response_model=Me, tags=["tokens"], summary="Who the token belongs to")
def me(principal: Viewer) -> Me:
    return Me(token_id=principal.token_id, name=principal.name, role=principal.role)


@router.get("/tokens", response_model=list[ApiTokenPublic], tags=["tokens"])
def list_tokens(session: SessionDep, principal: Admin) -> list[ApiTokenPublic]:
    return [crud.token_public(t) for t in crud.list_tokens(session)]


@router.post(
    "/tokens",
    status_code=201,
    response_model=ApiTokenCreated,
    tags=["tokens"],
    summary="Create a token; the secret is in this response only",
)
def create_token(
    body: ApiTokenCreate, response: Response, session: SessionDep, principal: Admin
) -> ApiTokenCreated:
    secret, token = crud.create_token(
        session,
        name=body.name,
        role=body.role,
        actor=principal.actor("api"),
        ttl_days=body.ttl_days,
    )
    session.commit()
    response.headers["Cache-Control"] = "no-store"
    return ApiTokenCreated(token=secret, info=crud.token_public(token))


@router.delete(
    "/tokens/{token_id}",
    response_model=ApiTokenPublic,
    responses=NOT_FOUND,
    tags=["tokens"],
    summary="Revoke a token (and end its dashboard sessions)",
)
def revoke_token(
    token_id: Annotated[int, Path(ge=1, le=MAX_ID)],
    request: Request,
    session: SessionDep,
    principal: Admin,
) -> ApiTokenPublic:
    token = crud.revoke_token(session, token_id, actor=principal.actor("api"))
    if token is None:
        raise HTTPException(404, f"token {token_id} does not exist")
    session.commit()
    # Other processes see the new revocation epoch on their next request (fleet.token_cache).
    request.app.state.token_cache.clear()
    return crud.token_public(token)
