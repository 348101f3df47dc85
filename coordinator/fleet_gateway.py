"""The coordinator's public front: the Fleet API, and nothing else, on the address sites dial.

Flower 1.42's ``flower-superlink`` serves its Fleet, Control and Runtime APIs from one
HTTPS port, and its Control API has no authentication outside Flower's enterprise build:
whoever reaches that port and trusts ``ca.crt`` (every site does) can register a node
and start a run. So the SuperLink listens only on the coordinator host's loopback
(``superlink.control-address``) and ``coordinator up`` serves this gateway on the public
``superlink.address``: a TLS reverse proxy that forwards exactly the Fleet API's routes a
registered SuperNode uses (``FLEET_ROUTES``, checked against Flower's own router by a unit
test, so an upgrade that adds a route is noticed) and answers 403 for every other method
or path, Fleet self-registration included. SuperNode
authentication is untouched: Flower signs each Fleet request in its headers, which pass
through, and the SuperLink checks them.

Bodies stream in both directions (no whole-body buffering here); the path forwarded is
the allow-listed string itself, never the client's raw path, so encoded or dotted
variants of a path cannot reach another route.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import httpx

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

logger = logging.getLogger("fedfleet.gateway")

# The routes of flwr.superlink.routers.fleet.router (Flower 1.42, all POST) that a
# SuperNode with a registered key uses. tests/coordinator/test_fleet_gateway.py checks
# that these and SELF_REGISTRATION_ROUTES together are exactly Flower's router.
FLEET_ROUTES: frozenset[tuple[str, str]] = frozenset(
    ("POST", f"/v1/fleet/{name}")
    for name in (
        "activate-node",
        "deactivate-node",
        "send-node-heartbeat",
        "pull-messages",
        "push-messages",
        "get-run",
        "get-fab",
        "push-object",
        "pull-object",
        "confirm-message-received",
    )
)
# Fleet routes by which a SuperNode without a registered key registers itself. Flower
# refuses them under --enable-supernode-auth anyway; the gateway does not even forward
# them, so registering a node stays an operator action whatever the SuperLink's flags.
SELF_REGISTRATION_ROUTES: frozenset[tuple[str, str]] = frozenset(
    {("POST", "/v1/fleet/register-node"), ("POST", "/v1/fleet/unregister-node")}
)

# Hop-by-hop headers (RFC 9110 §7.6.1) and Host are the proxy's own, never forwarded.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
    }
)
REFUSED_BODY = b'{"detail":"only the Fleet API is served on this address"}'


def upstream_ssl_context(ca_cert: Path) -> ssl.SSLContext:
    """TLS to the SuperLink on loopback, verified against the coordinator's CA."""
    return ssl.create_default_context(cafile=str(ca_cert))


class FleetGateway:
    """ASGI app: forwards ``routes`` to ``upstream`` (``https://127.0.0.1:PORT``).

    ``routes`` is a set of ``(method, path)``; anything else gets 403 and one log line.
    ``routes=None`` forwards every route: the operators' listener, whose TLS layer
    already required an operator certificate. ``timeout`` is the seconds an upstream
    read may take (None: no limit, for Flower's log streams).
    """

    def __init__(
        self,
        *,
        upstream: str,
        verify: ssl.SSLContext,
        routes: frozenset[tuple[str, str]] | None = FLEET_ROUTES,
        timeout: float | None = 300.0,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.routes = routes
        self._verify = verify
        self._timeout = timeout
        self._client: httpx.AsyncClient | None = None

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                verify=self._verify,
                timeout=httpx.Timeout(self._timeout, connect=10.0),
                limits=httpx.Limits(max_connections=512, max_keepalive_connections=64),
                follow_redirects=False,
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":  # websockets: nothing of Flower's uses them
            return
        route = (str(scope["method"]), str(scope["path"]))
        if self.routes is None:  # operators: the path as sent, with its query
            raw = scope.get("raw_path") or route[1].encode()
            query = scope.get("query_string") or b""
            route = (route[0], (raw + (b"?" + query if query else b"")).decode("latin-1"))
        elif route not in self.routes:
            client = scope.get("client") or ("?", 0)
            logger.warning(
                "refused %s %s from %s: not a Fleet API route", route[0], route[1], client[0]
            )
            await _respond(send, 403, REFUSED_BODY)
            return
        await self._forward(route, scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _forward(
        self, route: tuple[str, str], scope: Scope, receive: Receive, send: Send
    ) -> None:
        method, path = route
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _HOP_BY_HOP]

        async def body() -> AsyncIterator[bytes]:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                if chunk:
                    yield chunk
                if not message.get("more_body", False):
                    return

        client = self.client()
        request = client.build_request(
            method, f"{self.upstream}{path}", headers=headers, content=body()
        )
        try:
            response = await client.send(request, stream=True)
        except httpx.HTTPError as exc:
            logger.error("the SuperLink did not answer %s %s: %s", method, path, exc)
            await _respond(send, 502, b'{"detail":"the SuperLink is unavailable"}')
            return
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [
                        (k, v) for k, v in response.headers.raw if k.lower() not in _HOP_BY_HOP
                    ],
                }
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()


async def _respond(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def gateway_server(
    app: Callable[..., Awaitable[None]],
    *,
    host: str,
    port: int,
    certificate: Path,
    private_key: Path,
    client_ca: Path | None = None,
) -> Any:
    """A uvicorn server for ``app`` over TLS on ``host:port`` that leaves signals to the
    caller. ``client_ca`` set: clients must present a certificate it issued."""
    import uvicorn

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Any:  # the caller owns SIGINT/SIGTERM
            yield

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ssl_certfile=str(certificate),
        ssl_keyfile=str(private_key),
        ssl_ca_certs=None if client_ca is None else str(client_ca),
        ssl_cert_reqs=ssl.CERT_NONE if client_ca is None else ssl.CERT_REQUIRED,
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
        timeout_graceful_shutdown=5,
    )
    return _Server(config)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (bound here, so a port in use is an OSError the
    caller reports, not uvicorn's ``sys.exit``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


async def serve_until(
    servers: list[tuple[Any, socket.socket]], *, stop: Callable[[], bool]
) -> None:
    """Run each uvicorn server on its socket until ``stop()`` is true or one ends."""
    tasks = [asyncio.create_task(server.serve(sockets=[sock])) for server, sock in servers]
    try:
        while not stop() and not any(task.done() for task in tasks):
            await asyncio.sleep(0.2)
    finally:
        for server, _ in servers:
            server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:  # a server that could not start (port in use) says so here
        if not task.cancelled() and task.exception() is not None:
            raise RuntimeError(f"the gateway failed: {task.exception()}")
