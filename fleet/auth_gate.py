"""Authentication before the body: API requests without a valid token never reach a handler.

FastAPI reads and parses a request's body (a multipart upload is spooled to disk) before it
runs a route's dependencies, the authentication dependency included. Four unauthenticated
500 MB uploads used to spool 1.9 GB before their 401. :class:`AuthGate` is a pure ASGI
middleware that runs first, on the headers alone, for every path under ``/api/``:

- no bearer token, or an unknown, revoked or expired one: 401 (the same reply as the
  route dependency), without reading a byte of the body;
- an artifact upload (the one body that may be large, up to ``max_upload_bytes``) by a
  token below ``operator``: 403. Other bodies are at most ``max_body_bytes`` (1 MiB by
  default) and the route's own dependency checks their exact role;
- the database cannot answer: 503 with ``Retry-After``, as from any route;
- otherwise the request goes on with the caller kept in its ASGI scope, so the route's
  dependency does not look the token up again (:data:`fleet.auth.GATE_PRINCIPAL`).

A token this process authenticated in the last seconds (:mod:`fleet.token_cache`) passes
the gate without a query; the route's dependency then reads the revocation epoch in the
request's own transaction, so a token revoked by another process is refused (401) before
the handler runs — after its body, at most ``max_body_bytes`` (or an upload, for a token
that was an operator's), was read. A revocation through this process empties the cache
and the gate refuses at once.

The reply says ``Connection: close``: the server does not read what the client is still
sending. Bodies of requests that pass the gate are bounded by :mod:`fleet.limits`.
Outside ``/api/`` (health, ``/metrics``, the spec, the dashboard) the routes' own checks
apply; there only the dashboard reads bodies (its forms, at most ``max_body_bytes``).
"""

from __future__ import annotations

import logging

from anyio import to_thread
from fastapi import HTTPException
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from fleet.auth import GATE_PRINCIPAL, GATE_VERIFIED, Principal, authenticate, cached_principal
from fleet.errors import DATABASE_UNAVAILABLE, RETRY_AFTER
from fleet.limits import UPLOAD_PATH_RE, ASGIApp, Receive, Scope, Send, reply_json
from fleet.models.auth import Role
from fleet.token_cache import TokenCache

log = logging.getLogger(__name__)

#: Paths the gate guards (the HTTP API; see :data:`fleet.api.API_PREFIX`).
GATED_PREFIX = "/api/"
#: The role an artifact upload needs (``POST /api/v1/models/{id}/artifacts``).
UPLOAD_ROLE = Role.operator


class AuthGate:
    """Refuse unauthenticated API requests (and uploads by viewers) before the body."""

    def __init__(
        self, app: ASGIApp, *, engine: Engine, cache: TokenCache[Principal] | None = None
    ) -> None:
        self.app = app
        self.engine = engine
        self.cache = cache

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(GATED_PREFIX):
            await self.app(scope, receive, send)
            return
        authorization = None
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                authorization = value.decode("latin-1")
        try:
            # A token cached in the last seconds needs no query here; the route's dependency
            # reads the revocation epoch in its own transaction (fleet.token_cache).
            principal = cached_principal(authorization, self.cache)
            verified = principal is None
            if principal is None:
                principal = await to_thread.run_sync(self._authenticate, authorization)
            if scope.get("method") == "POST" and UPLOAD_PATH_RE.match(scope["path"]):
                principal.require(UPLOAD_ROLE)
        except HTTPException as exc:
            await reply_json(send, exc.status_code, str(exc.detail), headers=exc.headers)
            return
        except OperationalError as exc:
            log.warning("database unavailable: %s", getattr(exc, "orig", exc))
            await reply_json(send, 503, DATABASE_UNAVAILABLE, headers=RETRY_AFTER)
            return
        scope[GATE_PRINCIPAL] = principal
        scope[GATE_VERIFIED] = verified
        await self.app(scope, receive, send)

    def _authenticate(self, authorization: str | None) -> Principal:
        with Session(self.engine) as session:
            return authenticate(session, authorization, cache=self.cache)
