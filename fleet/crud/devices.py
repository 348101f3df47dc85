"""Devices: enrollment, listing with filters, updates, retirement, heartbeats."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, bindparam, func, or_, update
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import Session, col, select

from fleet import audit, credentials
from fleet.audit import Actor
from fleet.crud.groups import get_or_create_tags, group_by_name
from fleet.errors import Conflict, InvalidReference
from fleet.models.common import Page, utcnow
from fleet.models.devices import (
    Device,
    DeviceCreate,
    DevicePublic,
    DeviceStatus,
    DeviceTagLink,
    DeviceUpdate,
    Group,
    ReportedStatus,
    Tag,
)
from fleet.models.registry import ModelVersion
from fleet.token_cache import EPOCH_COLUMN


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceFilter:
    """Filters of ``GET /api/v1/devices`` (all optional, combined with AND)."""

    group: str | None = None
    tags: Sequence[str] = ()
    hardware_target: str | None = None
    status: DeviceStatus | None = None
    model_version_id: int | None = None


def derive_status(device: Device, *, now: datetime, offline_after_s: float) -> DeviceStatus:
    """A device's status from its heartbeats (see :mod:`fleet.models.devices`)."""
    return status_from(
        retired_at=device.retired_at,
        last_seen_at=device.last_seen_at,
        reported_status=device.reported_status,
        now=now,
        offline_after_s=offline_after_s,
    )


def status_from(
    *,
    retired_at: datetime | None,
    last_seen_at: datetime | None,
    reported_status: ReportedStatus | None,
    now: datetime,
    offline_after_s: float,
) -> DeviceStatus:
    """:func:`derive_status` from the columns alone (for rows read without the ORM)."""
    if retired_at is not None:
        return DeviceStatus.retired
    if last_seen_at is None:
        return DeviceStatus.never_seen
    if reported_status == ReportedStatus.offline:
        return DeviceStatus.offline
    if now - last_seen_at > timedelta(seconds=offline_after_s):
        return DeviceStatus.offline
    return DeviceStatus.online


def _status_clause(
    status: DeviceStatus, *, now: datetime, offline_after_s: float
) -> ColumnElement[bool]:
    """SQL condition equivalent to ``derive_status(device) == status``."""
    return status_clause(status, cutoff=now - timedelta(seconds=offline_after_s))


def status_clause(status: DeviceStatus, *, cutoff: Any) -> ColumnElement[bool]:
    """:func:`_status_clause` for a device last seen before ``cutoff`` being offline;
    ``cutoff`` is a datetime or a bound parameter (statements built once, see
    :mod:`fleet.crud.device_pages`)."""
    active = col(Device.retired_at).is_(None)
    seen = col(Device.last_seen_at)
    said_offline = col(Device.reported_status) == ReportedStatus.offline
    if status is DeviceStatus.retired:
        return col(Device.retired_at).is_not(None)
    if status is DeviceStatus.never_seen:
        return and_(active, seen.is_(None))
    if status is DeviceStatus.online:
        return and_(
            active,
            seen >= cutoff,
            or_(col(Device.reported_status).is_(None), ~said_offline),
        )
    return and_(active, seen.is_not(None), or_(seen < cutoff, said_offline))


def status_counts(session: Session, *, offline_after_s: float) -> dict[DeviceStatus, int]:
    """How many devices have each derived status (one COUNT per status)."""
    now = utcnow()
    counts: dict[DeviceStatus, int] = {}
    for status in DeviceStatus:
        clause = _status_clause(status, now=now, offline_after_s=offline_after_s)
        counts[status] = session.exec(select(func.count()).select_from(Device).where(clause)).one()
    return counts


def to_public(
    device: Device,
    *,
    group_name: str | None,
    tags: list[str],
    now: datetime,
    offline_after_s: float,
) -> DevicePublic:
    """The public view of a device (never its password hash)."""
    return DevicePublic(
        id=device.id,
        name=device.name,
        hardware_target=device.hardware_target,
        group=group_name,
        tags=sorted(tags),
        status=derive_status(device, now=now, offline_after_s=offline_after_s),
        last_seen_at=device.last_seen_at,
        model_version_id=device.model_version_id,
        mqtt_username=device.mqtt_username,
        enrolled_at=device.enrolled_at,
        enrolled_by=device.enrolled_by,
        retired_at=device.retired_at,
        battery_level=device.battery_level,
        battery_charging=device.battery_charging,
        region=device.region,
    )


def _tags_of(session: Session, device_ids: Sequence[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = defaultdict(list)
    if not device_ids:
        return found
    rows = session.exec(
        select(DeviceTagLink.device_id, Tag.name)
        .join(Tag, col(Tag.id) == col(DeviceTagLink.tag_id))
        .where(col(DeviceTagLink.device_id).in_(list(device_ids)))
    ).all()
    for device_id, tag_name in rows:
        found[device_id].append(tag_name)
    return found


def public_view(session: Session, device: Device, *, offline_after_s: float) -> DevicePublic:
    """Public view of one device, reading its group and tags."""
    group = session.get(Group, device.group_id) if device.group_id is not None else None
    return to_public(
        device,
        group_name=group.name if group else None,
        tags=_tags_of(session, [device.id]).get(device.id, []),
        now=utcnow(),
        offline_after_s=offline_after_s,
    )


def filter_conditions(
    filters: DeviceFilter, *, now: datetime, offline_after_s: float
) -> list[ColumnElement[bool]]:
    """The WHERE conditions for ``filters`` (the query must outer-join ``groups``).

    Without a status filter, retired devices are left out (ask for ``status=retired``).
    """
    conditions: list[ColumnElement[bool]] = []
    if filters.status is None:
        conditions.append(col(Device.retired_at).is_(None))
    else:
        conditions.append(_status_clause(filters.status, now=now, offline_after_s=offline_after_s))
    if filters.group is not None:
        conditions.append(col(Group.name) == filters.group)
    if filters.hardware_target is not None:
        conditions.append(col(Device.hardware_target) == filters.hardware_target)
    if filters.model_version_id is not None:
        conditions.append(col(Device.model_version_id) == filters.model_version_id)
    for tag in dict.fromkeys(filters.tags):
        tagged = (
            select(DeviceTagLink.device_id)
            .join(Tag, col(Tag.id) == col(DeviceTagLink.tag_id))
            .where(Tag.name == tag)
        )
        conditions.append(col(Device.id).in_(tagged))
    return conditions


def list_devices(
    session: Session,
    *,
    filters: DeviceFilter,
    limit: int,
    offset: int,
    offline_after_s: float,
) -> Page[DevicePublic]:
    """One page of devices matching ``filters``, ordered by name.

    Without a status filter, retired devices are left out (ask for ``status=retired``).
    """
    now = utcnow()
    conditions = filter_conditions(filters, now=now, offline_after_s=offline_after_s)

    base = select(Device, Group.name).outerjoin(Group, col(Group.id) == col(Device.group_id))
    base = base.where(*conditions)
    total_statement = (
        select(func.count())
        .select_from(Device)
        .outerjoin(Group, col(Group.id) == col(Device.group_id))
        .where(*conditions)
    )
    total = session.exec(total_statement).one()
    rows = session.exec(base.order_by(col(Device.name)).limit(limit).offset(offset)).all()
    tags = _tags_of(session, [device.id for device, _ in rows])
    items = [
        to_public(
            device,
            group_name=group_name,
            tags=tags.get(device.id, []),
            now=now,
            offline_after_s=offline_after_s,
        )
        for device, group_name in rows
    ]
    return Page[DevicePublic](items=items, total=total, limit=limit, offset=offset)


def get_device(session: Session, device_id: str) -> Device | None:
    """The device with this id, or None."""
    return session.get(Device, device_id)


def _resolve_group(session: Session, name: str | None) -> int | None:
    if name is None:
        return None
    group = group_by_name(session, name)
    if group is None:
        raise InvalidReference(
            f"group '{name}' does not exist; create it first (POST /api/v1/groups)"
        )
    return group.id


def _set_tags(session: Session, device_id: str, names: Sequence[str]) -> None:
    session.execute(
        DeviceTagLink.__table__.delete().where(  # type: ignore[attr-defined]
            DeviceTagLink.__table__.c.device_id == device_id  # type: ignore[attr-defined]
        )
    )
    for tag in get_or_create_tags(session, names):
        session.add(DeviceTagLink(device_id=device_id, tag_id=tag.id or 0))


def _name_taken(session: Session, name: str, *, other_than: str | None = None) -> bool:
    statement = select(Device.id).where(Device.name == name)
    if other_than is not None:
        statement = statement.where(Device.id != other_than)
    return session.exec(statement).first() is not None


def enroll_device(
    session: Session, data: DeviceCreate, *, actor: Actor, offline_after_s: float
) -> tuple[Device, str]:
    """Enroll a device. Returns ``(device, mqtt_password)``; only the hash is stored."""
    if _name_taken(session, data.name):
        raise Conflict(f"a device named '{data.name}' already exists; choose another name")
    group_id = _resolve_group(session, data.group)
    password = credentials.new_mqtt_password()
    device_id = credentials.new_device_id()
    device = Device(
        id=device_id,
        name=data.name,
        hardware_target=data.hardware_target,
        group_id=group_id,
        mqtt_username=device_id,
        mqtt_password_hash=credentials.mosquitto_hash(password),
        enrolled_by=actor.name,
    )
    session.add(device)
    session.flush()
    _set_tags(session, device_id, data.tags)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="device.enroll",
        entity_type="device",
        entity_id=device_id,
        after=public_view(session, device, offline_after_s=offline_after_s),
    )
    return device, password


def update_device(
    session: Session,
    device: Device,
    data: DeviceUpdate,
    *,
    actor: Actor,
    offline_after_s: float,
) -> Device:
    """Rename a device, move it between groups, or replace its tags."""
    if device.retired_at is not None:
        raise Conflict(f"device {device.id} is retired and can no longer be changed")
    before = public_view(session, device, offline_after_s=offline_after_s)
    given = data.model_fields_set
    if data.name is not None and data.name != device.name:
        if _name_taken(session, data.name, other_than=device.id):
            raise Conflict(f"a device named '{data.name}' already exists; choose another name")
        device.name = data.name
    if "group" in given:
        group_id = _resolve_group(session, data.group)
        if group_id != device.group_id:
            device.group_id = group_id
    if data.tags is not None and sorted(set(data.tags)) != before.tags:
        _set_tags(session, device.id, data.tags)
    session.add(device)
    session.flush()
    after = public_view(session, device, offline_after_s=offline_after_s)
    if after != before:  # a request that changes nothing leaves no audit entry
        audit.record(
            session,
            actor=actor,
            action="device.update",
            entity_type="device",
            entity_id=device.id,
            before=before,
            after=after,
        )
    return device


def retire_device(
    session: Session, device: Device, *, actor: Actor, offline_after_s: float
) -> Device:
    """Retire a device: it stays listed (``status=retired``) but loses broker access."""
    if device.retired_at is not None:
        raise Conflict(f"device {device.id} is already retired")
    before = public_view(session, device, offline_after_s=offline_after_s)
    device.retired_at = utcnow()
    device.mqtt_password_hash = None
    session.add(device)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="device.retire",
        entity_type="device",
        entity_id=device.id,
        before=before,
        after=public_view(session, device, offline_after_s=offline_after_s),
    )
    return device


def rotate_credentials(session: Session, device: Device, *, actor: Actor) -> str:
    """Give a device a new broker password (the old one stops working); returns it."""
    if device.retired_at is not None:
        raise Conflict(f"device {device.id} is retired; enroll a new device instead")
    password = credentials.new_mqtt_password()
    device.mqtt_password_hash = credentials.mosquitto_hash(password)
    session.add(device)
    audit.record(
        session,
        actor=actor,
        action="device.credentials.rotate",
        entity_type="device",
        entity_id=device.id,
    )
    return password


_UNCHANGED = object()


@dataclass(frozen=True, slots=True)
class HeartbeatRecorded:
    """What a heartbeat changed."""

    device_id: str
    last_seen_at: datetime
    model_version_id: int | None
    #: The token revocation epoch, read by the same UPDATE (only when asked for).
    revocation_epoch: int | None = None


_DEVICES = Device.__table__  # type: ignore[attr-defined]
# Built once (SQLAlchemy Core, bound parameters): the ORM bulk-update path and a statement
# compiled afresh per heartbeat were most of its CPU (profiled).
_SEEN = (
    update(_DEVICES)
    .where(_DEVICES.c.id == bindparam("device_id"), _DEVICES.c.retired_at.is_(None))
    .values(last_seen_at=bindparam("seen"), reported_status=bindparam("reported"))
    .returning(_DEVICES.c.model_version_id)
)
_SEEN_RUNNING = _SEEN.values(model_version_id=bindparam("model_version_id"))
# The same statements that also return the revocation epoch (fleet/api/hot.py), and on
# PostgreSQL also turn off this transaction's synchronous commit (``set_config(...,
# true)`` is ``SET LOCAL``) in the same round trip, not in a statement of its own.
_ASYNC_COMMIT_COLUMN = func.set_config("synchronous_commit", "off", True)
_VARIANTS = {
    (s, epoch, pg): s.returning(
        *([EPOCH_COLUMN] if epoch else []), *([_ASYNC_COMMIT_COLUMN] if pg else [])
    )
    for s in (_SEEN, _SEEN_RUNNING)
    for epoch in (False, True)
    for pg in (False, True)
}
_EXISTS = select(_DEVICES.c.id).where(_DEVICES.c.id == bindparam("device_id"))
_VERSION_EXISTS = select(col(ModelVersion.id)).where(
    col(ModelVersion.id) == bindparam("model_version_id")
)


def record_heartbeat(
    connection: Connection,
    device_id: str,
    *,
    model_version_id: int | object | None = _UNCHANGED,
    now: datetime | None = None,
    read_epoch: bool = False,
) -> HeartbeatRecorded | None:
    """Mark a device as seen now (and running ``model_version_id`` when given).

    One ``UPDATE ... RETURNING`` statement on ``connection`` (the caller commits), not
    audited: a device signal, not an admin change, so it goes past the ORM session and its
    audit check. On PostgreSQL the transaction commits without waiting for its WAL flush
    (``synchronous_commit = off``): a crash can lose the last fraction of a second of
    heartbeats, which the next heartbeat repeats anyway, and a busy fleet no longer pays
    one disk flush per heartbeat. Returns None when the device does not exist; raises
    Conflict when it is retired and InvalidReference when the model version is unknown.
    ``read_epoch``: the UPDATE also returns the token revocation epoch
    (:func:`fleet.token_cache.revocation_epoch`), read in this transaction.
    """
    when = now or utcnow()
    params: dict[str, object] = {
        "device_id": device_id,
        "seen": when,
        "reported": ReportedStatus.online,
    }
    statement = _SEEN
    if model_version_id is not _UNCHANGED:
        if (
            model_version_id is not None
            and connection.execute(_VERSION_EXISTS, {"model_version_id": model_version_id}).first()
            is None
        ):
            raise InvalidReference(
                f"model version {model_version_id} is not registered; register it first"
            )
        params["model_version_id"] = model_version_id
        statement = _SEEN_RUNNING
    statement = _VARIANTS[statement, read_epoch, connection.dialect.name == "postgresql"]
    row = connection.execute(statement, params).first()
    if row is not None:
        return HeartbeatRecorded(
            device_id=device_id,
            last_seen_at=when,
            model_version_id=row[0],
            revocation_epoch=int(row[1]) if read_epoch else None,
        )
    if connection.execute(_EXISTS, {"device_id": device_id}).first() is None:
        return None
    raise Conflict(f"device {device_id} is retired; it can no longer report")


def heartbeat_unchanged() -> object:
    """The sentinel meaning "leave the model version as it is"."""
    return _UNCHANGED
