"""The dashboard's devices page: the filtered, paged device list, enrolment from a form
(the MQTT password is shown once) and retiring a device."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlmodel import Session

from fleet.auth import Principal
from fleet.crud import devices as device_crud
from fleet.crud import groups as group_crud
from fleet.dashboard.pages import (
    PAGE_SIZE,
    Pages,
    SessionDep,
    actor,
    page_count,
    page_number,
    require_operator,
    validated_slug,
)
from fleet.dashboard.session import check_form, require_login
from fleet.errors import FleetError
from fleet.models.devices import DeviceCreate, DeviceStatus


@dataclass(frozen=True)
class _DeviceQuery:
    """The page's filters as read from the query string; bad ones are reported, not fatal."""

    filters: device_crud.DeviceFilter
    kept: dict[str, str]  # the valid filters, carried into the pager's links
    errors: list[str]
    page: int


def _device_query(request: Request) -> _DeviceQuery:
    params = request.query_params
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
    page = page_number(params)
    filters = device_crud.DeviceFilter(
        group=group, tags=(tag,) if tag else (), hardware_target=target, status=status
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
    return _DeviceQuery(filters=filters, kept=kept, errors=errors, page=page)


def _devices_page(
    pages: Pages,
    request: Request,
    session: Session,
    principal: Principal,
    *,
    form_error: str | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    settings = request.app.state.settings
    query = _device_query(request)
    result = device_crud.list_devices(
        session,
        filters=query.filters,
        limit=PAGE_SIZE,
        offset=(query.page - 1) * PAGE_SIZE,
        offline_after_s=settings.offline_after_s,
    )
    kept = query.kept
    return pages.render(
        request,
        "devices.html",
        principal=principal,
        status_code=status_code,
        result=result,
        counts=device_crud.status_counts(session, offline_after_s=settings.offline_after_s),
        groups=group_crud.list_groups(session),
        filters=kept,
        filter_errors=query.errors,
        form_error=form_error,
        page=query.page,
        pages=page_count(result.total),
        query=lambda **extra: urlencode({**kept, **extra}),
    )


def _validation_message(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
        for e in exc.errors()
    )


@dataclass(frozen=True)
class _EnrollForm:
    """The enrolment form's fields, as posted."""

    name: str
    hardware_target: str
    group: str
    tags: str  # comma-separated


def _enroll(
    pages: Pages, request: Request, session: Session, principal: Principal, form: _EnrollForm
) -> HTMLResponse:
    """Enrol the device (audited as via the dashboard) and show its password once; a
    refused form shows the devices page again with the reason."""
    settings = request.app.state.settings
    try:
        data = DeviceCreate(
            name=form.name.strip(),
            hardware_target=form.hardware_target.strip(),
            group=form.group.strip() or None,
            tags=[t.strip() for t in form.tags.split(",") if t.strip()],
        )
        device, password = device_crud.enroll_device(
            session, data, actor=actor(principal), offline_after_s=settings.offline_after_s
        )
        session.commit()
    except ValidationError as exc:
        session.rollback()
        return _devices_page(
            pages, request, session, principal, form_error=_validation_message(exc), status_code=422
        )
    except FleetError as exc:
        session.rollback()
        return _devices_page(
            pages, request, session, principal, form_error=str(exc), status_code=exc.status_code
        )
    return pages.render(
        request,
        "device_enrolled.html",
        principal=principal,
        status_code=201,
        device=device_crud.public_view(session, device, offline_after_s=settings.offline_after_s),
        password=password,
    )


def devices_router(pages: Pages) -> APIRouter:
    """``GET /devices``, ``POST /devices/enroll`` and ``POST /devices/{id}/retire``."""
    router = APIRouter(include_in_schema=False)

    @router.get("/devices")
    def devices(request: Request, session: SessionDep) -> HTMLResponse:
        principal = require_login(request, session)
        return _devices_page(pages, request, session, principal)

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
        return _enroll(
            pages,
            request,
            session,
            principal,
            _EnrollForm(name=name, hardware_target=hardware_target, group=group, tags=tags),
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

    return router
