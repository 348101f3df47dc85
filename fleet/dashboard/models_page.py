"""The dashboard's models page: the model registry, promote/deprecate actions, and
artifact downloads.

Each version shows its accuracy and every other metric the API serves for it. Runs
registered from a run folder (``fedfleet model register``, the coordinator) name their
metrics ``final_accuracy``, ``final_loss``, ``final_epsilon``, ``rounds``; a client may
also send a plain ``accuracy``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from fleet.crud import registry as registry_crud
from fleet.dashboard.pages import Pages, SessionDep, actor, require_operator
from fleet.dashboard.session import check_form, require_login

#: Metric names that hold a version's accuracy, most specific first.
ACCURACY_KEYS = ("final_accuracy", "accuracy")


def accuracy_of(metrics: Mapping[str, float]) -> float | None:
    """The version's accuracy, under whichever name it was registered."""
    for key in ACCURACY_KEYS:
        if key in metrics:
            return metrics[key]
    return None


def other_metrics(metrics: Mapping[str, float]) -> list[tuple[str, float]]:
    """Every metric but the one shown as the accuracy, sorted by name."""
    shown = next((key for key in ACCURACY_KEYS if key in metrics), None)
    return sorted((k, v) for k, v in metrics.items() if k != shown)


def models_router(pages: Pages) -> APIRouter:
    """``GET /models``, ``POST /models/{id}/{promote|deprecate}`` and
    ``GET /artifacts/{id}/download``."""
    router = APIRouter(include_in_schema=False)

    @router.get("/models")
    def models(request: Request, session: SessionDep) -> HTMLResponse:
        principal = require_login(request, session)
        result = registry_crud.list_models(session, task=None, stage=None, limit=200, offset=0)
        return pages.render(
            request,
            "models.html",
            principal=principal,
            result=result,
            accuracy_of=accuracy_of,
            other_metrics=other_metrics,
        )

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
