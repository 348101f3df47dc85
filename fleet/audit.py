"""Recording changes in the audit log, and refusing changes that were not recorded.

Every write goes through a :class:`fleet.db.FleetSession`. When such a session commits a
transaction that changed any fleet table, it checks that an :class:`AuditEvent` was
recorded in the same transaction, and raises :class:`UnauditedChange` otherwise: a new
route that forgets to audit fails its first test instead of silently leaving a gap.
High-rate device signals (heartbeats) are not admin changes and opt out explicitly with
:func:`exempt`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, SessionTransaction
from sqlmodel import Session

from fleet.db import FleetSession
from fleet.models.audit import AuditEvent

_WROTE = "fleet_wrote"
_AUDITED = "fleet_audited"
_EXEMPT = "fleet_audit_exempt"


class UnauditedChange(RuntimeError):
    """A transaction changed fleet data without recording an audit event."""


@dataclass(frozen=True, slots=True)
class Actor:
    """Who made a change: ``name`` as written to the log, their role, and the channel."""

    name: str
    role: str
    source: str  # "api", "dashboard" or "cli"


def record(
    session: Session,
    *,
    actor: Actor,
    action: str,
    entity_type: str,
    entity_id: str | int,
    before: BaseModel | dict[str, Any] | None = None,
    after: BaseModel | dict[str, Any] | None = None,
) -> AuditEvent:
    """Add an audit event to the session's transaction.

    ``before``/``after`` are public representations (never secrets): pass the
    ``XPublic`` model or a dict. They are stored as JSON.
    """
    event_row = AuditEvent(
        actor=actor.name,
        actor_role=actor.role,
        action=action,
        entity_type=entity_type,
        entity_id=str(entity_id),
        before=_snapshot(before),
        after=_snapshot(after),
        source=actor.source,
    )
    session.add(event_row)
    session.info[_AUDITED] = True
    return event_row


def _snapshot(value: BaseModel | dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return dict(value)


@contextmanager
def exempt(session: Session, *, reason: str) -> Iterator[None]:
    """Let the writes made (and flushed) inside this block commit without an audit event.

    Say why in ``reason``. Writes made after the block still need an audit event.
    """
    session.info[_EXEMPT] = reason
    try:
        yield
    finally:
        session.info.pop(_EXEMPT, None)


def _is_fleet_change(obj: Any) -> bool:
    return not isinstance(obj, AuditEvent)


@event.listens_for(FleetSession, "after_flush")
def _after_flush(session: Session, _context: Any) -> None:
    if session.info.get(_EXEMPT):
        return
    changed = list(session.new) + list(session.deleted)
    changed += [obj for obj in session.dirty if session.is_modified(obj)]
    if any(_is_fleet_change(obj) for obj in changed):
        session.info[_WROTE] = True
    if any(isinstance(obj, AuditEvent) for obj in session.new):
        session.info[_AUDITED] = True


@event.listens_for(FleetSession, "do_orm_execute")
def _on_execute(state: ORMExecuteState) -> None:
    if state.session.info.get(_EXEMPT):
        return
    if state.is_insert or state.is_update or state.is_delete:
        mapper = state.bind_mapper
        if mapper is None or mapper.class_ is not AuditEvent:
            state.session.info[_WROTE] = True


@event.listens_for(FleetSession, "before_commit")
def _before_commit(session: Session) -> None:
    pending = list(session.new) + list(session.deleted)
    pending += [obj for obj in session.dirty if session.is_modified(obj)]
    wrote = session.info.get(_WROTE, False) or any(_is_fleet_change(obj) for obj in pending)
    audited = session.info.get(_AUDITED, False)
    if wrote and not audited:
        raise UnauditedChange(
            "a change to the fleet database was about to be committed without an audit "
            "event; call fleet.audit.record() in the same transaction"
        )


@event.listens_for(FleetSession, "after_transaction_end")
def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        session.info.pop(_WROTE, None)
        session.info.pop(_AUDITED, None)
