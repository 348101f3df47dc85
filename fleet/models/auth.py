"""API tokens, roles and dashboard sessions.

Only SHA-256 hashes of tokens and session ids are stored: a copy of the database does
not let anyone call the API. Tokens are 256-bit values from :mod:`secrets`, so a fast
hash is enough (there is nothing to brute-force; stretching protects weak passwords).
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated

from pydantic import Field as PydanticField
from sqlmodel import Field

from fleet.db import UTCDateTime
from fleet.models.common import (
    JSON_INTEGER,
    FleetModel,
    InputModel,
    Name,
    enum_type,
    utcnow,
)


class Role(str, enum.Enum):
    """What a token may do. Each role includes everything the roles below it may do."""

    viewer = "viewer"  # read everything except tokens
    operator = "operator"  # change devices, models, runs
    admin = "admin"  # manage tokens

    @property
    def rank(self) -> int:
        """0 for viewer, 1 for operator, 2 for admin."""
        return _RANK[self]

    def allows(self, required: Role) -> bool:
        """True when this role may do what ``required`` may do."""
        return self.rank >= required.rank


_RANK = {Role.viewer: 0, Role.operator: 1, Role.admin: 2}


class ApiTokenBase(FleetModel):
    name: str = Field(max_length=63, description="Who or what holds the token.")
    role: Role = Field(sa_type=enum_type(Role))


class ApiTokenCreate(InputModel):
    name: Name
    role: Role
    ttl_days: Annotated[int, PydanticField(ge=1, le=3650), JSON_INTEGER] | None = PydanticField(
        default=None, description="Expire after this many days (none: never)."
    )


class ApiToken(ApiTokenBase, table=True):
    __tablename__ = "api_tokens"

    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(max_length=64, unique=True, description="SHA-256 hex of the token.")
    prefix: str = Field(max_length=12, description="First characters, to recognise a token.")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    created_by: str = Field(max_length=100)
    expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class ApiTokenPublic(ApiTokenBase):
    id: int
    prefix: str
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None


class ApiTokenCreated(FleetModel):
    """The answer to creating a token: the only time the secret is shown."""

    token: str = Field(description="The bearer token. Shown once; store it now.")
    info: ApiTokenPublic


class DashboardSession(FleetModel, table=True):
    """A browser session opened by logging in with an API token."""

    __tablename__ = "dashboard_sessions"

    id: int | None = Field(default=None, primary_key=True)
    session_hash: str = Field(max_length=64, unique=True)
    token_id: int = Field(foreign_key="api_tokens.id", ondelete="CASCADE", index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)
