"""``/docs``: the interactive API reference, served without the internet.

FastAPI's default Swagger UI page loads its JavaScript and CSS from a CDN, so on an
offline admin network (a hospital, a factory floor) ``/docs`` is a blank page. The
same Swagger UI (5.x, which reads OpenAPI 3.1) ships inside the ``fastapi-offline``
package; this module serves those files from ``/docs-assets`` and points the page at
them. ``/openapi.json`` is unchanged.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

ASSETS_URL = "/docs-assets"


def mount_api_docs(app: FastAPI, *, docs_url: str = "/docs") -> None:
    """Serve Swagger UI at ``docs_url`` with its assets from this server (create the app
    with ``docs_url=None`` so FastAPI's CDN page is not registered too)."""
    app.mount(
        ASSETS_URL,
        StaticFiles(packages=[("fastapi_offline", "static")]),
        name="docs-assets",
    )
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get(docs_url, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} — API reference",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            swagger_ui_parameters={
                "persistAuthorization": False,
                **(app.swagger_ui_parameters or {}),
            },
        )
