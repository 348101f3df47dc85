"""Dashboard pages: devices, models, runs (with an accuracy chart), audit.

Pages are rendered on the server from the same CRUD functions the API uses, so they
apply the same validation, role checks and audit records; forms post back here with a
CSRF token (see :mod:`fleet.dashboard.session`). No JavaScript, nothing fetched from
other sites (the Content-Security-Policy forbids it).
"""

from __future__ import annotations

import json
from typing import Annotated
from urllib.parse import quote, urlencode

from fastapi import APIRouter, FastAPI, Form, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from sqlmodel import Session
from starlette.exceptions import HTTPException as StarletteHTTPException

from fleet.auth import Principal
from fleet.crud import devices as device_crud
from fleet.crud import groups as group_crud
from fleet.crud import registry as registry_crud
from fleet.crud import runs as run_crud
from fleet.crud.audit_log import AuditFilter, list_events
from fleet.dashboard.account import account_router
from fleet.dashboard.charts import line_chart_svg
from fleet.dashboard.pages import (
    PAGE_SIZE,
    Pages,
    SessionDep,
    actor,
    audit_diff,
    require_operator,
    validated_slug,
)
from fleet.dashboard.session import BadForm, LoginRequired, check_form, require_login
from fleet.errors import FleetError, http_exception_handler, validation_exception_handler
from fleet.models.devices import DeviceCreate, DeviceStatus
from fleet.models.runs import RunStatus


def build_router(pages: Pages) -> APIRouter:
    """Devices, models, runs and audit pages, and their form actions."""
    router = APIRouter(include_in_schema=False)

    # --- devices ------------------------------------------------------------------------

    def devices_page(
        request: Request,
        session: Session,
        principal: Principal,
        *,
        form_error: str | None = None,
        status_code: int = 200,
    ) -> HTMLResponse:
        params = request.query_params
        settings = request.app.state.settings
        errors: list[str] = []
        group = validated_slug(params.get("group"), errors, "group")
        tag = validated_slug(params.get("tag"), errors, "tag")
        target = validated_slug(params.get("target"), errors, "hardware target")
        status: DeviceStatus | None = None
        if params.get("status"):
            try:
                status = DeviceStatus(params["status"])
            except ValueError:
                errors.append(f"ignored the status filter {params['status'][:20]!r}")
        try:
            page = max(1, min(int(params.get("page", "1")), 100_000))
        except ValueError:
            page = 1
        filters = device_crud.DeviceFilter(
            group=group, tags=(tag,) if tag else (), hardware_target=target, status=status
        )
        result = device_crud.list_devices(
            session,
            filters=filters,
            limit=PAGE_SIZE,
            offset=(page - 1) * PAGE_SIZE,
            offline_after_s=settings.offline_after_s,
        )
        kept = {
            k: v
            for k, v in {
                "group": group,
                "tag": tag,
                "target": target,
                "status": status.value if status else None,
            }.items()
            if v
        }
        return pages.render(
            request,
            "devices.html",
            principal=principal,
            status_code=status_code,
            result=result,
            counts=device_crud.status_counts(session, offline_after_s=settings.offline_after_s),
            groups=group_crud.list_groups(session),
            filters=kept,
            filter_errors=errors,
            form_error=form_error,
            page=page,
            pages=max(1, -(-result.total // PAGE_SIZE)),
            query=lambda **extra: urlencode({**kept, **extra}),
        )

    @router.get("/devices")
    def devices(request: Request, session: SessionDep) -> HTMLResponse:
        principal = require_login(request, session)
        return devices_page(request, session, principal)

    @router.post("/devices/enroll")
    def enroll(
        request: Request,
        session: SessionDep,
        csrf: Annotated[str, Form(max_length=200)] = "",
        name: Annotated[str, Form(max_length=200)] = "",
        hardware_target: Annotated[str, Form(max_length=200)] = "",
        group: Annotated[str, Form(max_length=200)] = "",
        tags: Annotated[str, Form(max_length=2000)] = "",
    ) -> HTMLResponse:
        principal = require_login(request, session)
        check_form(request, csrf)
        require_operator(principal)
        settings = request.app.state.settings
        try:
            data = DeviceCreate(
                name=name.strip(),
                hardware_target=hardware_target.strip(),
                group=group.strip() or None,
                tags=[t.strip() for t in tags.split(",") if t.strip()],
            )
            device, password = device_crud.enroll_device(
                session, data, actor=actor(principal), offline_after_s=settings.offline_after_s
            )
            session.commit()
        except ValidationError as exc:
            session.rollback()
            message = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
                for e in exc.errors()
            )
            return devices_page(request, session, principal, form_error=message, status_code=422)
        except FleetError as exc:
            session.rollback()
            return devices_page(
                request, session, principal, form_error=str(exc), status_code=exc.status_code
            )
        return pages.render(
            request,
            "device_enrolled.html",
            principal=principal,
            status_code=201,
            device=device_crud.public_view(
                session, device, offline_after_s=settings.offline_after_s
            ),
            password=password,
        )

    @router.post("/devices/{device_id}/retire")
    def retire(
        device_id: str,
        request: Request,
        session: SessionDep,
        csrf: Annotated[str, Form(max_length=200)] = "",
    ) -> Response:
        principal = require_login(request, session)
        check_form(request, csrf)
        require_operator(principal)
        device = device_crud.get_device(session, device_id[:64])
        if device is None:
            raise HTTPException(404, f"device {device_id[:64]} does not exist")
        device_crud.retire_device(
            session,
            device,
            actor=actor(principal),
            offline_after_s=request.app.state.settings.offline_after_s,
        )
        session.commit()
        return RedirectResponse("/devices", status_code=303)

    # --- models -------------------------------------------------------------------------

    @router.get("/models")
    def models(request: Request, session: SessionDep) -> HTMLResponse:
        principal = require_login(request, session)
        result = registry_crud.list_models(session, task=None, stage=None, limit=200, offset=0)
        return pages.render(request, "models.html", principal=principal, result=result)

    @router.post("/models/{model_id}/{action}")
    def model_action(
        model_id: int,
        action: str,
        request: Request,
        session: SessionDep,
        csrf: Annotated[str, Form(max_length=200)] = "",
    ) -> Response:
        principal = require_login(request, session)
        check_form(request, csrf)
        require_operator(principal)
        model = registry_crud.get_model(session, model_id) if 0 < model_id < 2**31 else None
        if model is None:
            raise HTTPException(404, f"model version {model_id} does not exist")
        if action == "promote":
            registry_crud.promote_model(session, model, actor=actor(principal))
        elif action == "deprecate":
            registry_crud.deprecate_model(session, model, actor=actor(principal))
        else:
            raise HTTPException(404, f"unknown model action {action[:20]!r}")
        session.commit()
        return RedirectResponse("/models", status_code=303)

    @router.get("/artifacts/{artifact_id}/download")
    def download(artifact_id: int, request: Request, session: SessionDep) -> FileResponse:
        require_login(request, session)
        artifact = (
            registry_crud.get_artifact(session, artifact_id) if 0 < artifact_id < 2**31 else None
        )
        if artifact is None:
            raise HTTPException(404, f"artifact {artifact_id} does not exist")
        path = request.app.state.artifact_store.path_for(artifact.sha256)
        if not path.is_file():
            raise HTTPException(404, f"artifact {artifact_id}'s file is missing from storage")
        return FileResponse(path, media_type="application/octet-stream", filename=artifact.filename)

    # --- runs ---------------------------------------------------------------------------

    @router.get("/runs")
    def runs(request: Request, session: SessionDep) -> HTMLResponse:
        principal = require_login(request, session)
        result = run_crud.list_runs(session, task=None, status=None, limit=200, offset=0)
        return pages.render(request, "runs.html", principal=principal, result=result)

    @router.get("/runs/{run_id}")
    def run_detail(run_id: int, request: Request, session: SessionDep) -> HTMLResponse:
        principal = require_login(request, session)
        run = run_crud.get_run(session, run_id) if 0 < run_id < 2**31 else None
        if run is None:
            raise HTTPException(404, f"run {run_id} does not exist")
        detail = run_crud.detail_view(session, run)
        accuracy = line_chart_svg(
            [(r.round, r.accuracy) for r in detail.rounds],
            title=f"Accuracy per round — run {detail.id} ({detail.task})",
            x_label="round",
            y_label="accuracy",
            y_range=(0.0, 1.0),
        )
        loss = None
        if any(r.loss is not None for r in detail.rounds):
            loss = line_chart_svg(
                [(r.round, r.loss) for r in detail.rounds],
                title="Loss per round",
                x_label="round",
                y_label="loss",
            )
        return pages.render(
            request,
            "run_detail.html",
            principal=principal,
            run=detail,
            accuracy_chart=accuracy,
            loss_chart=loss,
            config_json=json.dumps(detail.config, indent=2, sort_keys=True),
            terminal=RunStatus(detail.status).terminal,
        )

    # --- audit --------------------------------------------------------------------------

    @router.get("/audit")
    def audit(request: Request, session: SessionDep) -> HTMLResponse:
        principal = require_login(request, session)
        params = request.query_params
        actor = (params.get("actor") or "")[:100] or None
        action = (params.get("action") or "")[:63] or None
        entity = (params.get("entity_type") or "")[:32] or None
        try:
            page = max(1, min(int(params.get("page", "1")), 100_000))
        except ValueError:
            page = 1
        result = list_events(
            session,
            filters=AuditFilter(actor=actor, action=action, entity_type=entity),
            limit=PAGE_SIZE,
            offset=(page - 1) * PAGE_SIZE,
        )
        rows = [(event, audit_diff(event.before, event.after)) for event in result.items]
        kept = {
            k: v for k, v in {"actor": actor, "action": action, "entity_type": entity}.items() if v
        }
        return pages.render(
            request,
            "audit.html",
            principal=principal,
            result=result,
            rows=rows,
            filters=kept,
            page=page,
            pages=max(1, -(-result.total // PAGE_SIZE)),
            query=lambda **extra: urlencode({**kept, **extra}),
        )

    return router

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
