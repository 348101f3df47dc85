"""Dashboard log-in and log-out (see :mod:`fleet.dashboard.session` for the design)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from fleet.auth import Principal
from fleet.crud import tokens as token_crud
from fleet.dashboard.pages import Pages, SessionDep, actor
from fleet.dashboard.session import (
    COOKIE_NAME,
    check_form,
    require_login,
    safe_next,
    session_secret,
)
from fleet.models.common import utcnow


def account_router(pages: Pages) -> APIRouter:
    """``/``, ``/login`` and ``/logout``."""
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    def home() -> RedirectResponse:
        return RedirectResponse("/devices", status_code=303)

    # --- login / logout ---------------------------------------------------------------

    @router.get("/login")
    def login_page(request: Request, next: str | None = None) -> HTMLResponse:
        return pages.render(request, "login.html", principal=None, next=safe_next(next), error=None)

    @router.post("/login")
    def login(
        request: Request,
        session: SessionDep,
        token: Annotated[str, Form(max_length=200)] = "",
        next: Annotated[str, Form(max_length=2000)] = "/devices",
    ) -> Response:
        found = (
            token_crud.find_active_token(session, token.strip(), now=utcnow()) if token else None
        )
        if found is None:
            return pages.render(
                request,
                "login.html",
                principal=None,
                next=safe_next(next),
                error="That token is unknown, revoked or expired. Create one with "
                "`fedfleet fleet token create --role viewer`.",
                status_code=401,
            )
        principal = Principal.from_token(found)
        settings = request.app.state.settings
        secret = token_crud.open_dashboard_session(
            session, token=found, ttl_s=settings.session_ttl_s, actor=actor(principal)
        )
        session.commit()
        response = RedirectResponse(safe_next(next), status_code=303)
        response.set_cookie(
            COOKIE_NAME,
            secret,
            max_age=settings.session_ttl_s,
            path="/",
            httponly=True,
            samesite="strict",
            secure=settings.cookie_secure,
        )
        return response

    @router.post("/logout")
    def logout(
        request: Request, session: SessionDep, csrf: Annotated[str, Form(max_length=200)] = ""
    ) -> Response:
        principal = require_login(request, session)
        check_form(request, csrf)
        secret = session_secret(request)
        if secret:
            token_crud.close_dashboard_session(session, secret, actor=actor(principal))
            session.commit()
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="strict")
        return response

    return router
