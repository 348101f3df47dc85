"""Rendering dashboard pages: templates, filters, security headers, small helpers.

Every page goes through :meth:`Pages.render`, which adds the caller, the CSRF token and
the security headers (a Content-Security-Policy that allows no script and nothing from
other sites, no framing, no caching).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, select_autoescape
from pydantic import TypeAdapter, ValidationError
from sqlmodel import Session

from fleet.api.deps import get_session
from fleet.audit import Actor
from fleet.auth import Principal
from fleet.dashboard.session import csrf_token
from fleet.models.auth import Role
from fleet.models.common import Slug, utcnow

PAGE_SIZE = 50
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
_SLUG = TypeAdapter(Slug)

SessionDep = Annotated[Session, Depends(get_session)]


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("fleet.dashboard", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["ago"] = _ago
    env.filters["ts"] = _timestamp
    env.filters["num"] = _number
    return env


def _ago(value: datetime | None) -> str:
    if value is None:
        return "never"
    seconds = max(0, int((utcnow() - value).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def _timestamp(value: datetime | None) -> str:
    return "—" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


def _number(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


class Pages:
    """Renders templates with the common context and security headers."""

    def __init__(self) -> None:
        self.env = _environment()

    def render(
        self,
        request: Request,
        template: str,
        *,
        principal: Principal | None,
        status_code: int = 200,
        **context: Any,
    ) -> HTMLResponse:
        html = self.env.get_template(template).render(
            request=request,
            principal=principal,
            can_write=principal is not None and principal.role.allows(Role.operator),
            csrf=csrf_token(request),
            path=request.url.path,
            **context,
        )
        return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)


def actor(principal: Principal) -> Actor:
    return principal.actor("dashboard")


def require_operator(principal: Principal) -> None:
    principal.require(Role.operator)


def audit_diff(
    before: dict[str, Any] | None, after: dict[str, Any] | None
) -> list[tuple[str, str, str]]:
    """Changed fields of an audit event as (field, before, after) strings."""
    before = before or {}
    after = after or {}
    rows = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if old != new:
            rows.append((key, _short(old), _short(new)))
    return rows


def _short(value: Any) -> str:
    if value is None:
        return "—"
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "…"


def validated_slug(raw: str | None, errors: list[str], what: str) -> str | None:
    if raw is None or raw == "":
        return None
    try:
        return _SLUG.validate_python(raw)
    except ValidationError:
        errors.append(f"ignored the {what} filter: {raw[:40]!r} is not a valid name")
        return None


def page_number(params: Mapping[str, str]) -> int:
    """The ``page`` query parameter, 1 when missing or not a number, at most 100,000."""
    try:
        return max(1, min(int(params.get("page", "1")), 100_000))
    except ValueError:
        return 1


def page_count(total: int) -> int:
    """How many pages of :data:`PAGE_SIZE` rows ``total`` rows fill (at least one)."""
    return max(1, -(-total // PAGE_SIZE))
