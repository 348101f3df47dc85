"""Devices, groups and tags.

A device belongs to at most one group (rollouts target groups) and carries any number
of tags (free labels for filtering). Its broker credentials are stored as a Mosquitto
PBKDF2-SHA512 hash (see :mod:`fleet.credentials`) so the broker password file can be
written straight from the table.

Device status is derived, not stored: ``retired`` once retired; ``never_seen`` before
the first heartbeat; ``offline`` when the broker reported it offline (MQTT Last Will)
or when the last heartbeat is older than the offline threshold; ``online`` otherwise.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator
from pydantic import Field as PydanticField
from sqlalchemy import Index
from sqlmodel import Field

from firmware_images.targets import available_targets
from fleet.db import UTCDateTime
from fleet.models.common import (
    FleetModel,
    Id,
    InputModel,
    Name,
    Slug,
    Text,
    enum_type,
    utcnow,
)


class DeviceStatus(str, enum.Enum):
    online = "online"
    offline = "offline"
    never_seen = "never_seen"
    retired = "retired"


class ReportedStatus(str, enum.Enum):
    """What the device (or the broker's Last Will on its behalf) last said."""

    online = "online"
    offline = "offline"


# --- groups ---------------------------------------------------------------------------


class GroupBase(FleetModel):
    name: str = Field(max_length=63, unique=True, index=True)
    description: str = Field(default="", max_length=1000)


class GroupCreate(InputModel):
    name: Slug
    description: Text = ""


class GroupUpdate(InputModel):
    name: Slug | None = None
    description: Text | None = None


class Group(GroupBase, table=True):
    __tablename__ = "groups"

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class GroupPublic(GroupBase):
    id: int
    created_at: datetime
    device_count: int = Field(description="Devices in the group, retired ones excluded.")


# --- tags -----------------------------------------------------------------------------


class TagCreate(InputModel):
    name: Slug


class Tag(FleetModel, table=True):
    __tablename__ = "tags"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=63, unique=True, index=True)


class TagPublic(FleetModel):
    name: str
    device_count: int


class DeviceTagLink(FleetModel, table=True):
    __tablename__ = "device_tags"

    device_id: str = Field(
        foreign_key="devices.id", primary_key=True, ondelete="CASCADE", max_length=32
    )
    tag_id: int = Field(foreign_key="tags.id", primary_key=True, ondelete="CASCADE", index=True)


# --- devices --------------------------------------------------------------------------

TagList = list[Slug]


def _check_target(value: str) -> str:
    known = available_targets()
    if value not in known:
        raise ValueError(
            f"unknown hardware target '{value}'; choose one of: {', '.join(known)} "
            "(the targets `fedfleet image build` builds for)"
        )
    return value


def _target_schema(schema: dict[str, Any]) -> None:
    # Filled in when the OpenAPI document is built, not at import: the registry is read then.
    schema["enum"] = available_targets()


#: A build target known to ``firmware_images.targets`` (a device of another target could
#: never be given a bundle).
HardwareTarget = Annotated[
    Slug,
    AfterValidator(_check_target),
    PydanticField(
        description="Build target, one of firmware_images/targets: e.g. 'rpi5', 'cpu-x86'.",
        json_schema_extra=_target_schema,  # type: ignore[arg-type]
    ),
]


class DeviceBase(FleetModel):
    name: str = Field(max_length=63, unique=True, description="Unique human name.")
    hardware_target: str = Field(
        max_length=63, index=True, description="Build target, e.g. 'rpi5', 'cpu-x86'."
    )


class DeviceCreate(InputModel):
    name: Name
    hardware_target: HardwareTarget
    group: Slug | None = PydanticField(default=None, description="Existing group name.")
    tags: TagList = PydanticField(default_factory=list, max_length=32)


class DeviceUpdate(InputModel):
    """Fields to change. ``group: null`` removes the device from its group; ``tags``
    replaces the whole tag set."""

    name: Name | None = None
    group: Slug | None = None
    tags: TagList | None = PydanticField(default=None, max_length=32)


class Device(DeviceBase, table=True):
    __tablename__ = "devices"
    # A group's page by name comes straight from this index (see fleet.crud.device_pages).
    __table_args__ = (Index("ix_devices_group_id_name", "group_id", "name"),)

    id: str = Field(primary_key=True, max_length=32)
    group_id: int | None = Field(default=None, foreign_key="groups.id", index=True)
    mqtt_username: str = Field(max_length=64, unique=True)
    mqtt_password_hash: str | None = Field(
        default=None, max_length=200, description="Mosquitto $7$ hash; NULL once retired."
    )
    enrolled_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    enrolled_by: str = Field(max_length=100)
    last_seen_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)
    reported_status: ReportedStatus | None = Field(default=None, sa_type=enum_type(ReportedStatus))
    model_version_id: int | None = Field(default=None, foreign_key="model_versions.id", index=True)
    retired_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # What the device last reported (telemetry battery; status/telemetry region): its own
    # claim, used only as a selection preference (docs/security.md).
    battery_level: float | None = Field(default=None)
    battery_charging: bool | None = Field(default=None)
    region: str | None = Field(default=None, max_length=32)


class DevicePublic(DeviceBase):
    id: str
    group: str | None
    tags: list[str]
    status: DeviceStatus
    last_seen_at: datetime | None
    model_version_id: int | None = PydanticField(description="Model version it runs.")
    mqtt_username: str
    enrolled_at: datetime
    enrolled_by: str
    retired_at: datetime | None
    battery_level: float | None = PydanticField(
        default=None, description="State of charge 0..1 the device last reported; null: none."
    )
    battery_charging: bool | None = PydanticField(
        default=None, description="Whether it last reported charging; null: no battery."
    )
    region: str | None = PydanticField(
        default=None, description="Grid region the device last reported (DE, US-CAL-CISO)."
    )


class DevicePage(FleetModel):
    """One page of ``GET /api/v1/devices``, ordered by name."""

    items: list[DevicePublic]
    total: int | None = PydanticField(
        description="Devices matching the filters across all pages; null unless total=true."
    )
    limit: int
    offset: int
    next_after: str | None = PydanticField(
        description="Pass as `after` for the next page; null on the last page."
    )


class MqttCredentials(FleetModel):
    """Broker credentials. The password is shown once and only its hash is kept."""

    username: str
    password: str


class DeviceEnrolled(FleetModel):
    device: DevicePublic
    mqtt: MqttCredentials


class Heartbeat(InputModel):
    """A device's periodic sign of life (normally relayed from MQTT by the fleet)."""

    model_version_id: Id | None = PydanticField(
        default=None,
        description="Model version the device runs; omit to leave unchanged, null for none.",
    )


class HeartbeatAck(FleetModel):
    device_id: str
    status: DeviceStatus
    last_seen_at: datetime
    model_version_id: int | None = PydanticField(description="Model version now on record.")
