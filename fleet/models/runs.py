"""Federated runs as the fleet records them: configuration, status, rounds, result.

The coordinator creates a run when it starts, reports each finished round with
``PUT /api/v1/runs/{id}/rounds/{round}`` (idempotent: a resumed run may report a round
again without counting it twice), and finishes it with the final model version.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Any

from pydantic import Field as PydanticField
from sqlalchemy import JSON
from sqlmodel import Field

from fleet.db import UTCDateTime
from fleet.models.common import (
    FiniteFloat,
    FleetModel,
    Id,
    InputModel,
    JsonObject,
    Metrics,
    Name,
    Slug,
    Text,
    enum_type,
    utcnow,
)


class RunStatus(str, enum.Enum):
    created = "created"
    running = "running"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def terminal(self) -> bool:
        """True once the run can no longer change."""
        return self in (RunStatus.completed, RunStatus.failed, RunStatus.cancelled)


#: Allowed status changes (the same status again is always allowed and does nothing).
RUN_TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.created: frozenset(
        {RunStatus.running, RunStatus.completed, RunStatus.failed, RunStatus.cancelled}
    ),
    RunStatus.running: frozenset({RunStatus.completed, RunStatus.failed, RunStatus.cancelled}),
    RunStatus.completed: frozenset(),
    RunStatus.failed: frozenset(),
    RunStatus.cancelled: frozenset(),
}


class ParticipantKind(str, enum.Enum):
    site = "site"
    device = "device"
    client = "client"  # a simulated or otherwise anonymous client


class Participant(InputModel):
    kind: ParticipantKind
    id: Name


class RunBase(FleetModel):
    name: str = Field(default="", max_length=1000)
    task: str = Field(max_length=63, index=True)
    strategy: str = Field(default="", max_length=63)


class RunCreate(InputModel):
    name: Text = ""
    task: Slug
    strategy: Slug | None = None
    config: JsonObject = PydanticField(default_factory=dict)


class RunUpdate(InputModel):
    status: RunStatus | None = None
    final_model_version_id: Id | None = None
    name: Text | None = None
    # Why (e.g. a run held by the budget pre-flight): recorded with the change in the
    # audit log, so the timeline shows it; not a column of the run.
    reason: Text | None = None


class Run(RunBase, table=True):
    __tablename__ = "runs"

    id: int | None = Field(default=None, primary_key=True)
    config: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    status: RunStatus = Field(default=RunStatus.created, sa_type=enum_type(RunStatus), index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    created_by: str = Field(max_length=100)
    started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    final_model_version_id: int | None = Field(default=None, foreign_key="model_versions.id")


class RoundReport(InputModel):
    """What the coordinator reports after a round."""

    accuracy: Annotated[FiniteFloat, PydanticField(ge=0.0, le=1.0)] | None = None
    loss: FiniteFloat | None = None
    duration_s: Annotated[FiniteFloat, PydanticField(ge=0.0)] | None = PydanticField(
        default=None, description="Wall-clock seconds the round took."
    )
    epsilon: Annotated[FiniteFloat, PydanticField(ge=0.0)] | None = PydanticField(
        default=None, description="Differential-privacy ε spent so far."
    )
    metrics: Metrics = PydanticField(default_factory=dict, description="Any other metrics.")
    participants: list[Participant] = PydanticField(default_factory=list, max_length=10_000)


class RunRound(FleetModel, table=True):
    __tablename__ = "run_rounds"

    run_id: int = Field(foreign_key="runs.id", primary_key=True, ondelete="CASCADE")
    round: int = Field(primary_key=True)
    accuracy: float | None = None
    loss: float | None = None
    duration_s: float | None = None
    epsilon: float | None = None
    metrics: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    participants: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSON)
    recorded_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class RunRoundPublic(FleetModel):
    round: int
    accuracy: float | None
    loss: float | None
    duration_s: float | None
    epsilon: float | None
    metrics: dict[str, float]
    participants: list[Participant]
    recorded_at: datetime


class RunPublic(RunBase):
    id: int
    config: dict[str, Any]
    status: RunStatus
    created_at: datetime
    created_by: str
    started_at: datetime | None
    finished_at: datetime | None
    final_model_version_id: int | None
    rounds_completed: int
    last_accuracy: float | None


class RunDetail(RunPublic):
    rounds: list[RunRoundPublic]
    participants: list[Participant] = PydanticField(
        description="Everyone who took part in at least one round."
    )
