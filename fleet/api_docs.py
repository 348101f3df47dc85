"""``/openapi.json`` behind a token, and ``/docs``: the interactive API reference, served
without the internet.

The spec needs the same credentials as the API it describes — a bearer token of any
role, or a dashboard session — so someone who can reach the server but holds no token
learns nothing from it (routes, fields, limits). ``/healthz`` and ``/readyz`` stay the
only public API answers.

FastAPI's default Swagger UI page loads its JavaScript and CSS from a CDN, so on an
offline admin network (a hospital, a factory floor) ``/docs`` is a blank page. The
same Swagger UI (5.x, which reads OpenAPI 3.1) ships inside the ``fastapi-offline``
package; this module serves those files from ``/docs-assets``. The ``/docs`` page itself
is public and holds no part of the spec: a person logged in to the dashboard sees the
reference at once (the spec request carries the session cookie); anyone else is asked
for an API token first, which the page uses to fetch the spec and pre-authorizes for
"Try it out". The token stays in the page's memory (never in storage).
"""

from __future__ import annotations

import json
from html import escape
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.staticfiles import StaticFiles
from sqlmodel import Session
from starlette.responses import HTMLResponse, JSONResponse

from fleet.api.deps import get_session
from fleet.auth import authenticate, bearer_scheme
from fleet.dashboard.session import current_principal
from fleet.models.auth import Role

ASSETS_URL = "/docs-assets"
OPENAPI_URL = "/openapi.json"


def mount_api_docs(app: FastAPI, *, docs_url: str = "/docs") -> None:
    """Serve the spec at ``/openapi.json`` (token or dashboard session required) and
    Swagger UI at ``docs_url`` with its assets from this server. Create the app with
    ``openapi_url=None, docs_url=None`` so FastAPI's public spec and CDN page are not
    registered too."""
    if app.openapi_url is not None or app.docs_url is not None:
        raise ValueError("create the app with openapi_url=None and docs_url=None")
    app.mount(
        ASSETS_URL,
        StaticFiles(packages=[("fastapi_offline", "static")]),
        name="docs-assets",
    )

    @app.get(OPENAPI_URL, include_in_schema=False)
    def openapi_document(
        request: Request,
        session: Annotated[Session, Depends(get_session)],
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    ) -> JSONResponse:
        if credentials is not None or current_principal(request, session) is None:
            # 401 with how to get a token, 403 below viewer (as the API's own dependency)
            authenticate(session, request.headers.get("authorization")).require(Role.viewer)
        return JSONResponse(app.openapi())

    @app.get(docs_url, include_in_schema=False)
    def swagger_ui(
        request: Request, session: Annotated[Session, Depends(get_session)]
    ) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        config = {
            "url": f"{root}{OPENAPI_URL}",
            "dom_id": "#swagger-ui",
            "layout": "BaseLayout",
            "deepLinking": True,
            "showExtensions": True,
            "showCommonExtensions": True,
            "persistAuthorization": False,
            **(app.swagger_ui_parameters or {}),
        }
        return HTMLResponse(
            _page(
                title=f"{app.title} — API reference",
                assets=f"{root}{ASSETS_URL}",
                config=config,
                logged_in=current_principal(request, session) is not None,
            ),
            headers={"Cache-Control": "no-store"},
        )


def _script_json(value: Any) -> str:
    """JSON safe inside a <script> element (no '</script>' or '<!--' can close it)."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# The token form is shown only to a visitor without a dashboard session. Its fetch of the
# spec with the token tells a wrong token apart before Swagger UI starts.
_SCRIPT = """
const CONFIG = %(config)s;
const LOGGED_IN = %(logged_in)s;
function start(token, spec) {
  const options = Object.assign({}, CONFIG, {
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  });
  if (spec) { delete options.url; options.spec = spec; }
  if (token) {
    options.onComplete = () => { ui.preauthorizeApiKey("ApiToken", token); };
  }
  const ui = SwaggerUIBundle(options);
}
const form = document.getElementById("token-form");
const problem = document.getElementById("token-problem");
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const token = document.getElementById("token").value.trim();
  if (!token) { problem.textContent = "Paste an API token first."; return; }
  const answer = await fetch(CONFIG.url, {headers: {Authorization: "Bearer " + token}});
  if (!answer.ok) {
    problem.textContent = "The server refused this token (" + answer.status + "): "
      + "create one with `fedfleet fleet token create --role viewer`.";
    return;
  }
  form.hidden = true;
  start(token, await answer.json());
});
if (LOGGED_IN) { start(null, null); } else { form.hidden = false; }
"""


def _page(*, title: str, assets: str, config: dict[str, Any], logged_in: bool) -> str:
    script = _SCRIPT % {
        "config": _script_json(config),
        "logged_in": "true" if logged_in else "false",
    }
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<link type="text/css" rel="stylesheet" href="{escape(assets)}/swagger-ui.css">
<link rel="shortcut icon" href="{escape(assets)}/favicon.png">
<title>{escape(title)}</title>
</head>
<body>
<form id="token-form" class="swagger-ui" hidden style="max-width: 40em; margin: 2em auto">
<h2>{escape(title)}</h2>
<p>The API reference needs an API token (any role), as every API route but the health
checks does; or <a href="/login?next=/docs">log in to the dashboard</a> first.</p>
<label for="token">API token</label>
<input id="token" name="token" type="password" autocomplete="off" size="50">
<button type="submit" class="btn authorize">Show the API reference</button>
<p id="token-problem" role="alert"></p>
</form>
<div id="swagger-ui"></div>
<script src="{escape(assets)}/swagger-ui-bundle.js"></script>
<script>{script}</script>
</body>
</html>
"""
