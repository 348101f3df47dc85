"""`/docs` serves Swagger UI from this server, never from a CDN."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient


def test_docs_page_loads_its_assets_from_this_server(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    html = page.text
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
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
    assert client.get("/openapi.json").json()["openapi"].startswith("3.1")
    assert re.search(r'"5\.\d+\.\d+"', bundle)


def test_docs_assets_do_not_list_or_escape_their_folder(client: TestClient) -> None:
    assert client.get("/docs-assets/").status_code == 404
    assert client.get("/docs-assets/../app.py").status_code == 404
    assert client.get("/docs-assets/%2e%2e/%2e%2e/fleet/app.py").status_code == 404
