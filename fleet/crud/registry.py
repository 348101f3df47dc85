"""The model registry: versions, stages, artifacts."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence

from sqlalchemy import func
from sqlmodel import Session, col, select

from fleet import audit
from fleet.audit import Actor
from fleet.errors import Conflict, InvalidReference
from fleet.models.common import Page, utcnow
from fleet.models.registry import (
    Artifact,
    ArtifactFormat,
    ArtifactPublic,
    ModelStage,
    ModelVersion,
    ModelVersionCreate,
    ModelVersionPublic,
    ModelVersionUpdate,
)
from fleet.models.runs import Run

log = logging.getLogger(__name__)


def artifact_public(artifact: Artifact) -> ArtifactPublic:
    return ArtifactPublic.model_validate(artifact, from_attributes=True)


def _artifacts_of(session: Session, model_ids: Sequence[int]) -> dict[int, list[Artifact]]:
    found: dict[int, list[Artifact]] = defaultdict(list)
    if model_ids:
        rows = session.exec(
            select(Artifact)
            .where(col(Artifact.model_version_id).in_(list(model_ids)))
            .order_by(col(Artifact.id))
        ).all()
        for artifact in rows:
            found[artifact.model_version_id].append(artifact)
    return found


def to_public(model: ModelVersion, artifacts: Sequence[Artifact]) -> ModelVersionPublic:
    return ModelVersionPublic(
        id=model.id or 0,
        task=model.task,
        name=model.name,
        description=model.description,
        stage=model.stage,
        source_run_id=model.source_run_id,
        source_round=model.source_round,
        metrics=dict(model.metrics),
        parent_id=model.parent_id,
        created_at=model.created_at,
        created_by=model.created_by,
        stage_changed_at=model.stage_changed_at,
        artifacts=[artifact_public(a) for a in artifacts],
    )


def public_view(session: Session, model: ModelVersion) -> ModelVersionPublic:
    """Public view of one model version with its artifacts."""
    return to_public(model, _artifacts_of(session, [model.id or 0]).get(model.id or 0, []))


def get_model(session: Session, model_id: int) -> ModelVersion | None:
    return session.get(ModelVersion, model_id)


def list_models(
    session: Session,
    *,
    task: str | None,
    stage: ModelStage | None,
    limit: int,
    offset: int,
) -> Page[ModelVersionPublic]:
    """Model versions, newest first."""
    conditions = []
    if task is not None:
        conditions.append(col(ModelVersion.task) == task)
    if stage is not None:
        conditions.append(col(ModelVersion.stage) == stage)
    total = session.exec(select(func.count()).select_from(ModelVersion).where(*conditions)).one()
    models = session.exec(
        select(ModelVersion)
        .where(*conditions)
        .order_by(col(ModelVersion.id).desc())
        .limit(limit)
        .offset(offset)
    ).all()
    artifacts = _artifacts_of(session, [m.id or 0 for m in models])
    items = [to_public(m, artifacts.get(m.id or 0, [])) for m in models]
    return Page[ModelVersionPublic](items=items, total=total, limit=limit, offset=offset)


def register_model(session: Session, data: ModelVersionCreate, *, actor: Actor) -> ModelVersion:
    """Register a model version with its lineage, and attach the drift reference of its
    task's training inputs where the fleet knows the task (:mod:`fleet.drift_reference`;
    the data loaded with the source run's ``seed``, else 0)."""
    if data.source_run_id is not None and session.get(Run, data.source_run_id) is None:
        raise InvalidReference(f"run {data.source_run_id} does not exist; check source_run_id")
    if data.parent_id is not None and session.get(ModelVersion, data.parent_id) is None:
        raise InvalidReference(f"model version {data.parent_id} does not exist; check parent_id")
    model = ModelVersion(
        task=data.task,
        name=data.name,
        description=data.description,
        source_run_id=data.source_run_id,
        source_round=data.source_round,
        metrics=dict(data.metrics),
        parent_id=data.parent_id,
        created_by=actor.name,
    )
    session.add(model)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="model.register",
        entity_type="model",
        entity_id=model.id or 0,
        after=public_view(session, model),
    )
    _attach_task_reference(session, model, actor=actor)
    return model


def _attach_task_reference(session: Session, model: ModelVersion, *, actor: Actor) -> None:
    from fleet.crud.telemetry import set_reference
    from fleet.drift_reference import task_reference

    run = session.get(Run, model.source_run_id) if model.source_run_id is not None else None
    seed = run.config.get("seed", 0) if run is not None else 0
    try:
        reference = task_reference(model.task, seed=seed if isinstance(seed, int) else 0)
    except ValueError as err:  # no usable training inputs: an operator PUTs one
        log.info("model version %s registered without a drift reference: %s", model.id, err)
        return
    set_reference(session, model_version_id=model.id or 0, reference=reference, actor=actor)


def update_model(
    session: Session, model: ModelVersion, data: ModelVersionUpdate, *, actor: Actor
) -> ModelVersion:
    """Change a version's label or description (lineage and metrics are immutable)."""
    before = public_view(session, model)
    if data.name is not None and data.name != model.name:
        model.name = data.name
    if data.description is not None and data.description != model.description:
        model.description = data.description
    session.add(model)
    session.flush()
    after = public_view(session, model)
    if after != before:
        audit.record(
            session,
            actor=actor,
            action="model.update",
            entity_type="model",
            entity_id=model.id or 0,
            before=before,
            after=after,
        )
    return model


def _set_stage(
    session: Session, model: ModelVersion, stage: ModelStage, *, actor: Actor, action: str
) -> None:
    before = public_view(session, model)
    model.stage = stage
    model.stage_changed_at = utcnow()
    session.add(model)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action=action,
        entity_type="model",
        entity_id=model.id or 0,
        before=before,
        after=public_view(session, model),
    )


def promote_model(session: Session, model: ModelVersion, *, actor: Actor) -> ModelVersion:
    """Make this the promoted version of its task (the previous one goes back to
    ``registered``). Promoting the promoted version changes nothing."""
    if model.stage is ModelStage.promoted:
        return model
    previous = session.exec(
        select(ModelVersion).where(
            ModelVersion.task == model.task,
            ModelVersion.stage == ModelStage.promoted,
            ModelVersion.id != model.id,
        )
    ).all()
    for other in previous:
        _set_stage(session, other, ModelStage.registered, actor=actor, action="model.demote")
    _set_stage(session, model, ModelStage.promoted, actor=actor, action="model.promote")
    return model


def deprecate_model(session: Session, model: ModelVersion, *, actor: Actor) -> ModelVersion:
    """Mark a version as not to be rolled out any more (idempotent)."""
    if model.stage is not ModelStage.deprecated:
        _set_stage(session, model, ModelStage.deprecated, actor=actor, action="model.deprecate")
    return model


def get_artifact(session: Session, artifact_id: int) -> Artifact | None:
    return session.get(Artifact, artifact_id)


def find_artifact(
    session: Session, model_id: int, *, format: ArtifactFormat, target: str
) -> Artifact | None:
    return session.exec(
        select(Artifact).where(
            Artifact.model_version_id == model_id,
            Artifact.format == format,
            Artifact.target == target,
        )
    ).first()


def add_artifact(
    session: Session,
    model: ModelVersion,
    *,
    format: ArtifactFormat,
    target: str,
    filename: str,
    size_bytes: int,
    sha256: str,
    signature: str | None,
    actor: Actor,
) -> Artifact:
    """Record an artifact already written to the store."""
    if model.stage is ModelStage.deprecated:
        raise Conflict(f"model version {model.id} is deprecated; artifacts cannot be added")
    if find_artifact(session, model.id or 0, format=format, target=target) is not None:
        raise Conflict(
            f"model version {model.id} already has a {format.value} artifact for target "
            f"'{target}'; register a new model version for a new build"
        )
    artifact = Artifact(
        model_version_id=model.id or 0,
        format=format,
        target=target,
        filename=filename,
        size_bytes=size_bytes,
        sha256=sha256,
        signature=signature,
        created_by=actor.name,
    )
    session.add(artifact)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="artifact.upload",
        entity_type="artifact",
        entity_id=artifact.id or 0,
        after=artifact_public(artifact),
    )
    return artifact


def sha256_in_use(session: Session, sha256: str) -> bool:
    """True when some artifact row points at this stored file."""
    return session.exec(select(Artifact.id).where(Artifact.sha256 == sha256)).first() is not None
