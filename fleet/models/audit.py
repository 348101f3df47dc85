"""The audit log: one row per change made through the API, dashboard or CLI.

Append-only: the API offers no way to change or delete rows, and the migrations add
database triggers that refuse ``UPDATE`` and ``DELETE`` on the table.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON
from sqlmodel import Field

from fleet.db import UTCDateTime
from fleet.models.common import FleetModel, utcnow


class AuditEventBase(FleetModel):
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    actor: str = Field(max_length=100, index=True, description="'token:NAME#ID' or 'cli:USER'.")
    actor_role: str = Field(max_length=16)
    action: str = Field(max_length=63, index=True, description="e.g. 'device.enroll'.")
    entity_type: str = Field(max_length=32, index=True)
    entity_id: str = Field(max_length=64, index=True)
    before: dict[str, Any] | None = Field(default=None, sa_type=JSON)
    after: dict[str, Any] | None = Field(default=None, sa_type=JSON)
    source: str = Field(max_length=16, description="'api', 'dashboard' or 'cli'.")


class AuditEvent(AuditEventBase, table=True):
    __tablename__ = "audit_events"

    id: int | None = Field(default=None, primary_key=True)


class AuditEventPublic(AuditEventBase):
    id: int
