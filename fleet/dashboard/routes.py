"""The dashboard: its pages composed into one router, static files and error pages.

One module per page registers that page's routes (:mod:`fleet.dashboard.devices_page`,
``models_page``, ``runs_page``, ``policies_page``, ``audit_page``, ``rollouts_page``; log-in and log-out in
:mod:`fleet.dashboard.account`). Pages are rendered on the server from the same CRUD
functions the API uses, so they apply the same validation, role checks and audit
records; forms post back with a CSRF token (see :mod:`fleet.dashboard.session`). No
JavaScript, nothing fetched from other sites (the Content-Security-Policy forbids it).
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from fleet.dashboard.account import account_router
from fleet.dashboard.audit_page import audit_router
from fleet.dashboard.devices_page import devices_router
from fleet.dashboard.models_page import models_router
from fleet.dashboard.pages import Pages
from fleet.dashboard.policies_page import policies_router
from fleet.dashboard.runs_page import runs_router
from fleet.dashboard.session import BadForm, LoginRequired
from fleet.errors import http_exception_handler, validation_exception_handler

PAGE_ROUTERS: tuple[Callable[[Pages], APIRouter], ...] = (
    devices_router,
    models_router,
    runs_router,
    policies_router,
    audit_router,
)
"""The pages behind the navigation bar, each a router factory taking the renderer."""


def build_router(pages: Pages) -> APIRouter:
    """Devices, models, runs and audit pages, and their form actions."""
    router = APIRouter(include_in_schema=False)
    for page_router in PAGE_ROUTERS:
        router.include_router(page_router(pages))
    return router


def install(app: FastAPI) -> None:
    """Add the dashboard routes, static files and their error pages to ``app``."""
    pages = Pages()
    app.include_router(account_router(pages))
    app.include_router(build_router(pages))
    from fleet.dashboard.rollouts_page import rollout_router  # OTA rollouts (issue 7)

    app.include_router(rollout_router(pages))
    app.mount("/static", StaticFiles(packages=[("fleet.dashboard", "static")]), name="static")

    @app.exception_handler(LoginRequired)
    async def _login_required(_request: Request, exc: LoginRequired) -> RedirectResponse:
        return RedirectResponse(f"/login?next={quote(exc.next_path)}", status_code=303)

    def wants_html(request: Request) -> bool:
        path = request.url.path
        if path.startswith("/api/") or path in ("/healthz", "/readyz", "/metrics"):
            return False
        return "text/html" in request.headers.get("accept", "")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if not wants_html(request):
            return await http_exception_handler(request, exc)
        titles = {403: "Not allowed", 404: "Not found", 405: "Not allowed"}
        return pages.render(
            request,
            "error.html",
            principal=None,
            status_code=exc.status_code,
            title=titles.get(exc.status_code, "Something went wrong"),
            message=str(exc.detail),
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        if not wants_html(request):
            return await validation_exception_handler(request, exc)
        return pages.render(
            request,
            "error.html",
            principal=None,
            status_code=404,
            title="Not found",
            message="There is no such page; check the address.",
        )

    @app.exception_handler(BadForm)
    async def _bad_form(request: Request, exc: BadForm) -> HTMLResponse:
        return pages.render(
            request,
            "error.html",
            principal=None,
            status_code=403,
            title="Form refused",
            message=str(exc),
        )
