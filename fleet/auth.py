"""Who is calling, and may they? Bearer tokens with three roles, checked in one place.

:func:`require` builds the FastAPI dependency every API route declares (through the
``Viewer``/``Operator``/``Admin`` aliases in :mod:`fleet.api.deps`): no token → 401,
a token whose role is too low → 403. The dashboard resolves its session cookie to the
same :class:`Principal` and checks roles with the same :meth:`Principal.require`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session

from fleet.audit import Actor
from fleet.crud import tokens as token_crud
from fleet.models.auth import ApiToken, Role
from fleet.models.common import utcnow

#: The OpenAPI security scheme (every protected operation declares it).
bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="ApiToken",
    description="An API token from `fedfleet fleet token create --role ROLE`.",
)

_HOW_TO_GET_ONE = "create one with `fedfleet fleet token create --role viewer`"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller."""

    token_id: int
    name: str
    role: Role

    @classmethod
    def from_token(cls, token: ApiToken) -> Principal:
        return cls(token_id=token.id or 0, name=token.name, role=token.role)

    def actor(self, source: str) -> Actor:
        """How this caller appears in the audit log."""
        return Actor(name=f"token:{self.name}#{self.token_id}", role=self.role.value, source=source)

    def require(self, role: Role) -> None:
        """Raise 403 unless this caller's role includes ``role``."""
        if not self.role.allows(role):
            raise HTTPException(
                403,
                f"this needs the '{role.value}' role or higher; token '{self.name}' has "
                f"'{self.role.value}' (ask an admin for a token with more rights)",
            )


def require(role: Role, session_dependency: Callable[..., Session]) -> Callable[..., Principal]:
    """The dependency that authenticates a bearer token and checks it has ``role``."""

    # Plain defaults, not Annotated: the annotations of this closure are strings (PEP 563)
    # and FastAPI could not resolve the local ``session_dependency`` from them.
    def dependency(
        request: Request,
        session: Session = Depends(session_dependency),  # noqa: B008
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer_scheme),  # noqa: B008
    ) -> Principal:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise HTTPException(
                401,
                f"missing bearer token: send 'Authorization: Bearer <token>' ({_HOW_TO_GET_ONE})",
                headers={"WWW-Authenticate": "Bearer"},
            )
        token = token_crud.find_active_token(session, credentials.credentials, now=utcnow())
        if token is None:
            raise HTTPException(
                401,
                f"the bearer token is unknown, revoked or expired ({_HOW_TO_GET_ONE})",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        principal = Principal.from_token(token)
        principal.require(role)
        request.state.principal = principal
        return principal

    dependency.__name__ = f"require_{role.value}"
    return dependency
