"""Browser authentication for the dashboard.

A person logs in by pasting an API token into the login form. The server checks it and
opens a session: the browser gets a random session id in a cookie that is ``HttpOnly``
(scripts cannot read it), ``SameSite=Strict`` (other sites cannot make the browser send
it), ``Path=/`` and, when configured, ``Secure``. The database keeps only the session
id's SHA-256, tied to the token: revoking the token ends its sessions.

Every form that changes something carries a CSRF token derived from the session id
(only a page served to the cookie holder can know it) and is refused when the
``Origin`` header names another site.
"""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from fastapi import Request
from sqlmodel import Session

from fleet.auth import Principal
from fleet.credentials import csrf_token_for
from fleet.crud import tokens as token_crud
from fleet.models.common import utcnow

COOKIE_NAME = "fleet_session"


class LoginRequired(Exception):
    """No valid dashboard session: send the browser to the login page."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


class BadForm(Exception):
    """A form post failed the CSRF or origin check."""


def session_secret(request: Request) -> str | None:
    """The session id from the cookie, if any."""
    value = request.cookies.get(COOKIE_NAME)
    return value if value and len(value) <= 128 else None


def current_principal(request: Request, session: Session) -> Principal | None:
    """The logged-in caller, or None when there is no live session."""
    secret = session_secret(request)
    if secret is None:
        return None
    found = token_crud.find_dashboard_session(session, secret, now=utcnow())
    if found is None:
        return None
    return Principal.from_token(found[1])


def require_login(request: Request, session: Session) -> Principal:
    """The logged-in caller; raises LoginRequired (redirect to /login) otherwise."""
    principal = current_principal(request, session)
    if principal is None:
        target = request.url.path
        if request.url.query and request.method == "GET":
            target += "?" + request.url.query
        raise LoginRequired(safe_next(target))
    return principal


def csrf_token(request: Request) -> str:
    """The CSRF token for the current session ('' when logged out)."""
    secret = session_secret(request)
    return csrf_token_for(secret) if secret else ""


def check_form(request: Request, submitted: str | None) -> None:
    """Refuse a state-changing form post with a wrong CSRF token or a foreign Origin."""
    origin = request.headers.get("origin")
    if origin is not None and origin != "null":
        parts = urlsplit(origin)
        if parts.netloc != request.headers.get("host", ""):
            raise BadForm(f"form posted from another site ({origin}); reload the page")
    expected = csrf_token(request)
    if not expected or not submitted or not hmac.compare_digest(expected, submitted):
        raise BadForm("the form has expired or did not come from this dashboard; reload the page")


def safe_next(path: str | None) -> str:
    """A same-site path to return to after login (never an open redirect)."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/devices"
    if path.startswith(("/login", "/logout")):
        return "/devices"
    return path
