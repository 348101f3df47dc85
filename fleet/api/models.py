"""``/api/v1/models`` and ``/api/v1/artifacts``: the model registry."""

from __future__ import annotations

import logging
from pathlib import Path as FilePath
from pathlib import PurePath
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, HTTPException, Path, Query, Request, UploadFile
from fastapi.responses import FileResponse
from pydantic import WithJsonSchema
from sqlmodel import Session, col, select

from fleet import bundle_binding
from fleet.api.deps import (
    COMMON_RESPONSES,
    CONFLICT,
    NOT_FOUND,
    Operator,
    SessionDep,
    SettingsDep,
    StoreDep,
    Viewer,
)
from fleet.artifacts import signature_valid
from fleet.crud import registry as crud
from fleet.errors import InvalidInput
from fleet.models.common import MAX_ID, ErrorBody, Page, Slug, check_text
from fleet.models.registry import (
    Artifact,
    ArtifactFormat,
    ArtifactPublic,
    ModelStage,
    ModelVersion,
    ModelVersionCreate,
    ModelVersionPublic,
    ModelVersionUpdate,
    Sha256Hex,
    SignatureB64,
)

logger = logging.getLogger("fleet")
router = APIRouter(responses=COMMON_RESPONSES)

ModelId = Annotated[int, Path(ge=1, le=MAX_ID, description="Model version number.")]
ArtifactId = Annotated[int, Path(ge=1, le=MAX_ID, description="Artifact id.")]
Limit = Annotated[int, Query(ge=1, le=500)]
Offset = Annotated[int, Query(ge=0, le=1_000_000)]


def _load(session: SessionDep, model_id: int) -> ModelVersion:
    model = crud.get_model(session, model_id)
    if model is None:
        raise HTTPException(404, f"model version {model_id} does not exist")
    return model


@router.get("/models", response_model=Page[ModelVersionPublic], tags=["models"])
def list_models(
    session: SessionDep,
    principal: Viewer,
    task: Annotated[Slug | None, Query()] = None,
    stage: Annotated[ModelStage | None, Query()] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[ModelVersionPublic]:
    return crud.list_models(session, task=task, stage=stage, limit=limit, offset=offset)


@router.post(
    "/models",
    status_code=201,
    response_model=ModelVersionPublic,
    tags=["models"],
    summary="Register a model version with its lineage and metrics",
)
def register_model(
    body: ModelVersionCreate, session: SessionDep, principal: Operator
) -> ModelVersionPublic:
    model = crud.register_model(session, body, actor=principal.actor("api"))
    session.commit()
    return crud.public_view(session, model)


@router.get(
    "/models/{model_id}", response_model=ModelVersionPublic, responses=NOT_FOUND, tags=["models"]
)
def get_model(model_id: ModelId, session: SessionDep, principal: Viewer) -> ModelVersionPublic:
    return crud.public_view(session, _load(session, model_id))


@router.patch(
    "/models/{model_id}", response_model=ModelVersionPublic, responses=NOT_FOUND, tags=["models"]
)
def update_model(
    model_id: ModelId, body: ModelVersionUpdate, session: SessionDep, principal: Operator
) -> ModelVersionPublic:
    model = crud.update_model(session, _load(session, model_id), body, actor=principal.actor("api"))
    session.commit()
    return crud.public_view(session, model)


@router.post(
    "/models/{model_id}/promote",
    response_model=ModelVersionPublic,
    responses=NOT_FOUND,
    tags=["models"],
    summary="Make this the version to deploy for its task",
)
def promote_model(
    model_id: ModelId, session: SessionDep, principal: Operator
) -> ModelVersionPublic:
    model = crud.promote_model(session, _load(session, model_id), actor=principal.actor("api"))
    session.commit()
    return crud.public_view(session, model)


@router.post(
    "/models/{model_id}/deprecate",
    response_model=ModelVersionPublic,
    responses=NOT_FOUND,
    tags=["models"],
    summary="Mark this version as not to be rolled out any more",
)
def deprecate_model(
    model_id: ModelId, session: SessionDep, principal: Operator
) -> ModelVersionPublic:
    model = crud.deprecate_model(session, _load(session, model_id), actor=principal.actor("api"))
    session.commit()
    return crud.public_view(session, model)


@router.get(
    "/models/{model_id}/artifacts",
    response_model=list[ArtifactPublic],
    responses=NOT_FOUND,
    tags=["artifacts"],
)
def list_artifacts(
    model_id: ModelId, session: SessionDep, principal: Viewer
) -> list[ArtifactPublic]:
    return crud.public_view(session, _load(session, model_id)).artifacts


def _clean_filename(raw: str | None) -> str:
    name = PurePath((raw or "").replace("\\", "/")).name[:255]
    try:
        check_text(name)
    except ValueError:
        return "artifact.bin"
    return name or "artifact.bin"


@router.post(
    "/models/{model_id}/artifacts",
    status_code=201,
    response_model=ArtifactPublic,
    responses={
        **NOT_FOUND,
        **CONFLICT,
        413: {"model": ErrorBody, "description": "The file is larger than the upload limit."},
    },
    tags=["artifacts"],
    summary="Upload an artifact (multipart form) built from this model version",
)
def upload_artifact(
    model_id: ModelId,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    request: Request,
    principal: Operator,
    file: Annotated[
        UploadFile,
        File(description="The artifact's bytes (not empty).", json_schema_extra={"minLength": 1}),
    ],
    format: Annotated[ArtifactFormat, Form(description="File format.")],
    target: Annotated[Slug, Form(description="Hardware target, or 'any'.")],
    # Optional form fields: documented as plain strings (a form cannot carry null).
    signature: Annotated[
        SignatureB64 | None,
        Form(description="Base64 Ed25519 signature of the SHA-256."),
        WithJsonSchema({"type": "string", "pattern": "^[A-Za-z0-9+/]{86}==$"}),
    ] = None,
    sha256: Annotated[
        Sha256Hex | None,
        Form(description="Expected SHA-256; the upload is refused if different."),
        WithJsonSchema({"type": "string", "pattern": "^[0-9a-f]{64}$"}),
    ] = None,
) -> ArtifactPublic:
    model = _load(session, model_id)
    signing_key = request.app.state.signing_key
    if signing_key is not None and signature is None:
        raise InvalidInput(
            "this fleet requires signed artifacts: add the 'signature' form field "
            "(Ed25519 signature of the file's SHA-256 digest, base64)"
        )
    try:
        stored = store.save(file.file, max_bytes=settings.max_upload_bytes)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from exc
    committed = False
    try:
        if sha256 is not None and sha256 != stored.sha256:
            raise InvalidInput(
                f"the uploaded file's SHA-256 is {stored.sha256}, not the expected {sha256}; "
                "the file was corrupted or is not the one you meant"
            )
        if signing_key is not None and not signature_valid(
            signing_key, signature_b64=signature or "", sha256_hex=stored.sha256
        ):
            raise InvalidInput(
                "the signature does not verify with the fleet's signing public key; sign the "
                "file's SHA-256 digest with the matching private key"
            )
        if format is ArtifactFormat.bundle:
            _check_bundle_binding(
                session, model, path=store.path_for(stored.sha256), target=target, key=signing_key
            )
            _check_release(session, model, store=store, path=store.path_for(stored.sha256))
        artifact = crud.add_artifact(
            session,
            model,
            format=format,
            target=target,
            filename=_clean_filename(file.filename),
            size_bytes=stored.size_bytes,
            sha256=stored.sha256,
            signature=signature,
            actor=principal.actor("api"),
        )
        session.commit()
        committed = True
    finally:
        if not committed and stored.created:
            session.rollback()
            if not crud.sha256_in_use(session, stored.sha256):
                store.discard(stored.sha256)
    return crud.artifact_public(artifact)


def _check_bundle_binding(
    session: Session, model: ModelVersion, *, path: FilePath, target: str, key: Any
) -> None:
    """422 unless the bundle at ``path`` is this version's (see :mod:`fleet.bundle_binding`)."""
    try:
        manifest = bundle_binding.read_manifest(path, public_key=key)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from exc
    checkpoints = {
        a.sha256
        for a in crud.public_view(session, model).artifacts
        if a.format == ArtifactFormat.torch
    }
    problem = bundle_binding.mismatch(
        manifest,
        model_version_id=model.id or 0,
        task=model.task,
        target=target,
        checkpoints=checkpoints,
    )
    if problem is not None:
        raise InvalidInput(problem)


def _check_release(session: Session, model: ModelVersion, *, store: Any, path: FilePath) -> None:
    """422 unless the bundle's signed release is above every bundle of the same task and
    target already stored (:func:`fleet.bundle_binding.release_conflict`)."""
    manifest = bundle_binding.read_manifest(path, public_key=None)  # verified just before
    rows = session.exec(
        select(Artifact.model_version_id, Artifact.sha256)
        .join(ModelVersion, col(ModelVersion.id) == col(Artifact.model_version_id))
        .where(
            col(Artifact.format) == ArtifactFormat.bundle,
            col(Artifact.target) == manifest.target,
            col(ModelVersion.task) == manifest.task,
        )
    ).all()
    stored = [(version, _stored_release(store, sha)) for version, sha in rows]
    problem = bundle_binding.release_conflict(manifest, stored=stored)
    if problem is not None:
        raise InvalidInput(problem)


def _stored_release(store: Any, sha256: str) -> int | None:
    """The signed release of a stored bundle (None: none, or its file is unreadable)."""
    try:
        return bundle_binding.read_manifest(store.path_for(sha256), public_key=None).release
    except (ValueError, OSError):
        return None


@router.get(
    "/artifacts/{artifact_id}",
    response_model=ArtifactPublic,
    responses=NOT_FOUND,
    tags=["artifacts"],
)
def get_artifact(artifact_id: ArtifactId, session: SessionDep, principal: Viewer) -> ArtifactPublic:
    artifact = crud.get_artifact(session, artifact_id)
    if artifact is None:
        raise HTTPException(404, f"artifact {artifact_id} does not exist")
    return crud.artifact_public(artifact)


@router.get(
    "/artifacts/{artifact_id}/download",
    response_class=FileResponse,
    responses={
        200: {
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
            "description": "The artifact's bytes; the ETag is its SHA-256.",
        },
        **NOT_FOUND,
    },
    tags=["artifacts"],
)
def download_artifact(
    artifact_id: ArtifactId, session: SessionDep, store: StoreDep, principal: Viewer
) -> FileResponse:
    artifact = crud.get_artifact(session, artifact_id)
    if artifact is None:
        raise HTTPException(404, f"artifact {artifact_id} does not exist")
    path = store.path_for(artifact.sha256)
    if not path.is_file():
        logger.error("artifact %s: file %s is missing from storage", artifact_id, path)
        raise HTTPException(404, f"artifact {artifact_id}'s file is missing from storage")
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=artifact.filename,
        headers={"ETag": f'"{artifact.sha256}"', "X-Content-SHA256": artifact.sha256},
    )
