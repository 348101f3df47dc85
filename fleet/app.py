"""The fleet server: :func:`create_app` builds the FastAPI app from settings.

Nothing is created at import time. ``fedfleet fleet serve`` calls
:func:`create_app` with settings built from flags and environment; tests call it with
their own database. ``uvicorn --factory fleet.app:app_from_env`` works too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from fleet import migrate
from fleet.api import api_router, health_router
from fleet.api.hot import HotRoutes
from fleet.api_docs import mount_api_docs
from fleet.artifacts import ArtifactStore, load_public_key
from fleet.auth import Principal
from fleet.auth_gate import AuthGate
from fleet.crud.devices import status_counts
from fleet.dashboard import mount_dashboard
from fleet.db import make_engine
from fleet.errors import install_error_handlers
from fleet.limits import BodySizeLimit
from fleet.models.registry import ModelStage, ModelVersion
from fleet.observability import FleetStateCollector, HttpMetrics, MetricsMiddleware
from fleet.promotion import start_promotions
from fleet.settings import FleetSettings
from fleet.token_cache import TokenCache

_DESCRIPTION = """
Admin API of the fedfleet device fleet: devices, groups and tags, the model registry,
federated runs, promotion policies (docs/policies.md), and the audit log.

Every route except `/healthz` and `/readyz` needs `Authorization: Bearer <token>`,
this spec (`/openapi.json`) included. Create the first token with `fedfleet fleet token create --bootstrap --database-url URL`. Roles:
`viewer` reads, `operator` also changes devices, models and runs, `admin` also manages
tokens, applies promotion policies and approves promotions. Errors are JSON: `{"detail": "what was wrong and how to fix it"}`.
"""


def _version() -> str:
    try:
        return version("fedfleet")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0+unknown"


def _fleet_state(engine: Engine, offline_after_s: float) -> dict[str, dict[str, int]]:
    """Counts for the Prometheus gauges (devices by status, models by stage)."""
    with Session(engine) as session:
        devices = {
            status.value: count
            for status, count in status_counts(session, offline_after_s=offline_after_s).items()
        }
        models = {
            ModelStage(stage).value: count
            for stage, count in session.exec(
                select(ModelVersion.stage, func.count()).group_by(col(ModelVersion.stage))
            ).all()
        }
    return {"devices": devices, "models": models}


def create_app(settings: FleetSettings) -> FastAPI:
    """Build the fleet app: engine, migrations (if enabled), routes, dashboard, limits."""
    engine = make_engine(settings.database_url, schema=settings.database_schema)
    if settings.migrate_on_start:
        migrate.upgrade(engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop_promotions = (
            start_promotions(
                engine,
                app.state.artifact_store,
                interval_s=settings.promotion_interval_s,
                schema=settings.database_schema,
            )
            if settings.promotion_interval_s > 0
            else None
        )
        yield
        if stop_promotions is not None:
            stop_promotions()
        engine.dispose()

    app = FastAPI(
        title="fedfleet fleet",
        version=_version(),
        description=_DESCRIPTION,
        lifespan=lifespan,
        openapi_url=None,  # served behind a token by mount_api_docs
        docs_url=None,  # served offline by mount_api_docs
        redoc_url=None,
    )
    registry = CollectorRegistry()
    metrics = HttpMetrics(registry)
    registry.register(FleetStateCollector(lambda: _fleet_state(engine, settings.offline_after_s)))

    app.state.settings = settings
    app.state.engine = engine
    app.state.artifact_store = ArtifactStore(settings.artifact_dir)
    app.state.signing_key = (
        load_public_key(settings.signing_public_key) if settings.signing_public_key else None
    )
    app.state.metrics_registry = registry
    # Shared by the auth gate and the route dependency; revoking a token empties it.
    app.state.token_cache = TokenCache[Principal]()

    install_error_handlers(app)
    app.include_router(health_router())
    app.include_router(api_router())
    mount_api_docs(app)
    mount_dashboard(app)
    # Added last = outermost. The size limit answers first (from Content-Length alone),
    # metrics count every answer, the auth gate refuses before any body is read, the
    # hot routes answer a plain device list or heartbeat without FastAPI's machinery.
    app.add_middleware(
        HotRoutes,
        engine=engine,
        cache=app.state.token_cache,
        offline_after_s=settings.offline_after_s,
    )
    app.add_middleware(AuthGate, engine=engine, cache=app.state.token_cache)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(
        BodySizeLimit,
        body_limit=settings.max_body_bytes,
        upload_limit=settings.max_upload_bytes,
    )
    return app


def app_from_env() -> FastAPI:
    """App factory for ``uvicorn --factory fleet.app:app_from_env`` (reads the env)."""
    return create_app(FleetSettings.from_env())


def settings_environment(settings: FleetSettings) -> dict[str, str]:
    """The ``FEDFLEET_FLEET_*`` variables that give ``settings``' command-line values to
    ``fleet serve --workers N``'s worker processes (the rest already come from the
    environment they inherit)."""
    from fleet.settings import ENV_PREFIX

    values = {
        "DATA_DIR": str(settings.data_dir),
        "DATABASE_URL": settings.database_url,
        "ARTIFACT_DIR": str(settings.artifact_dir),
        "HOST": settings.host,
        "PORT": str(settings.port),
        "DATABASE_SCHEMA": settings.database_schema or "",
    }
    return {ENV_PREFIX + name: value for name, value in values.items()}


def create_app_from_env() -> FastAPI:
    """The app of one ``fleet serve --workers N`` worker: settings from the environment,
    no migration (the supervisor migrated once before starting the workers)."""
    return create_app(FleetSettings.from_env().with_changes(migrate_on_start=False))
