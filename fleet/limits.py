"""Request size limits, enforced before a handler reads the body.

A pure ASGI middleware: a declared ``Content-Length`` over the limit is answered with
413 at once, without reading the body; a body sent without a length (chunked) is
counted while the handler reads it and cut off with 413 as soon as it passes the limit,
so memory and disk use stay bounded either way. Artifact uploads get their own, larger
limit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from starlette.exceptions import HTTPException

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Paths that accept artifact uploads (the larger limit applies).
UPLOAD_PATH_RE = re.compile(r"^/api/v1/models/[^/]+/artifacts/?$")


def _too_large(limit: int) -> str:
    return (
        f"request body is larger than the limit of {limit} bytes; send less "
        "(or raise FEDFLEET_FLEET_MAX_UPLOAD_BYTES / FEDFLEET_FLEET_MAX_BODY_BYTES)"
    )


class BodySizeLimit:
    """Refuse request bodies larger than ``body_limit`` (``upload_limit`` for uploads)."""

    def __init__(self, app: ASGIApp, *, body_limit: int, upload_limit: int) -> None:
        self.app = app
        self.body_limit = body_limit
        self.upload_limit = upload_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.upload_limit if UPLOAD_PATH_RE.match(scope["path"]) else self.body_limit
        declared = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await reply_json(send, 400, "Content-Length header is not a number")
                    return
                if declared < 0:
                    await reply_json(send, 400, "Content-Length header is negative")
                    return
        if declared is not None and declared > limit:
            await reply_json(send, 413, _too_large(limit))
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Raised inside the handler's body read: the app's handlers answer it.
                    raise HTTPException(413, _too_large(limit))
            return message

        await self.app(scope, limited_receive, send)


async def reply_json(
    send: Send, status: int, detail: str, *, headers: Mapping[str, str] | None = None
) -> None:
    """Answer ``{"detail": ...}`` with ``status`` and close the connection (the body the
    client is still sending is not read)."""
    body = json.dumps({"detail": detail}).encode()
    extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
