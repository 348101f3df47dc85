"""Who is calling, and may they? Bearer tokens with three roles, checked in one place.

:func:`require` builds the FastAPI dependency every API route declares (through the
``Viewer``/``Operator``/``Admin`` aliases in :mod:`fleet.api.deps`): no token → 401,
a token whose role is too low → 403. :func:`authenticate` is the token check itself,
shared with :mod:`fleet.auth_gate`, which runs it before a request body is read. The dashboard resolves its session cookie to the
same :class:`Principal` and checks roles with the same :meth:`Principal.require`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from anyio import to_thread
from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from sqlalchemy import Connection
from sqlmodel import Session

from fleet import credentials
from fleet.audit import Actor
from fleet.crud import tokens as token_crud
from fleet.models.auth import ApiToken, Role
from fleet.models.common import utcnow
from fleet.token_cache import TokenCache, revocation_epoch

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


def _bearer_secret(authorization: str | None) -> str | None:
    scheme, secret = get_authorization_scheme_param(authorization)
    return secret if scheme.lower() == "bearer" and secret else None


def cached_principal(
    authorization: str | None, cache: TokenCache[Principal] | None
) -> Principal | None:
    """The caller as cached in the last seconds, without a query: a hint for the gate.

    Not a verdict: the route's dependency still reads the revocation epoch (see
    :func:`require`), so a token revoked by another process is refused before the handler.
    """
    secret = _bearer_secret(authorization)
    if secret is None or cache is None:
        return None
    return cache.peek(credentials.hash_secret(secret), now=utcnow())


def authenticate(
    session: Session, authorization: str | None, *, cache: TokenCache[Principal] | None = None
) -> Principal:
    """The caller named by an ``Authorization`` header value; 401 when there is none.

    The one place a bearer token is checked: the :func:`require` dependency and the
    :class:`fleet.auth_gate.AuthGate` middleware (which runs before any body is read)
    both call it. With a ``cache`` (:mod:`fleet.token_cache`), a token seen in the last
    seconds is not queried again, but the revocation epoch is read on every call, so a
    token revoked anywhere is refused at once.
    """
    secret = _bearer_secret(authorization)
    if secret is None:
        raise HTTPException(
            401,
            f"missing bearer token: send 'Authorization: Bearer <token>' ({_HOW_TO_GET_ONE})",
            headers={"WWW-Authenticate": "Bearer"},
        )
    now = utcnow()
    if cache is None:
        token = token_crud.find_active_token(session, secret, now=now)
    else:
        token_hash = credentials.hash_secret(secret)
        epoch = revocation_epoch(session)
        cached = cache.get(token_hash, epoch=epoch, now=now)
        if cached is not None:
            return cached
        token = token_crud.find_active_token(session, secret, now=now)
        if token is not None:
            principal = Principal.from_token(token)
            cache.put(token_hash, principal, epoch=epoch, expires_at=token.expires_at)
            return principal
    if token is None:
        raise HTTPException(
            401,
            f"the bearer token is unknown, revoked or expired ({_HOW_TO_GET_ONE})",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    return Principal.from_token(token)


#: The ASGI scope key where :class:`fleet.auth_gate.AuthGate` leaves the caller it
#: authenticated (the scope, unlike a server's shared state, is this request's alone).
GATE_PRINCIPAL = "fedfleet.gate_principal"
#: Set (True) in the scope when the gate checked the token in the database itself; a
#: principal the gate only found in the token cache is checked again by :func:`require`.
GATE_VERIFIED = "fedfleet.gate_verified"


def gate_principal(
    connection: Connection,
    scope: MutableMapping[str, Any],
    authorization: str | None,
    cache: TokenCache[Principal] | None,
    *,
    epoch: int | None = None,
) -> Principal | None:
    """The caller of a request the gate let through, checked as :func:`require` checks it,
    in ``connection``'s transaction; None when only the full route can tell (no gate
    principal, or a cached one the revocation epoch no longer vouches for). ``epoch``:
    the revocation epoch already read in this transaction (else it is read here).

    For the lean routes (:mod:`fleet.api.hot`): a principal the gate verified in the
    database is used as is; one the gate found in the token cache is trusted only if
    the cache still holds it under the revocation epoch read here — so a token revoked
    in any process is never answered by a lean route (the full route then says 401).
    """
    principal = scope.get(GATE_PRINCIPAL)
    if not isinstance(principal, Principal):
        return None
    if scope.get(GATE_VERIFIED):
        return principal
    secret = _bearer_secret(authorization)
    if secret is None or cache is None:
        return None
    if epoch is None:
        epoch = revocation_epoch(connection)
    return cache.get(credentials.hash_secret(secret), epoch=epoch, now=utcnow())


def require(
    role: Role, session_dependency: Callable[..., Any]
) -> Callable[..., Awaitable[Principal]]:
    """The dependency that authenticates a bearer token and checks it has ``role``.

    A request the gate already authenticated in the database (before its body was read)
    is not looked up again: the gate's :class:`Principal` is used and only the role is
    checked here. One the gate let through on the token cache's word is authenticated
    here, in the request's own session: the cache answers, after the revocation epoch is
    read (:mod:`fleet.token_cache`).
    """

    # Plain defaults, not Annotated: the annotations of this closure are strings (PEP 563)
    # and FastAPI could not resolve the local ``session_dependency`` from them.
    async def dependency(
        request: Request,
        session: Session = Depends(session_dependency),  # noqa: B008
        # Declared for the OpenAPI security scheme; the header is read below.
        _credentials: HTTPAuthorizationCredentials | None = Depends(bearer_scheme),  # noqa: B008
    ) -> Principal:
        # Async: a request the gate verified needs no worker thread at all.
        gate_principal = request.scope.get(GATE_PRINCIPAL)
        if isinstance(gate_principal, Principal) and request.scope.get(GATE_VERIFIED):
            principal = gate_principal
        else:
            principal = await to_thread.run_sync(
                partial(
                    authenticate,
                    session,
                    request.headers.get("authorization"),
                    cache=getattr(request.app.state, "token_cache", None),
                )
            )
        principal.require(role)
        request.state.principal = principal
        return principal

    dependency.__name__ = f"require_{role.value}"
    return dependency
