"""The public gateway forwards exactly Flower's Fleet API and nothing else.

Oracle: the allow-list against Flower 1.42's own router definitions (a Flower upgrade that
adds, renames or removes a Fleet route fails here) and against the paths the SuperNode's
HTTP client calls. Integration: the gateway in front of a real TLS upstream on loopback
(uvicorn in a thread), with a Hypothesis property over methods and paths: the upstream
only ever sees allow-listed routes.
"""

from __future__ import annotations

import inspect
import re
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.certs import create_dev_ca
from coordinator.fleet_gateway import (
    FLEET_ROUTES,
    SELF_REGISTRATION_ROUTES,
    FleetGateway,
    bind,
    gateway_server,
    upstream_ssl_context,
)


def _routes(router: Any) -> set[tuple[str, str]]:
    return {
        (method, route.path)
        for route in router.routes
        if isinstance(route, APIRoute)
        for method in route.methods
    }


def test_allow_list_and_self_registration_are_exactly_flowers_fleet_router() -> None:
    from flwr.superlink.routers.fleet.router import router

    assert not FLEET_ROUTES & SELF_REGISTRATION_ROUTES
    assert set(FLEET_ROUTES | SELF_REGISTRATION_ROUTES) == _routes(router)


def test_every_path_an_authenticated_supernode_calls_is_allowed() -> None:
    from flwr.supernode import fleet_http_client, fleet_http_connection

    called = set(re.findall(r'path="(/v1/[^"]+)"', inspect.getsource(fleet_http_client)))
    assert called  # the source still names its paths this way
    assert {("POST", path) for path in called} <= FLEET_ROUTES | SELF_REGISTRATION_ROUTES
    # the SuperNode calls the self-registration routes only for a key it made itself
    source = inspect.getsource(fleet_http_connection)
    for rpc in ("client.RegisterNode", "client.UnregisterNode("):
        before = source[: source.index(rpc)].rstrip().splitlines()
        assert any("if self_registered:" in line for line in before[-4:]), rpc


def test_no_other_route_of_the_superlink_app_is_allowed() -> None:
    """Every route Flower's SuperLink app serves (Control, Runtime, health, docs) that is
    not in its Fleet router stays behind the gateway."""
    from fastapi.routing import iter_route_contexts
    from flwr.superlink.main import create_app
    from flwr.superlink.routers.fleet.router import router

    app = create_app()  # no config: in-memory state, nothing started
    served = {
        (method, context.path)
        for context in iter_route_contexts(app.routes)
        for method in (context.methods or ())
    }
    assert ("POST", "/v1/control/register-node") in served  # the app still has these
    assert ("POST", "/v1/control/start-run") in served
    assert served & FLEET_ROUTES == _routes(router) - SELF_REGISTRATION_ROUTES
    assert all(path.startswith("/v1/fleet/") for _, path in FLEET_ROUTES)


# --- a real upstream behind the gateway --------------------------------------------------


class Recorder:
    """ASGI upstream: records each request it gets and echoes its body back."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.seen.append(
            {"method": scope["method"], "path": scope["path"], "body": body, "headers": headers}
        )
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/protobuf"), (b"x-upstream", b"1")],
            }
        )
        await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Recorder, Path, int]]:
    certs = create_dev_ca(tmp_path_factory.mktemp("certs"))
    recorder = Recorder()
    sock = bind("127.0.0.1", 0)
    server = gateway_server(
        recorder,
        host="127.0.0.1",
        port=sock.getsockname()[1],
        certificate=certs.server_cert,
        private_key=certs.server_key,
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the upstream did not start"
        time.sleep(0.05)
    try:
        yield recorder, certs.ca_cert, sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def _gateway(upstream: tuple[Recorder, Path, int]) -> httpx.AsyncClient:
    _, ca, port = upstream
    app = FleetGateway(upstream=f"https://127.0.0.1:{port}", verify=upstream_ssl_context(ca))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")


@pytest.mark.anyio
async def test_fleet_route_is_forwarded_with_body_and_auth_headers(
    upstream: tuple[Recorder, Path, int],
) -> None:
    recorder, _, _ = upstream
    before = len(recorder.seen)
    body = bytes(range(256)) * 4096  # 1 MiB, binary
    async with _gateway(upstream) as client:
        response = await client.post(
            "/v1/fleet/push-object",
            content=body,
            headers={"x-flwr-public-key": "cHVi", "x-flwr-signature": "c2ln"},
        )
    assert response.status_code == 200 and response.content == body
    assert response.headers["x-upstream"] == "1"
    (seen,) = recorder.seen[before:]
    assert seen["path"] == "/v1/fleet/push-object" and seen["body"] == body
    assert seen["headers"]["x-flwr-public-key"] == "cHVi"
    assert seen["headers"]["x-flwr-signature"] == "c2ln"
    assert seen["headers"]["host"] != "gw"  # Host is the proxy's own


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/control/register-node"),
        ("POST", "/v1/fleet/register-node"),
        ("POST", "/v1/fleet/unregister-node"),
        ("POST", "/v1/control/start-run"),
        ("POST", "/v1/control/list-runs"),
        ("POST", "/v1/runtime/pull-messages"),
        ("GET", "/health"),
        ("GET", "/docs"),
        ("GET", "/openapi.json"),
        ("GET", "/v1/fleet/get-run"),  # a Fleet path, but not its method
        ("POST", "/v1/fleet/get-run/"),
        ("POST", "/v1/fleet/../control/start-run"),
        ("POST", "/v1/fleet/%2e%2e/control/start-run"),
        ("POST", "/V1/FLEET/GET-RUN"),
    ],
)
async def test_everything_else_is_refused_before_the_upstream(
    upstream: tuple[Recorder, Path, int], method: str, path: str
) -> None:
    recorder, _, _ = upstream
    before = len(recorder.seen)
    async with _gateway(upstream) as client:
        response = await client.request(method, path, content=b"x" if method == "POST" else None)
    assert response.status_code == 403
    assert b"only the Fleet API" in response.content
    assert recorder.seen[before:] == []


@pytest.mark.anyio
async def test_unreachable_superlink_is_a_502(tmp_path: Path) -> None:
    certs = create_dev_ca(tmp_path)
    sock = bind("127.0.0.1", 0)  # bound, never listened on by a server: refused
    port = sock.getsockname()[1]
    sock.close()
    app = FleetGateway(
        upstream=f"https://127.0.0.1:{port}", verify=upstream_ssl_context(certs.ca_cert)
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        response = await client.post("/v1/fleet/get-run", content=b"")
    assert response.status_code == 502


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS"]),
    path=st.one_of(
        st.sampled_from(sorted(p for _, p in FLEET_ROUTES)),
        st.sampled_from(["/v1/control/", "/v1/runtime/", "/v1/fleet/", "/"]).flatmap(
            lambda prefix: st.text(
                alphabet=st.characters(
                    min_codepoint=33, max_codepoint=126, exclude_characters="?#"
                ),
                max_size=30,
            ).map(lambda tail: prefix + tail)
        ),
    ),
)
def test_property_upstream_sees_only_allow_listed_routes(
    upstream: tuple[Recorder, Path, int], method: str, path: str
) -> None:
    import anyio

    recorder, _, _ = upstream
    before = len(recorder.seen)

    _, ca, port = upstream
    app = FleetGateway(upstream=f"https://127.0.0.1:{port}", verify=upstream_ssl_context(ca))
    # the scope exactly as uvicorn hands it over: the path already percent-decoded
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [],
        "client": ("192.0.2.1", 4242),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def call() -> int:
        try:
            await app(scope, receive, send)
        finally:
            await app.aclose()
        return int(sent[0]["status"])

    status = anyio.run(call)
    forwarded = recorder.seen[before:]
    if (method, path) in FLEET_ROUTES:
        assert status == 200 and [s["path"] for s in forwarded] == [path]
    else:
        assert status == 403 and forwarded == []
    assert all((s["method"], s["path"]) in FLEET_ROUTES for s in recorder.seen)


def test_operator_listener_requires_an_operator_certificate(tmp_path: Path) -> None:
    """Integration (real TLS handshakes): the operators' listener accepts a certificate
    from `certs create-operator` and refuses a client with only ca.crt, or with a
    certificate the coordinator's CA signed (the server's own)."""
    from coordinator.certs import create_operator_cert

    certs = create_dev_ca(tmp_path / "certs")
    alice = create_operator_cert(tmp_path / "certs", name="alice")
    recorder = Recorder()
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = gateway_server(
        recorder,
        host="127.0.0.1",
        port=port,
        certificate=certs.server_cert,
        private_key=certs.server_key,
        client_ca=alice.operator_ca,
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        url = f"https://127.0.0.1:{port}/v1/control/list-nodes"

        def post(cert: tuple[str, str] | None) -> int:
            context = ssl.create_default_context(cafile=str(certs.ca_cert))
            if cert is not None:
                context.load_cert_chain(*cert)
            with httpx.Client(verify=context, timeout=10) as client:
                return client.post(url, content=b"").status_code

        ok = post((str(alice.certificate), str(alice.private_key)))
        for refused in (None, (str(certs.server_cert), str(certs.server_key))):
            with pytest.raises((httpx.HTTPError, ssl.SSLError)):
                post(refused)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
    assert ok == 200
    assert [s["path"] for s in recorder.seen] == ["/v1/control/list-nodes"]
