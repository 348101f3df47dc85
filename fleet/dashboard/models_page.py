"""The dashboard's models page: the model registry, promote/deprecate actions, and
artifact downloads."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from fleet.crud import registry as registry_crud
from fleet.dashboard.pages import Pages, SessionDep, actor, require_operator
from fleet.dashboard.session import check_form, require_login


def models_router(pages: Pages) -> APIRouter:
    """``GET /models``, ``POST /models/{id}/{promote|deprecate}`` and
    ``GET /artifacts/{id}/download``."""
    router = APIRouter(include_in_schema=False)

    @router.get("/models")
    def models(request: Request, session: SessionDep) -> HTMLResponse:
        principal = require_login(request, session)
        result = registry_crud.list_models(session, task=None, stage=None, limit=200, offset=0)
        return pages.render(request, "models.html", principal=principal, result=result)

    @router.post("/models/{model_id}/{action}")
    def model_action(
        model_id: int,
        action: str,
        request: Request,
        session: SessionDep,
        csrf: Annotated[str, Form(max_length=200)] = "",
    ) -> Response:
        principal = require_login(request, session)
        check_form(request, csrf)
        require_operator(principal)
        model = registry_crud.get_model(session, model_id) if 0 < model_id < 2**31 else None
        if model is None:
            raise HTTPException(404, f"model version {model_id} does not exist")
        if action == "promote":
            registry_crud.promote_model(session, model, actor=actor(principal))
        elif action == "deprecate":
            registry_crud.deprecate_model(session, model, actor=actor(principal))
        else:
            raise HTTPException(404, f"unknown model action {action[:20]!r}")
        session.commit()
        return RedirectResponse("/models", status_code=303)

    @router.get("/artifacts/{artifact_id}/download")
    def download(artifact_id: int, request: Request, session: SessionDep) -> FileResponse:
        require_login(request, session)
        artifact = (
            registry_crud.get_artifact(session, artifact_id) if 0 < artifact_id < 2**31 else None
        )
        if artifact is None:
            raise HTTPException(404, f"artifact {artifact_id} does not exist")
        path = request.app.state.artifact_store.path_for(artifact.sha256)
        if not path.is_file():
            raise HTTPException(404, f"artifact {artifact_id}'s file is missing from storage")
        return FileResponse(path, media_type="application/octet-stream", filename=artifact.filename)

    return router
