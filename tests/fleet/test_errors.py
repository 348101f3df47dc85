"""Bad input of every kind gets a JSON 4xx that says what was wrong — never a 500."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fleet.models.auth import Role
from fleet.settings import FleetSettings

Headers = dict[str, str]


@pytest.mark.parametrize(
    ("method", "url", "kwargs", "status", "fragment"),
    [
        (
            "POST",
            "/api/v1/groups",
            {"content": b"{not json", "headers": {"Content-Type": "application/json"}},
            422,
            "not valid JSON",
        ),
        (
            "POST",
            "/api/v1/groups",
            {"content": b"[1, 2]", "headers": {"Content-Type": "application/json"}},
            422,
            "body",
        ),
        (
            "POST",
            "/api/v1/groups",
            {"content": b"name=x", "headers": {"Content-Type": "text/plain"}},
            422,
            "body",
        ),
        ("POST", "/api/v1/groups", {"json": {"name": "a\u0000b"}}, 422, "not a valid name"),
        (
            "POST",
            "/api/v1/groups",
            {"json": {"name": "ok", "description": "bell\u0007"}},
            422,
            "U+0007",
        ),
        (
            "POST",
            "/api/v1/groups",
            {"json": {"name": "ok", "description": "x" * 1001}},
            422,
            "at most 1000",
        ),
        (
            "POST",
            "/api/v1/groups",
            {
                "content": b'{"name": "ok", "description": "\\ud800"}',
                "headers": {"Content-Type": "application/json"},
            },
            422,
            "unicode",
        ),
        ("GET", "/api/v1/models/99999999999999999999", {}, 422, "path.model_id"),
        ("GET", "/api/v1/models/-1", {}, 422, "greater than or equal to 1"),
        ("GET", "/api/v1/devices?limit=0", {}, 422, "query.limit"),
        ("GET", "/api/v1/devices?limit=abc", {}, 422, "query.limit"),
        ("GET", "/api/v1/devices?offset=99999999999", {}, 422, "query.offset"),
        ("GET", "/api/v1/devices?group=%00", {}, 422, "query.group"),
        ("GET", "/api/v1/devices?status=lost", {}, 422, "query.status"),
        ("GET", "/api/v1/devices/not-a-device", {}, 422, "device ids look like"),
        ("GET", "/api/v1/audit?since=yesterday", {}, 422, "query.since"),
        ("GET", "/api/v1/nope", {}, 404, "Not Found"),
        ("DELETE", "/api/v1/devices", {}, 405, "Method Not Allowed"),
        ("PUT", "/api/v1/runs/1/rounds/99999999999", {"json": {}}, 422, "path.round_number"),
    ],
)
def test_bad_requests_get_a_json_4xx_with_a_reason(
    client: TestClient,
    admin: Headers,
    method: str,
    url: str,
    kwargs: dict[str, Any],
    status: int,
    fragment: str,
) -> None:
    kwargs = dict(kwargs)  # the parametrized dict is shared by both backends' runs
    extra = kwargs.pop("headers", {})
    response = client.request(method, url, headers={**admin, **extra}, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert fragment in response.json()["detail"] or fragment in response.text


def test_oversized_json_body_is_413(
    client: TestClient, admin: Headers, settings: FleetSettings
) -> None:
    big = {"task": "t", "config": {"blob": "x" * (settings.max_body_bytes + 10)}}
    response = client.post("/api/v1/runs", json=big, headers=admin)
    assert response.status_code == 413 and "limit" in response.json()["detail"]
    assert client.get("/api/v1/runs", headers=admin).json()["total"] == 0


def test_bad_content_length_is_400(client: TestClient, admin: Headers) -> None:
    response = client.post(
        "/api/v1/groups",
        content=b"{}",
        headers={**admin, "Content-Length": "lots", "Content-Type": "application/json"},
    )
    assert response.status_code == 400 and "Content-Length" in response.json()["detail"]


def test_validation_errors_list_every_field(client: TestClient, admin: Headers) -> None:
    response = client.post(
        "/api/v1/devices", json={"name": "", "hardware_target": "X", "extra": 1}, headers=admin
    )
    body = response.json()
    assert response.status_code == 422
    assert {e["field"] for e in body["errors"]} == {
        "body.name",
        "body.hardware_target",
        "body.extra",
    }
    assert "(and 2 more)" in body["detail"]


def test_a_busy_database_is_503_with_retry_after(
    database: Any,
    settings_factory: Callable[..., FleetSettings],
    app_factory: Callable[[FleetSettings], TestClient],
    new_token: Callable[..., str],
) -> None:
    # Prepare: an app whose database disappears (stopped server) after start.
    client = app_factory(settings_factory())
    token = new_token(client.app.state.engine, Role.admin)  # type: ignore[attr-defined]
    from sqlalchemy.exc import OperationalError

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))

    client.app.state.engine.connect = broken  # type: ignore[attr-defined]
    client.app.state.engine.dispose()  # type: ignore[attr-defined]
    # Execute
    response = client.get("/api/v1/devices", headers={"Authorization": f"Bearer {token}"})
    ready = client.get("/readyz")
    # Assert
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert "retry" in response.json()["detail"]
    assert ready.status_code == 503 and ready.json()["status"] == "not ready"


def test_unexpected_errors_are_json_500_without_internals(
    client: TestClient, admin: Headers, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleet.crud import groups

    def boom(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(groups, "list_groups", boom)
    safe_client = TestClient(client.app, raise_server_exceptions=False)
    response = safe_client.get("/api/v1/groups", headers=admin)
    assert response.status_code == 500
    assert "incident" in response.json()["detail"]
    assert "secret internal detail" not in response.text
