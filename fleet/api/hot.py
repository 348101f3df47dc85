"""Lean answers for the two hottest routes: the device list and the heartbeat.

Profiled (issue 16, item 1): after the token cache and the Core queries, most of a
list-of-50 or a heartbeat was FastAPI itself — solving the dependency tree, validating
nine query parameters through pydantic's generic machinery (a quarter of a list's CPU),
and three thread hops (the auth dependency, the sync route, closing its session).
:class:`HotRoutes` is a pure ASGI middleware, just inside :class:`fleet.auth_gate.AuthGate`,
that answers the ordinary, valid case of

- ``GET /api/v1/devices`` (every filter; the page built by :mod:`fleet.crud.device_pages`)
- ``POST /api/v1/devices/{device_id}/heartbeat`` (:func:`fleet.crud.devices.record_heartbeat`)

with the same work in one worker thread: the caller checked as the route checks it
(:func:`fleet.auth.gate_principal`: the gate's principal; one the gate only found in the
token cache is trusted under the revocation epoch read in this request's transaction),
the same role, the same statements, the same bytes back. Everything else goes to the
FastAPI route unchanged — a parameter it would refuse or that is not written the plain
way (a bad or duplicated value, ``total=yes``), an unknown device, a retired one, a role
too low, a token the cache no longer vouches for — so every error, its status and its
words come from the one place they always did, and the OpenAPI contract is the routes'.
A refused request costs what it cost before; only the plain valid ones got cheaper.
The metrics middleware sees the route's template, as for any matched route.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl

from anyio import to_thread
from pydantic import ValidationError
from pydantic_core import to_json
from sqlalchemy import Engine
from sqlalchemy.exc import DataError, IntegrityError, OperationalError
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from fleet.api import devices as devices_api
from fleet.auth import Principal, gate_principal
from fleet.crud import device_pages as pages
from fleet.crud import devices as crud
from fleet.errors import (
    DATABASE_UNAVAILABLE,
    RETRY_AFTER,
    Conflict,
    InvalidReference,
    error_response,
    logger,
)
from fleet.limits import ASGIApp, Message, Receive, Scope, Send
from fleet.models.auth import Role
from fleet.models.common import MAX_ID
from fleet.models.devices import DeviceStatus, Heartbeat
from fleet.token_cache import TokenCache

#: The paths answered here (under the API prefix).
LIST_PATH: Final = "/api/v1/devices"
HEARTBEAT_PREFIX: Final = "/api/v1/devices/"
HEARTBEAT_SUFFIX: Final = "/heartbeat"
#: Heartbeat bodies longer than this go to the route (a real one is a few bytes).
MAX_HEARTBEAT_BODY: Final = 256

_DEVICE_ID_RE = re.compile(r"dev-[0-9a-f]{16}")
_SLUG_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
# Integers written plainly (no sign, spaces, underscores or leading zeros).
_INT_RE = re.compile(r"0|[1-9][0-9]{0,9}")
_BOOLS = {"true": True, "false": False, "1": True, "0": False}
_STATUSES = {status.value: status for status in DeviceStatus}
_SCALARS = frozenset(
    {"group", "hardware_target", "status", "model_version", "limit", "offset", "after", "total"}
)
_MAX_TAGS = 8


class _Delegate(Exception):
    """The route must answer this request (it is not the plain valid case)."""


def _int(value: str, low: int, high: int) -> int:
    if not _INT_RE.fullmatch(value):
        raise _Delegate
    number = int(value)
    if not low <= number <= high:
        raise _Delegate
    return number


def _slug(value: str | None) -> str | None:
    if value is not None and not _SLUG_RE.fullmatch(value):
        raise _Delegate
    return value


def parse_list_query(query_string: bytes) -> pages.DevicePageQuery:
    """The list route's parameters, validated as the route validates them.

    Raises :class:`_Delegate` for anything the route would refuse, and for anything it
    might read differently (a scalar given twice, a number with a sign or leading zero,
    a boolean other than true/false/1/0, an empty value): the route answers those.
    Unknown parameters are ignored, as by the route.
    """
    scalars: dict[str, str] = {}
    tags: list[str] = []
    for key, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if key == "tag":
            tags.append(value)
        elif key in _SCALARS:
            if key in scalars or not value:
                raise _Delegate
            scalars[key] = value
    if len(tags) > _MAX_TAGS:
        raise _Delegate
    for tag in tags:
        _slug(tag)
    status = scalars.get("status")
    if status is not None and status not in _STATUSES:
        raise _Delegate
    model = scalars.get("model_version")
    after = scalars.get("after")
    if after is not None and len(after) > 63:
        raise _Delegate
    total = scalars.get("total", "false")
    if total not in _BOOLS:
        raise _Delegate
    filters = crud.DeviceFilter(
        group=_slug(scalars.get("group")),
        tags=tuple(tags),
        hardware_target=_slug(scalars.get("hardware_target")),
        status=_STATUSES[status] if status is not None else None,
        model_version_id=_int(model, 1, MAX_ID) if model is not None else None,
    )
    return pages.DevicePageQuery(
        filters=filters,
        limit=_int(scalars.get("limit", "50"), 1, 500),
        offset=_int(scalars.get("offset", "0"), 0, 1_000_000),
        after=after,
        with_total=_BOOLS[total],
    )


def parse_heartbeat_body(body: bytes, content_type: str | None) -> object:
    """The model version a heartbeat body reports (or the "unchanged" sentinel).

    Raises :class:`_Delegate` for a body the route would refuse or read otherwise.
    """
    if not body:
        return crud.heartbeat_unchanged()
    if content_type is not None and content_type.split(";", 1)[0].strip() != "application/json":
        raise _Delegate
    try:
        data = json.loads(body)
        if not isinstance(data, dict):
            raise _Delegate
        heartbeat = Heartbeat.model_validate(data)
    except (ValueError, ValidationError) as exc:  # JSONDecodeError is a ValueError
        raise _Delegate from exc
    if "model_version_id" in heartbeat.model_fields_set:
        return heartbeat.model_version_id
    return crud.heartbeat_unchanged()


@dataclass(frozen=True)
class _Request:
    scope: Scope
    authorization: str | None
    content_type: str | None
    content_length: int | None


def _headers(scope: Scope) -> _Request:
    authorization = content_type = length = None
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            authorization = value.decode("latin-1")
        elif name == b"content-type":
            content_type = value.decode("latin-1")
        elif name == b"content-length":
            length = value
    try:
        content_length = int(length) if length is not None else None
    except ValueError:
        content_length = None
    return _Request(scope, authorization, content_type, content_length)


class HotRoutes:
    """Answer the plain valid device list and heartbeat without FastAPI's machinery."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        engine: Engine,
        cache: TokenCache[Principal] | None,
        offline_after_s: float,
    ) -> None:
        self.app = app
        self.engine = engine
        self.write_engine = engine.execution_options(fleet_write=True)
        self.cache = cache
        self.offline_after_s = offline_after_s
        #: What the metrics middleware sees of the route (its template and endpoint).
        self.routes: dict[str, BaseRoute] = {
            "list": Route(LIST_PATH, devices_api.list_devices, methods=["GET"]),
            "heartbeat": Route(
                HEARTBEAT_PREFIX + "{device_id}" + HEARTBEAT_SUFFIX,
                devices_api.heartbeat,
                methods=["POST"],
            ),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            path = scope["path"]
            method = scope["method"]
            if method == "GET" and path == LIST_PATH:
                if await self._list(scope, receive, send):
                    return
            elif (
                method == "POST"
                and path.startswith(HEARTBEAT_PREFIX)
                and path.endswith(HEARTBEAT_SUFFIX)
            ):
                device_id = path[len(HEARTBEAT_PREFIX) : -len(HEARTBEAT_SUFFIX)]
                if _DEVICE_ID_RE.fullmatch(device_id):
                    await self._heartbeat(scope, receive, send, device_id)
                    return
        await self.app(scope, receive, send)

    async def _list(self, scope: Scope, receive: Receive, send: Send) -> bool:
        try:
            query = parse_list_query(scope.get("query_string", b""))
        except _Delegate:
            return False
        request = _headers(scope)

        def work() -> bytes | None:
            with self.engine.connect() as connection:
                if not self._allowed(connection, request, Role.viewer):
                    return None
                page = pages.device_page(connection, query, offline_after_s=self.offline_after_s)
            return pages.page_json(page)

        return await self._answer(scope, receive, send, work, "list", {})

    async def _heartbeat(self, scope: Scope, receive: Receive, send: Send, device_id: str) -> None:
        request = _headers(scope)
        if request.content_length is None or request.content_length > MAX_HEARTBEAT_BODY:
            await self.app(scope, receive, send)  # chunked or large: the route reads it
            return
        read = await _read_body(receive)
        if read is None:
            return  # the client went away before its body came: nothing to answer
        body, replay = read
        try:
            model = parse_heartbeat_body(body, request.content_type)
        except _Delegate:
            await self.app(scope, replay, send)
            return

        def work() -> bytes | None:
            with self.write_engine.connect() as connection:
                # The UPDATE first: it also returns the revocation epoch the caller is
                # checked under (one round trip less); not allowed → rolled back on close.
                try:
                    recorded = crud.record_heartbeat(
                        connection, device_id, model_version_id=model, read_epoch=True
                    )
                except (Conflict, InvalidReference):
                    return None  # rolled back on close; the route says why
                if recorded is None or not self._allowed(
                    connection, request, Role.operator, epoch=recorded.revocation_epoch
                ):
                    return None
                connection.commit()
            ack = {
                "device_id": recorded.device_id,
                "status": DeviceStatus.online.value,
                "last_seen_at": recorded.last_seen_at,
                "model_version_id": recorded.model_version_id,
            }
            return to_json(ack)

        params = {"device_id": device_id}
        if not await self._answer(scope, replay, send, work, "heartbeat", params):
            await self.app(scope, replay, send)

    def _allowed(
        self, connection: Any, request: _Request, role: Role, *, epoch: int | None = None
    ) -> bool:
        principal = gate_principal(
            connection, request.scope, request.authorization, self.cache, epoch=epoch
        )
        return principal is not None and principal.role.allows(role)

    async def _answer(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        work: Callable[[], bytes | None],
        name: str,
        path_params: dict[str, str],
    ) -> bool:
        """Run ``work`` in a worker thread and send its JSON; False when the route must
        answer instead (``work`` returned None, having committed nothing)."""
        try:
            content = await to_thread.run_sync(work)
        except (IntegrityError, DataError):
            return False  # rolled back; the route's handlers say what clashed (409/422)
        except OperationalError as exc:
            logger.warning("database unavailable: %s", getattr(exc, "orig", exc))
            response: Response = error_response(503, DATABASE_UNAVAILABLE, headers=RETRY_AFTER)
        else:
            if content is None:
                return False
            response = Response(content=content, media_type="application/json")
        route = self.routes[name]
        scope["route"] = route
        scope["endpoint"] = getattr(route, "endpoint", None)
        scope["path_params"] = path_params
        await response(scope, receive, send)
        return True


async def _read_body(receive: Receive) -> tuple[bytes, Receive] | None:
    """The whole body, and a ``receive`` that hands it over again (for the route); None
    when the client disconnected first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay
