"""Authentication and roles, checked against every route the app has.

The walks below read the routes from the app itself (the OpenAPI spec for the API, the
router for everything else), so a route added later without the auth dependency makes
these tests fail.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from fleet.models.auth import Role
from fleet.models.common import utcnow

#: Operations anyone may call (load balancers and orchestrators probe them).
PUBLIC_OPERATIONS = {("GET", "/healthz"), ("GET", "/readyz")}
#: Non-API paths that need no login: the login form itself, static CSS, the docs page
#: (which asks for a token). The spec answers 401 instead of a redirect, like the API it
#: describes: tests/fleet/test_api_docs.py.
PUBLIC_PAGES = {"/login", "/static", "/docs", "/docs-assets", "/openapi.json", "/"}


def required_role(method: str, path: str) -> Role:
    """The fleet's access policy, stated independently of the code under test."""
    if path.startswith("/api/v1/tokens"):
        return Role.admin
    # Promotion policies decide what reaches devices unattended: applying and approving
    # are admin's (docs/security.md §6).
    if method == "POST" and (path == "/api/v1/policies" or path.startswith("/api/v1/promotions")):
        return Role.admin
    return Role.viewer if method in ("GET", "HEAD") else Role.operator


def _example(parameter: dict[str, Any]) -> str:
    schema = parameter.get("schema", {})
    if schema.get("type") == "integer":
        return "1"
    if "dev-" in schema.get("pattern", ""):
        return "dev-0000000000000001"
    return "wards"


def operations(openapi: dict[str, Any]) -> Iterator[tuple[str, str, str, dict[str, Any]]]:
    """(method, path template, concrete URL, operation) for every API operation."""
    for template, item in openapi["paths"].items():
        for method, operation in item.items():
            url = template
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path":
                    url = url.replace("{" + parameter["name"] + "}", _example(parameter))
            assert "{" not in url, f"unfilled path parameter in {template}"
            yield method.upper(), template, url, operation


def all_routes(app: FastAPI) -> Iterator[tuple[str, set[str]]]:
    """(path, methods) of every route, however the routers are nested."""
    for route in app.router.routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if contexts is not None:  # FastAPI >= 0.13x nests included routers
            for context in contexts():
                yield context.path, set(context.methods or ())
        else:
            yield getattr(route, "path", ""), set(getattr(route, "methods", None) or ())


def test_only_health_is_public_in_the_openapi_spec(client: TestClient) -> None:
    spec = client.app.openapi()  # type: ignore[attr-defined]
    assert spec["components"]["securitySchemes"]["ApiToken"]["scheme"] == "bearer"
    unsecured = {
        (method, template)
        for method, template, _, operation in operations(spec)
        if not operation.get("security")
    }
    assert unsecured == PUBLIC_OPERATIONS


def test_every_operation_refuses_missing_and_unknown_tokens(client: TestClient) -> None:
    spec = client.app.openapi()  # type: ignore[attr-defined]
    checked = 0
    for method, template, url, _ in operations(spec):
        if (method, template) in PUBLIC_OPERATIONS:
            continue
        for headers in (
            {},
            {"Authorization": "Bearer ffk_not-a-real-token"},
            {"Authorization": "Basic eDp5"},
        ):
            response = client.request(method, url, headers=headers)
            assert response.status_code == 401, (method, url, headers, response.text)
            assert response.json()["detail"], (method, url)
            assert response.headers["www-authenticate"].startswith("Bearer")
        checked += 1
    assert checked >= 30


def test_every_operation_refuses_too_low_a_role_and_admits_the_right_one(
    client: TestClient, headers: dict[Role, dict[str, str]]
) -> None:
    spec = client.app.openapi()  # type: ignore[attr-defined]
    for method, template, url, _ in operations(spec):
        if (method, template) in PUBLIC_OPERATIONS:
            continue
        needed = required_role(method, template)
        for role in Role:
            response = client.request(method, url, headers=headers[role])
            if role.allows(needed):
                assert response.status_code not in (401, 403), (method, url, role, response.text)
            else:
                assert response.status_code == 403, (method, url, role, response.text)
                assert f"'{needed.value}'" in response.json()["detail"]


def test_every_page_outside_the_api_needs_a_login(client: TestClient) -> None:
    seen = 0
    for path, methods in all_routes(client.app):  # type: ignore[arg-type]
        if path.startswith("/api/") or path in ("/healthz", "/readyz", "/metrics"):
            continue
        if path in PUBLIC_PAGES:
            continue
        url = re.sub(r"\{[^}]+\}", "1", path)
        for method in methods - {"HEAD"}:
            response = client.request(method, url, follow_redirects=False)
            assert response.status_code == 303, (method, url, response.status_code)
            assert response.headers["location"].startswith("/login"), (method, url)
            seen += 1
    assert seen >= 10


def test_revoked_and_expired_tokens_stop_working(
    client: TestClient, admin: dict[str, str], run_sql: Any
) -> None:
    created = client.post("/api/v1/tokens", json={"name": "ci", "role": "viewer"}, headers=admin)
    assert created.status_code == 201 and created.headers["cache-control"] == "no-store"
    secret, info = created.json()["token"], created.json()["info"]
    assert "token_hash" not in created.text
    viewer = {"Authorization": f"Bearer {secret}"}
    assert client.get("/api/v1/me", headers=viewer).json()["name"] == "ci"
    listed = client.get("/api/v1/tokens", headers=admin).json()
    assert secret not in str(listed) and any(t["id"] == info["id"] for t in listed)
    # Expired
    engine = client.app.state.engine  # type: ignore[attr-defined]
    run_sql(
        engine,
        "UPDATE api_tokens SET expires_at = :t WHERE id = :id",
        t=utcnow() - timedelta(seconds=1),
        id=info["id"],
    )
    # An expiry edited in the database behind the API's back is seen within the cache's
    # TTL (fleet.token_cache); here at once by emptying the cache.
    client.app.state.token_cache.clear()  # type: ignore[attr-defined]
    assert client.get("/api/v1/me", headers=viewer).status_code == 401
    run_sql(engine, "UPDATE api_tokens SET expires_at = NULL WHERE id = :id", id=info["id"])
    client.app.state.token_cache.clear()  # type: ignore[attr-defined]
    assert client.get("/api/v1/me", headers=viewer).status_code == 200
    # Revoked
    revoked = client.delete(f"/api/v1/tokens/{info['id']}", headers=admin)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    refused = client.get("/api/v1/me", headers=viewer)
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]
    assert client.delete("/api/v1/tokens/4242", headers=admin).status_code == 404


def test_only_the_token_hash_is_stored(
    client: TestClient, admin: dict[str, str], run_sql: Any
) -> None:
    secret = client.post(
        "/api/v1/tokens", json={"name": "ops", "role": "operator", "ttl_days": 30}, headers=admin
    ).json()["token"]
    engine = client.app.state.engine  # type: ignore[attr-defined]
    rows = run_sql(
        engine, "SELECT token_hash, prefix, expires_at FROM api_tokens WHERE name = 'ops'"
    )
    token_hash, prefix, expires_at = rows[0]
    import hashlib

    assert token_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert prefix == secret[:12] and expires_at is not None
    dump = " ".join(str(r) for r in run_sql(engine, "SELECT * FROM api_tokens"))
    dump += " ".join(str(r) for r in run_sql(engine, "SELECT * FROM audit_events"))
    assert secret not in dump


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x", "role": "root"},
        {"name": "has space", "role": "viewer"},
        {"role": "viewer"},
        {"name": "x", "role": "viewer", "ttl_days": 0},
    ],
)
def test_bad_token_requests_are_refused(
    client: TestClient, admin: dict[str, str], body: Any
) -> None:
    before = len(client.get("/api/v1/tokens", headers=admin).json())
    response = client.post("/api/v1/tokens", json=body, headers=admin)
    assert response.status_code == 422 and response.json()["detail"].startswith("invalid request")
    assert len(client.get("/api/v1/tokens", headers=admin).json()) == before
