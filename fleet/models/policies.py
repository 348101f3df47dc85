"""Tables and schemas of promotion policies (versioned per group) and promotions.

Every ``fedfleet policy apply`` stores a new ``promotion_policies`` row: the group's next
``version`` (1, 2, ...), the file's text as sent and its checked document (the shape of
:meth:`fleet.policy.Policy.to_document`); earlier versions stay readable. The newest
version of a group is its current policy. The file format lives in :mod:`fleet.policy`.

A ``promotions`` row is one model version on its way to a group under a policy version.
Today it only carries the operator's approval (``pending_approval`` → ``approved``, for
policies whose bundles are signed offline); the promotion controller (issue 20) adds the
states after it.
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
    pending_approval = "pending_approval"  # bundles wait for an operator's signature
    approved = "approved"  # an operator approved; the controller may go on
    rejected = "rejected"


class Promotion(FleetModel, table=True):
    __tablename__ = "promotions"

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
