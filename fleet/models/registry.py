"""The model registry: versions with lineage, and their artifacts.

A model version's ``id`` is its version number (``fedfleet rollout create --model 7``).
Lineage: the run and round that produced it and the version it was derived from.
Stages: ``registered`` on creation; ``promoted`` marks the version to deploy for its task
(at most one per task: promoting another sends the previous one back to ``registered``);
``deprecated`` marks one that must not be rolled out any more.

An artifact is one file built from a version for a format and a hardware target, stored
content-addressed by SHA-256 under the fleet's artifact directory.
"""

from __future__ import annotations

import base64
import enum
import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, WithJsonSchema, model_validator
from pydantic import Field as PydanticField
from sqlalchemy import JSON, BigInteger, Column, ForeignKey, Integer, UniqueConstraint
from sqlmodel import Field

from fleet.db import UTCDateTime
from fleet.models.common import (
    JSON_INTEGER,
    MAX_ID,
    FleetModel,
    Id,
    InputModel,
    Metrics,
    Slug,
    Text,
    enum_type,
    utcnow,
)

_SHA256_RE = re.compile(r"[0-9a-f]{64}")
SIGNATURE_BYTES = 64  # Ed25519


class ModelStage(str, enum.Enum):
    registered = "registered"
    promoted = "promoted"
    deprecated = "deprecated"


class ArtifactFormat(str, enum.Enum):
    onnx = "onnx"
    tflite = "tflite"
    torch = "torch"
    bundle = "bundle"  # a signed fedfleet bundle (firmware_images)


def _check_sha256(value: str) -> str:
    if not _SHA256_RE.fullmatch(value):
        raise ValueError("sha256 must be 64 lowercase hexadecimal characters")
    return value


def _check_signature(value: str) -> str:
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError as exc:
        raise ValueError("signature must be standard base64 (A-Z, a-z, 0-9, +, /, =)") from exc
    if len(raw) != SIGNATURE_BYTES:
        raise ValueError(
            f"signature must decode to {SIGNATURE_BYTES} bytes (Ed25519), got {len(raw)}"
        )
    return value


Sha256Hex = Annotated[
    str,
    AfterValidator(_check_sha256),
    WithJsonSchema({"type": "string", "pattern": "^[0-9a-f]{64}$"}),
]
SignatureB64 = Annotated[
    str,
    AfterValidator(_check_signature),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": "^[A-Za-z0-9+/]{86}==$",
            "description": "Base64 Ed25519 signature of the artifact's 32-byte SHA-256 digest.",
        }
    ),
]


# --- model versions -------------------------------------------------------------------


class ModelVersionBase(FleetModel):
    task: str = Field(max_length=63, index=True, description="Task name, e.g. 'digits-cnn'.")
    name: str = Field(default="", max_length=1000, description="Free label.")
    description: str = Field(default="", max_length=1000)


class ModelVersionCreate(InputModel):
    task: Slug
    name: Text = ""
    description: Text = ""
    source_run_id: Id | None = PydanticField(default=None, description="Run that trained it.")
    source_round: Annotated[int, PydanticField(ge=0, le=MAX_ID), JSON_INTEGER] | None = (
        PydanticField(default=None, description="Round of that run it was taken from.")
    )
    metrics: Metrics = PydanticField(default_factory=dict)
    parent_id: Id | None = PydanticField(default=None, description="Version it derives from.")

    @model_validator(mode="after")
    def _round_needs_run(self) -> ModelVersionCreate:
        if self.source_round is not None and self.source_run_id is None:
            raise ValueError("source_round was given without source_run_id; give both")
        return self


class ModelVersionUpdate(InputModel):
    name: Text | None = None
    description: Text | None = None


class ModelVersion(ModelVersionBase, table=True):
    __tablename__ = "model_versions"

    id: int | None = Field(default=None, primary_key=True)
    stage: ModelStage = Field(
        default=ModelStage.registered, sa_type=enum_type(ModelStage), index=True
    )
    # use_alter: runs and model_versions reference each other (lineage both ways).
    source_run_id: int | None = Field(
        default=None,
        sa_column=Column(Integer, ForeignKey("runs.id", use_alter=True), index=True, nullable=True),
    )
    source_round: int | None = None
    metrics: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    parent_id: int | None = Field(default=None, foreign_key="model_versions.id")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    created_by: str = Field(max_length=100)
    stage_changed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # Predicted classes of its first built bundle on the accuracy gate's held-out set
    # ({"class": count}); model-aware canaries compare against it (NULL: not built here).
    reference_predictions: dict[str, int] | None = Field(default=None, sa_type=JSON)


# --- artifacts ------------------------------------------------------------------------


class ArtifactBase(FleetModel):
    format: ArtifactFormat = Field(sa_type=enum_type(ArtifactFormat))
    target: str = Field(max_length=63, description="Hardware target, or 'any'.")


class Artifact(ArtifactBase, table=True):
    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("model_version_id", "format", "target"),)

    id: int | None = Field(default=None, primary_key=True)
    model_version_id: int = Field(foreign_key="model_versions.id", index=True)
    filename: str = Field(max_length=255)
    size_bytes: int = Field(sa_type=BigInteger)
    sha256: str = Field(max_length=64, index=True)
    signature: str | None = Field(default=None, max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    created_by: str = Field(max_length=100)


class ArtifactPublic(ArtifactBase):
    id: int
    model_version_id: int
    filename: str
    size_bytes: int
    sha256: str
    signature: str | None
    created_at: datetime
    created_by: str


class ModelVersionPublic(ModelVersionBase):
    id: int
    stage: ModelStage
    source_run_id: int | None
    source_round: int | None
    metrics: dict[str, float]
    parent_id: int | None
    created_at: datetime
    created_by: str
    stage_changed_at: datetime | None
    artifacts: list[ArtifactPublic]
