"""The HTTP API: ``/api/v1/...`` plus health and metrics endpoints."""

from __future__ import annotations

from fastapi import APIRouter

from fleet.api import audit, devices, groups, health, models, policies, rollouts, runs, tokens

API_PREFIX = "/api/v1"


def api_router() -> APIRouter:
    """All ``/api/v1`` routes (every one requires a bearer token)."""
    router = APIRouter(prefix=API_PREFIX)
    for module in (devices, groups, models, runs, rollouts, policies, audit, tokens):
        router.include_router(module.router)
    return router


def health_router() -> APIRouter:
    """``/healthz``, ``/readyz`` and ``/metrics``."""
    return health.router
