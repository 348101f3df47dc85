"""The lean device list and heartbeat (fleet/api/hot.py): same answers as the routes,
same auth — a revoked token is refused at once although the cache still holds it — and
everything that is not the plain valid case left to the FastAPI route."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, text
from sqlalchemy.exc import OperationalError

from fleet.api.hot import HotRoutes, _Delegate, parse_heartbeat_body, parse_list_query
from fleet.audit import Actor
from fleet.crud import devices as crud
from fleet.crud import tokens as token_crud
from fleet.db import session_scope
from fleet.models.auth import Role
from fleet.models.devices import DeviceStatus
from fleet.settings import FleetSettings

Headers = dict[str, str]


def _hot(client: TestClient) -> HotRoutes:
    """The app's HotRoutes middleware (built with the app's middleware stack)."""
    app: Any = client.app.middleware_stack  # type: ignore[attr-defined]
    while app is not None and not isinstance(app, HotRoutes):
        app = getattr(app, "app", None)
    assert isinstance(app, HotRoutes), "HotRoutes is not in the middleware stack"
    return app


@contextmanager
def _counting(hot: HotRoutes) -> Iterator[list[str]]:
    """Paths the lean routes handed on to the FastAPI app while inside."""
    passed: list[str] = []
    inner = hot.app

    async def counted(scope: Any, receive: Any, send: Any) -> None:
        passed.append(scope["path"])
        await inner(scope, receive, send)

    hot.app = counted
    try:
        yield passed
    finally:
        hot.app = inner


@contextmanager
def _routes_only(hot: HotRoutes) -> Iterator[None]:
    """Every request answered by the FastAPI routes (the lean path hands everything on)."""
    original = hot._answer

    async def hand_on(*_args: Any, **_kwargs: Any) -> bool:
        return False

    hot._answer = hand_on  # type: ignore[method-assign]
    try:
        yield
    finally:
        hot._answer = original  # type: ignore[method-assign]


def _enroll(client: TestClient, headers: Headers, name: str, **fields: Any) -> str:
    body = {"name": name, "hardware_target": "rpi5", **fields}
    response = client.post("/api/v1/devices", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return str(response.json()["device"]["id"])


def test_list_query_parsing_takes_the_plain_case_and_hands_on_the_rest() -> None:
    query = parse_list_query(
        b"group=wards&tag=icu&tag=floor-3&hardware_target=rpi5&status=online"
        b"&model_version=7&limit=20&offset=3&after=pi%2001&total=true&unknown=x"
    )
    assert query.filters == crud.DeviceFilter(
        group="wards",
        tags=("icu", "floor-3"),
        hardware_target="rpi5",
        status=DeviceStatus.online,
        model_version_id=7,
    )
    assert (query.limit, query.offset, query.after, query.with_total) == (20, 3, "pi 01", True)
    defaults = parse_list_query(b"")
    assert (defaults.limit, defaults.offset, defaults.with_total) == (50, 0, False)
    for odd in (
        b"limit=0",
        b"limit=501",
        b"limit=+5",
        b"limit=05",
        b"limit=5&limit=6",
        b"offset=1000001",
        b"group=Wards",
        b"group=",
        b"tag=" + b"&tag=".join(b"t%d" % i for i in range(9)),
        b"status=lost",
        b"model_version=0",
        b"model_version=2147483648",
        b"total=yes",
        b"after=" + b"a" * 64,
    ):
        with pytest.raises(_Delegate):
            parse_list_query(odd)


def test_heartbeat_body_parsing_takes_the_plain_case_and_hands_on_the_rest() -> None:
    unchanged = crud.heartbeat_unchanged()
    assert parse_heartbeat_body(b"", None) is unchanged
    assert parse_heartbeat_body(b"{}", "application/json") is unchanged
    assert parse_heartbeat_body(b'{"model_version_id": 3}', None) == 3
    assert parse_heartbeat_body(b'{"model_version_id": null}', "application/json") is None
    for body, content_type in (
        (b'{"model_version_id": 3}', "text/plain"),
        (b'{"other": 1}', "application/json"),
        (b'{"model_version_id": "3"}', "application/json"),
        (b"[1]", "application/json"),
        (b"{", "application/json"),
    ):
        with pytest.raises(_Delegate):
            parse_heartbeat_body(body, content_type)


def test_lean_answers_are_the_routes_answers(
    client: TestClient, headers: dict[Role, Headers], run_sql: Callable[..., Any]
) -> None:
    # Prepare
    admin, viewer = headers[Role.admin], headers[Role.viewer]
    assert client.post("/api/v1/groups", json={"name": "wards"}, headers=admin).status_code == 201
    ids = [
        _enroll(client, admin, f"pi-{i}", group="wards", tags=["icu"] if i % 2 else ["er", "icu"])
        for i in range(4)
    ]
    retired = _enroll(client, admin, "old")
    assert client.post(f"/api/v1/devices/{retired}/retire", headers=admin).status_code == 200
    hot = _hot(client)
    lists = (
        "/api/v1/devices",
        "/api/v1/devices?group=wards&limit=2&total=true",
        "/api/v1/devices?tag=er&tag=icu",
        "/api/v1/devices?status=never_seen&after=pi-1",
        "/api/v1/devices?status=retired",
        "/api/v1/devices?limit=0",
        "/api/v1/devices?group=nope",
    )
    beats: list[tuple[str, Any, Headers]] = [
        (ids[0], {}, admin),
        (ids[1], {"model_version_id": None}, admin),
        (ids[2], {"model_version_id": 4242}, admin),
        (ids[2], {"extra": 1}, admin),
        ("dev-0000000000000000", {}, admin),
        (retired, {}, admin),
        (ids[3], {}, viewer),
    ]

    def listed() -> list[tuple[int, Any]]:
        return [(r.status_code, r.json()) for r in (client.get(p, headers=viewer) for p in lists)]

    def beaten() -> list[tuple[int, Any]]:
        got = []
        for device, body, who in beats:
            reply = client.post(f"/api/v1/devices/{device}/heartbeat", json=body, headers=who)
            data = reply.json()
            data.pop("last_seen_at", None)
            got.append((reply.status_code, data))
        return got

    # Execute: the same requests, lean and through the routes only.
    with _counting(hot) as passed:
        lean = listed()
    with _routes_only(hot):
        routes = listed()
    with _counting(hot) as passed_beats:
        lean_beats = beaten()
    with _routes_only(hot):
        route_beats = beaten()
    # Assert: the same answers; the plain valid ones never reached FastAPI.
    assert (lean, lean_beats) == (routes, route_beats)
    assert [status for status, _ in lean + lean_beats] == [200] * 5 + [422, 200] + [
        200,
        200,
        422,
        422,
        404,
        409,
        403,
    ]
    assert passed == ["/api/v1/devices"]  # only limit=0, a 422 from the route
    assert passed_beats == [f"/api/v1/devices/{d}/heartbeat" for d, _, _ in beats[2:]]
    seen = run_sql(
        client.app.state.engine, "SELECT count(*) FROM devices WHERE last_seen_at IS NOT NULL"
    )  # type: ignore[attr-defined]
    assert seen == [(2,)]  # the refused heartbeats changed nothing


def test_a_revoked_token_is_refused_at_once_by_the_lean_routes(
    client: TestClient, headers: dict[Role, Headers], run_sql: Callable[..., Any]
) -> None:
    # Prepare: an operator token the app has cached (the gate then trusts the cache).
    admin = headers[Role.admin]
    device = _enroll(client, admin, "pi-1")
    created = client.post("/api/v1/tokens", json={"name": "ops", "role": "operator"}, headers=admin)
    assert created.status_code == 201
    operator = {"Authorization": f"Bearer {created.json()['token']}"}
    heartbeat = f"/api/v1/devices/{device}/heartbeat"
    with _counting(_hot(client)) as passed:
        assert client.get("/api/v1/devices", headers=operator).status_code == 200
        assert client.post(heartbeat, json={}, headers=operator).status_code == 200
    assert passed == []  # both answered by the lean routes
    cache = client.app.state.token_cache  # type: ignore[attr-defined]
    assert len(cache) >= 1
    engine = client.app.state.engine  # type: ignore[attr-defined]
    seen_before = run_sql(engine, "SELECT last_seen_at FROM devices WHERE id = :id", id=device)
    # Execute: revoke as another process does (the CLI), not through this app's cache.
    with session_scope(engine, write=True) as session:
        actor = Actor(name="cli:test", role="admin", source="cli")
        assert token_crud.revoke_token(session, created.json()["info"]["id"], actor=actor)
    # Assert: the very next requests are refused, and the heartbeat recorded nothing.
    assert client.get("/api/v1/devices", headers=operator).status_code == 401
    assert client.post(heartbeat, json={}, headers=operator).status_code == 401
    assert run_sql(engine, "SELECT last_seen_at FROM devices WHERE id = :id", id=device) == (
        seen_before
    )
    assert client.post(heartbeat, json={}, headers=admin).status_code == 200


def test_a_lean_heartbeat_reads_the_revocation_epoch_in_its_update(
    client: TestClient, headers: dict[Role, Headers]
) -> None:
    # Prepare: an operator token the app has cached, so the epoch must be read.
    admin = headers[Role.admin]
    device = _enroll(client, admin, "pi-1")
    created = client.post("/api/v1/tokens", json={"name": "ops", "role": "operator"}, headers=admin)
    operator = {"Authorization": f"Bearer {created.json()['token']}"}
    heartbeat = f"/api/v1/devices/{device}/heartbeat"
    assert client.post(heartbeat, json={}, headers=operator).status_code == 200
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(" ".join(statement.split()))

    engine = client.app.state.engine  # type: ignore[attr-defined]
    event.listen(engine, "before_cursor_execute", record)
    try:
        with _counting(_hot(client)) as passed:
            assert client.post(heartbeat, json={}, headers=operator).status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", record)
    # Assert: lean, and the epoch came back with the UPDATE, not in a statement of its own.
    assert passed == []
    updates = [s for s in statements if s.startswith("UPDATE devices")]
    assert len(updates) == 1 and "api_tokens" in updates[0]
    assert [s for s in statements if "api_tokens" in s] == updates


def test_a_heartbeat_commits_without_waiting_for_the_wal_on_postgresql(
    client: TestClient, admin: Headers
) -> None:
    device = _enroll(client, admin, "pi-1")
    engine = client.app.state.engine  # type: ignore[attr-defined]
    with engine.connect() as connection:
        recorded = crud.record_heartbeat(connection, device, read_epoch=True)
        assert recorded is not None and recorded.revocation_epoch == 0
        if engine.dialect.name == "postgresql":  # set in the UPDATE's own round trip
            setting = connection.execute(text("SHOW synchronous_commit")).scalar_one()
            assert setting == "off"
        connection.rollback()
    with engine.connect() as connection:  # only for that transaction (SET LOCAL)
        if engine.dialect.name == "postgresql":
            assert connection.execute(text("SHOW synchronous_commit")).scalar_one() == "on"


def test_lean_requests_are_counted_under_their_route_template(
    client: TestClient, admin: Headers
) -> None:
    device = _enroll(client, admin, "pi-1")
    assert client.get("/api/v1/devices?limit=5", headers=admin).status_code == 200
    assert client.post(f"/api/v1/devices/{device}/heartbeat", headers=admin).status_code == 200
    text = client.get("/metrics", headers=admin).text
    assert 'method="GET",route="/api/v1/devices",status="200"' in text
    assert 'method="POST",route="/api/v1/devices/{device_id}/heartbeat",status="200"' in text
    assert device not in text


def test_a_database_that_stops_answering_is_503_from_the_lean_routes(
    settings_factory: Callable[..., FleetSettings],
    app_factory: Callable[[FleetSettings], TestClient],
    new_token: Callable[..., str],
) -> None:
    # Prepare: a cached operator token (the gate lets it through without a query), then
    # a database that refuses every new connection.
    client = app_factory(settings_factory())
    operator = {"Authorization": f"Bearer {new_token(client.app.state.engine, Role.operator)}"}  # type: ignore[attr-defined]
    device = _enroll(client, operator, "pi-1")
    assert client.get("/api/v1/devices", headers=operator).status_code == 200
    hot = _hot(client)

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))

    hot.engine.connect = broken  # type: ignore[method-assign]
    hot.write_engine.connect = broken  # type: ignore[method-assign]
    # Execute
    with _counting(hot) as passed:
        listed = client.get("/api/v1/devices", headers=operator)
        beat = client.post(f"/api/v1/devices/{device}/heartbeat", json={}, headers=operator)
    # Assert: the lean routes answered, as the routes answer a busy database.
    assert passed == []
    for response in (listed, beat):
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert "retry" in response.json()["detail"]
