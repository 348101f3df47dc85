"""Groups (what rollouts target) and tags (free labels)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, update
from sqlmodel import Session, col, select

from fleet import audit
from fleet.audit import Actor
from fleet.errors import Conflict
from fleet.models.devices import (
    Device,
    DeviceTagLink,
    Group,
    GroupCreate,
    GroupPublic,
    GroupUpdate,
    Tag,
    TagPublic,
)


def group_by_name(session: Session, name: str) -> Group | None:
    """The group called ``name``, or None."""
    return session.exec(select(Group).where(Group.name == name)).first()


def _device_count(session: Session, group_id: int) -> int:
    statement = (
        select(func.count())
        .select_from(Device)
        .where(col(Device.group_id) == group_id, col(Device.retired_at).is_(None))
    )
    return session.exec(statement).one()


def group_public(session: Session, group: Group) -> GroupPublic:
    """Public view of a group with its active device count."""
    return GroupPublic(
        id=group.id or 0,
        name=group.name,
        description=group.description,
        created_at=group.created_at,
        device_count=_device_count(session, group.id or 0),
    )


def list_groups(session: Session) -> list[GroupPublic]:
    """Every group, by name, with device counts (one query)."""
    counts = dict(
        session.exec(
            select(Device.group_id, func.count())
            .where(col(Device.retired_at).is_(None), col(Device.group_id).is_not(None))
            .group_by(col(Device.group_id))
        ).all()
    )
    groups = session.exec(select(Group).order_by(col(Group.name))).all()
    return [
        GroupPublic(
            id=group.id or 0,
            name=group.name,
            description=group.description,
            created_at=group.created_at,
            device_count=counts.get(group.id, 0),
        )
        for group in groups
    ]


def create_group(session: Session, data: GroupCreate, *, actor: Actor) -> Group:
    """Create a group; Conflict when the name is taken."""
    if group_by_name(session, data.name) is not None:
        raise Conflict(f"a group named '{data.name}' already exists")
    group = Group(name=data.name, description=data.description)
    session.add(group)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="group.create",
        entity_type="group",
        entity_id=group.id or 0,
        after=group_public(session, group),
    )
    return group


def update_group(session: Session, group: Group, data: GroupUpdate, *, actor: Actor) -> Group:
    """Rename a group or change its description."""
    before = group_public(session, group)
    if data.name is not None and data.name != group.name:
        if group_by_name(session, data.name) is not None:
            raise Conflict(f"a group named '{data.name}' already exists")
        group.name = data.name
    if data.description is not None and data.description != group.description:
        group.description = data.description
    session.add(group)
    session.flush()
    after = group_public(session, group)
    if after != before:
        audit.record(
            session,
            actor=actor,
            action="group.update",
            entity_type="group",
            entity_id=group.id or 0,
            before=before,
            after=after,
        )
    return group


def delete_group(session: Session, group: Group, *, actor: Actor) -> None:
    """Delete an empty group (retired members are detached); Conflict if devices remain."""
    before = group_public(session, group)
    if before.device_count:
        raise Conflict(
            f"group '{group.name}' still has {before.device_count} devices; move them to "
            "another group (PATCH /api/v1/devices/{id}) or retire them first"
        )
    session.execute(
        update(Device)
        .where(col(Device.group_id) == group.id)
        .values(group_id=None)
        .execution_options(synchronize_session=False)
    )
    session.delete(group)
    audit.record(
        session,
        actor=actor,
        action="group.delete",
        entity_type="group",
        entity_id=group.id or 0,
        before=before,
    )


# --- tags -----------------------------------------------------------------------------


def tag_by_name(session: Session, name: str) -> Tag | None:
    """The tag called ``name``, or None."""
    return session.exec(select(Tag).where(Tag.name == name)).first()


def get_or_create_tags(session: Session, names: Sequence[str]) -> list[Tag]:
    """The tags named ``names`` (duplicates dropped), creating missing ones."""
    wanted = list(dict.fromkeys(names))
    if not wanted:
        return []
    existing = {
        tag.name: tag for tag in session.exec(select(Tag).where(col(Tag.name).in_(wanted))).all()
    }
    for name in wanted:
        if name not in existing:
            tag = Tag(name=name)
            session.add(tag)
            existing[name] = tag
    session.flush()
    return [existing[name] for name in wanted]


def list_tags(session: Session) -> list[TagPublic]:
    """Every tag with the number of active devices carrying it."""
    statement = (
        select(Tag.name, func.count(col(Device.id)))
        .select_from(Tag)
        .outerjoin(DeviceTagLink, col(DeviceTagLink.tag_id) == col(Tag.id))
        .outerjoin(
            Device,
            (col(Device.id) == col(DeviceTagLink.device_id)) & col(Device.retired_at).is_(None),
        )
        .group_by(col(Tag.name))
        .order_by(col(Tag.name))
    )
    return [TagPublic(name=name, device_count=count) for name, count in session.exec(statement)]


def tag_public(session: Session, tag: Tag) -> TagPublic:
    """Public view of one tag."""
    for item in list_tags(session):
        if item.name == tag.name:
            return item
    return TagPublic(name=tag.name, device_count=0)


def create_tag(session: Session, name: str, *, actor: Actor) -> Tag:
    """Create a tag; Conflict when it exists."""
    if tag_by_name(session, name) is not None:
        raise Conflict(f"a tag named '{name}' already exists")
    tag = Tag(name=name)
    session.add(tag)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="tag.create",
        entity_type="tag",
        entity_id=name,
        after=TagPublic(name=name, device_count=0),
    )
    return tag


def delete_tag(session: Session, tag: Tag, *, actor: Actor) -> None:
    """Delete a tag and remove it from every device."""
    before = tag_public(session, tag)
    session.execute(
        DeviceTagLink.__table__.delete().where(  # type: ignore[attr-defined]
            DeviceTagLink.__table__.c.tag_id == tag.id  # type: ignore[attr-defined]
        )
    )
    session.delete(tag)
    audit.record(
        session,
        actor=actor,
        action="tag.delete",
        entity_type="tag",
        entity_id=tag.name,
        before=before,
    )
