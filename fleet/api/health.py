"""``/healthz`` and ``/readyz`` (no token), ``/metrics`` (viewer token)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from fleet import migrate
from fleet.api.deps import COMMON_RESPONSES, Viewer
from fleet.models.common import FleetModel

router = APIRouter(tags=["health"])


class Health(FleetModel):
    status: str


class Readiness(FleetModel):
    status: str
    detail: str
    revision: str | None


@router.get("/healthz", response_model=Health, summary="The process is up (no token needed)")
def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready: see detail."}},
    summary="The database is reachable and migrated (no token needed)",
)
def readyz(request: Request) -> Any:
    engine = request.app.state.engine
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        revision = migrate.current_revision(engine)
    except Exception as exc:  # any driver error means "not ready"
        body = Readiness(
            status="not ready", detail=f"database unreachable: {type(exc).__name__}", revision=None
        )
        return JSONResponse(body.model_dump(), status_code=503)
    head = migrate.head_revision()
    if revision != head:
        body = Readiness(
            status="not ready",
            detail=f"database schema is at {revision}, this server needs {head}; run `fedfleet fleet migrate`",
            revision=revision,
        )
        return JSONResponse(body.model_dump(), status_code=503)
    return Readiness(status="ready", detail="database reachable and migrated", revision=revision)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        **{k: v for k, v in COMMON_RESPONSES.items() if k in (401, 403)},
        200: {
            "content": {"text/plain": {"schema": {"type": "string"}}},
            "description": "Prometheus text exposition format.",
        },
    },
    summary="Prometheus metrics (viewer token; Prometheus sends it with `authorization`)",
)
def metrics(request: Request, principal: Viewer) -> Response:
    return Response(
        generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST
    )
