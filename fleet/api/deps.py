"""Dependencies shared by the API routes: settings, database session, caller.

``Viewer``, ``Operator`` and ``Admin`` are the only way routes authenticate; each is the
:func:`fleet.auth.require` dependency for that role. ``COMMON_RESPONSES`` documents the
error bodies every protected route can return.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from anyio import to_thread
from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlmodel import Session

from fleet.artifacts import ArtifactStore
from fleet.auth import Principal, require
from fleet.db import FleetSession
from fleet.models.auth import Role
from fleet.models.common import ErrorBody
from fleet.settings import FleetSettings

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def get_settings(request: Request) -> FleetSettings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_engine(request: Request) -> Engine:
    return request.app.state.engine  # type: ignore[no-any-return]


def get_store(request: Request) -> ArtifactStore:
    return request.app.state.artifact_store  # type: ignore[no-any-return]


async def get_session(request: Request) -> AsyncIterator[Session]:
    """One session per request. Routes commit explicitly; anything uncommitted is
    rolled back when the request ends.

    Async so FastAPI does not hop to a worker thread to open it and again to close it
    (profiled: each hop costs more CPU than a heartbeat's query): opening a session does
    no I/O; closing it (a rollback, returning the connection) runs in a worker thread.
    """
    import fleet.audit  # noqa: F401  (attaches the audit checks to FleetSession)

    engine = get_engine(request)
    if request.method not in SAFE_METHODS:
        engine = _write_engine(request, engine)
    session = FleetSession(engine, expire_on_commit=False)
    try:
        yield session
    finally:
        await to_thread.run_sync(session.close)


def _write_engine(request: Request, engine: Engine) -> Engine:
    # One write-option engine per app, not one per request.
    cached = getattr(request.app.state, "write_engine", None)
    if cached is None:
        cached = engine.execution_options(fleet_write=True)
        request.app.state.write_engine = cached
    return cached  # type: ignore[no-any-return]


SettingsDep = Annotated[FleetSettings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
Viewer = Annotated[Principal, Depends(require(Role.viewer, get_session))]
Operator = Annotated[Principal, Depends(require(Role.operator, get_session))]
Admin = Annotated[Principal, Depends(require(Role.admin, get_session))]


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


COMMON_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error("The request body could not be read (not UTF-8 JSON or a readable form)."),
    401: _error("Missing, unknown, revoked or expired bearer token."),
    403: _error("The token's role is too low for this operation."),
    422: _error("The request is malformed or names something that does not exist."),
    503: _error("The database is busy or unreachable; retry."),
}
Responses = dict[int | str, dict[str, Any]]
NOT_FOUND: Responses = {404: _error("No such resource.")}
CONFLICT: Responses = {409: _error("The request clashes with the current state.")}
