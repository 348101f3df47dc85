"""`/docs` serves Swagger UI from this server, never from a CDN; `/openapi.json` needs a
token (or a dashboard session) like every API route but the health checks."""

from __future__ import annotations

import re
from typing import Any

from fastapi.testclient import TestClient

from fleet.models.auth import Role


def test_docs_page_loads_its_assets_from_this_server(
    client: TestClient, headers: dict[Role, dict[str, str]]
) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    html = page.text
    links = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert all(s.startswith("/") and not s.startswith("//") for s in links), links
    sources = re.findall(r'(?:src="|<link[^>]*href=")([^"]+)"', html)  # what it loads
    assert sources, html
    assert all(s.startswith("/docs-assets/") for s in sources), sources
    assert "cdn" not in html.lower()
    assert (
        "url: '/openapi.json'" in html
        or '"url": "/openapi.json"' in html
        or "/openapi.json" in html
    )

    for source in sources:
        asset = client.get(source)
        assert asset.status_code == 200, source
        assert len(asset.content) > 1000, source
    bundle = client.get("/docs-assets/swagger-ui-bundle.js").text
    # Swagger UI 5 reads OpenAPI 3.1 (what FastAPI writes); 4.x shows an error instead.
    spec = client.get("/openapi.json", headers=headers[Role.viewer]).json()
    assert spec["openapi"].startswith("3.1")
    assert re.search(r'"5\.\d+\.\d+"', bundle)


def test_docs_assets_do_not_list_or_escape_their_folder(client: TestClient) -> None:
    assert client.get("/docs-assets/").status_code == 404
    assert client.get("/docs-assets/../app.py").status_code == 404
    assert client.get("/docs-assets/%2e%2e/%2e%2e/fleet/app.py").status_code == 404


def test_the_spec_needs_a_token_or_a_dashboard_session(
    client: TestClient, headers: dict[Role, dict[str, str]], tokens: dict[Role, str]
) -> None:
    # Without credentials: 401 and how to get a token, nothing of the spec.
    anonymous = client.get("/openapi.json")
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    assert "fedfleet fleet token create" in anonymous.json()["detail"]
    assert "/api/v1/devices" not in anonymous.text
    wrong = client.get("/openapi.json", headers={"Authorization": "Bearer ffk_not-a-token"})
    assert wrong.status_code == 401

    # Any role's token reads it.
    for role in Role:
        answer = client.get("/openapi.json", headers=headers[role])
        assert answer.status_code == 200 and "/api/v1/devices" in answer.json()["paths"]

    # A person logged in to the dashboard reads it with the session cookie alone.
    browser = TestClient(client.app)
    login = browser.post(
        "/login", data={"token": tokens[Role.viewer], "next": "/docs"}, follow_redirects=False
    )
    assert login.status_code == 303
    assert browser.get("/openapi.json").status_code == 200
    # ... but a wrong bearer token is refused even then.
    assert browser.get("/openapi.json", headers=wrong.request.headers).status_code == 401


def test_docs_page_asks_for_a_token_unless_logged_in(
    client: TestClient, tokens: dict[Role, str]
) -> None:
    page = client.get("/docs").text
    assert "const LOGGED_IN = false;" in page and 'id="token-form"' in page
    assert "/api/v1/devices" not in page  # the page holds no part of the spec
    browser: Any = TestClient(client.app)
    browser.post("/login", data={"token": tokens[Role.viewer]}, follow_redirects=False)
    assert "const LOGGED_IN = true;" in browser.get("/docs").text
