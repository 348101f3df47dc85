"""Tables and schemas of promotion policies (versioned per group) and promotions.

Every ``fedfleet policy apply`` stores a new ``promotion_policies`` row: the group's next
``version`` (1, 2, ...), the file's text as sent and its checked document (the shape of
:meth:`fleet.policy.Policy.to_document`); earlier versions stay readable. The newest
version of a group is its current policy. The file format lives in :mod:`fleet.policy`.

A ``promotions`` row is one model version on its way to a group under a policy version,
driven by the promotion controller (:mod:`fleet.promotion`): ``rejected`` (a gate failed),
or ``building`` → (``pending_approval`` → ``approved``, when the policy's key is kept
offline) → ``rolling_out`` (``rollout_id``) → ``promoted`` or ``rolled_back``; ``failed``
when a bundle could not be built or the rollout not created. ``reason`` says why.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Any

import sqlalchemy as sa
from pydantic import AfterValidator, WithJsonSchema
from pydantic import Field as PydanticField
from sqlalchemy import JSON, UniqueConstraint
from sqlmodel import Field

from fleet.db import UTCDateTime
from fleet.models.common import (
    TEXT_PATTERN,
    FleetModel,
    InputModel,
    check_text,
    enum_type,
    utcnow,
)
from fleet.policy import MAX_POLICY_BYTES


class PolicyApply(InputModel):
    """A policy file to apply: its TOML text (``docs/policies.md``)."""

    source: Annotated[
        str,
        PydanticField(min_length=1, max_length=MAX_POLICY_BYTES),
        AfterValidator(check_text),
        WithJsonSchema(
            {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_POLICY_BYTES,
                "pattern": TEXT_PATTERN,
            }
        ),
    ] = PydanticField(description="The policy file's TOML text.")


class PromotionPolicy(FleetModel, table=True):
    __tablename__ = "promotion_policies"
    __table_args__ = (UniqueConstraint("group_id", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    group_id: int = Field(foreign_key="groups.id", index=True, ondelete="CASCADE")
    version: int
    document: dict[str, Any] = Field(sa_type=JSON)
    source: str = Field(sa_type=sa.Text)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    created_by: str = Field(max_length=100)


class PolicyPublic(FleetModel):
    """One version of a group's policy."""

    id: int
    group: str
    version: int = PydanticField(description="1 for the first apply, then 2, 3, ...")
    current: bool = PydanticField(description="True for the group's newest version.")
    signing: str = PydanticField(description="'key' (the fleet signs) or 'approval'.")
    document: dict[str, Any] = PydanticField(description="The checked policy (TOML's shape).")
    source: str = PydanticField(description="The TOML text as applied.")
    created_at: datetime
    created_by: str


class PromotionState(str, enum.Enum):
    building = "building"  # gates passed: the fleet builds and signs bundles
    pending_approval = "pending_approval"  # bundles wait for an operator's signature
    approved = "approved"  # an operator approved (bundles uploaded); the controller goes on
    rolling_out = "rolling_out"  # a rollout carries it out (rollout_id)
    promoted = "promoted"  # the rollout reached every wave
    rolled_back = "rolled_back"  # the rollout aborted; its devices went back
    rejected = "rejected"  # a gate failed (reason)
    failed = "failed"  # a bundle build or the rollout's creation failed (reason)

    @property
    def finished(self) -> bool:
        return self in _FINISHED


_FINISHED = frozenset(
    {
        PromotionState.promoted,
        PromotionState.rolled_back,
        PromotionState.rejected,
        PromotionState.failed,
    }
)


class Promotion(FleetModel, table=True):
    __tablename__ = "promotions"
    # One promotion per model version and group, whatever happens to it.
    __table_args__ = (UniqueConstraint("group_id", "model_version_id"),)

    id: int | None = Field(default=None, primary_key=True)
    group_id: int = Field(foreign_key="groups.id", index=True, ondelete="CASCADE")
    policy_id: int = Field(foreign_key="promotion_policies.id", index=True)
    model_version_id: int = Field(foreign_key="model_versions.id", index=True)
    state: PromotionState = Field(
        default=PromotionState.pending_approval, sa_type=enum_type(PromotionState), index=True
    )
    reason: str = Field(default="", max_length=1000)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    decided_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    decided_by: str | None = Field(default=None, max_length=100)
    rollout_id: int | None = Field(default=None, foreign_key="rollouts.id")
    updated_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class PromotionPublic(FleetModel):
    id: int
    group: str
    policy_version: int
    model_version_id: int
    state: PromotionState
    reason: str
    created_at: datetime
    decided_at: datetime | None
    decided_by: str | None
    rollout_id: int | None = None
    updated_at: datetime | None = None
