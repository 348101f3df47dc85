"""Domain errors and the handlers that turn every failure into a JSON 4xx/5xx body.

CRUD code raises the domain errors below (and returns None for "not found"); routes
raise ``HTTPException``. Whatever escapes ends up here as ``{"detail": "...", "errors":
[...]}`` with a sentence saying what was wrong, so a client never has to parse HTML or a
stack trace. Database errors caused by the request (a duplicate name racing another
request, a value out of range) are 409/422; a busy database is 503 with Retry-After.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DataError, IntegrityError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from fleet.models.common import ErrorBody, FieldError

logger = logging.getLogger("fleet")


class FleetError(Exception):
    """Base of the fleet's domain errors: ``str(exc)`` is shown to the client."""

    status_code = 400


class Conflict(FleetError):
    """The request clashes with the current state (duplicate name, retired device)."""

    status_code = 409


class InvalidReference(FleetError):
    """The request names something that does not exist (a group, a model version)."""

    status_code = 422


class InvalidInput(FleetError):
    """The request is well-formed but its content cannot be accepted."""

    status_code = 422


def error_response(
    status_code: int,
    detail: str,
    *,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """The JSON error response every handler returns."""
    body = ErrorBody(detail=detail, errors=errors).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status_code, headers=headers)


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text or "request"


def _message(error: dict[str, Any]) -> str:
    if error.get("type") == "json_invalid":
        reason = (error.get("ctx") or {}).get("error", "malformed JSON")
        return f"request body is not valid JSON ({reason})"
    message = str(error.get("msg", "invalid value"))
    return message.removeprefix("Value error, ")


def validation_errors(exc: RequestValidationError) -> list[FieldError]:
    """Readable per-field errors from a FastAPI validation error."""
    return [
        FieldError(
            field="body"
            if error.get("type") == "json_invalid"
            else _location(error.get("loc", ())),
            message=_message(error),
        )
        for error in exc.errors()
    ]


async def http_exception_handler(_request: Request, exc: StarletteHTTPException) -> Response:
    """HTTPException → ``{"detail": ...}`` with the exception's status and headers."""
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 400 and detail == "There was an error parsing the body":
        # FastAPI's words for a body that is not UTF-8 JSON or a readable form.
        detail = (
            "the request body could not be read: send UTF-8 JSON with "
            "'Content-Type: application/json' (or a multipart form for uploads)"
        )
    headers = dict(exc.headers) if exc.headers else None
    return error_response(exc.status_code, detail, headers=headers)


async def validation_exception_handler(_request: Request, exc: Exception) -> Response:
    """RequestValidationError → 422 naming the first bad field, plus every problem."""
    errors = validation_errors(exc) if isinstance(exc, RequestValidationError) else []
    first = errors[0] if errors else FieldError(field="request", message="invalid")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return error_response(
        422, f"invalid request: {first.field}: {first.message}{more}", errors=errors
    )


async def _domain(_request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, FleetError) else 400
    return error_response(status, str(exc))


async def _integrity(_request: Request, exc: Exception) -> Response:
    logger.info("integrity error: %s", getattr(exc, "orig", exc))
    return error_response(
        409,
        "the change conflicts with existing data (a duplicate name or a reference that "
        "no longer exists, possibly from a concurrent request); reload and try again",
    )


async def _data(_request: Request, exc: Exception) -> Response:
    logger.info("data error: %s", getattr(exc, "orig", exc))
    return error_response(422, "a value is out of range for the database; use a smaller one")


#: The 503 reply when the database cannot answer (also sent by :mod:`fleet.auth_gate`).
DATABASE_UNAVAILABLE = "the database is busy or unreachable; retry in a moment"
RETRY_AFTER = {"Retry-After": "1"}


async def _operational(_request: Request, exc: Exception) -> Response:
    logger.warning("database unavailable: %s", getattr(exc, "orig", exc))
    return error_response(503, DATABASE_UNAVAILABLE, headers=RETRY_AFTER)


async def _unexpected(_request: Request, exc: Exception) -> Response:
    incident = secrets.token_hex(4)
    logger.error("unexpected error (incident %s)", incident, exc_info=exc)
    return error_response(
        500, f"internal error (incident {incident}); the server log has the details"
    )


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    app.add_exception_handler(StarletteHTTPException, http_exception_handler)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, validation_exception_handler)
    app.add_exception_handler(FleetError, _domain)
    app.add_exception_handler(IntegrityError, _integrity)
    app.add_exception_handler(DataError, _data)
    app.add_exception_handler(OperationalError, _operational)
    app.add_exception_handler(Exception, _unexpected)
