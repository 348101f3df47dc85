"""fleet.db.KeyedUpdate: many rows by primary key, executemany on SQLite, one statement
over arrays on PostgreSQL — the same rows changed either way, types applied."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, event, select

from fleet.crud.devices import enroll_device
from fleet.db import KeyedUpdate, session_scope
from fleet.models.devices import Device, DeviceCreate, ReportedStatus
from tests.fleet.conftest import CLI_ACTOR, Database

_DEVICES = Device.__table__  # type: ignore[attr-defined]
_SEEN = KeyedUpdate(_DEVICES, ("id",), ("reported_status", "last_seen_at"))


def _enroll(engine: Engine, names: list[str]) -> list[str]:
    with session_scope(engine, write=True) as session:
        return [
            enroll_device(
                session,
                DeviceCreate(name=name, hardware_target="rpi5"),
                actor=CLI_ACTOR,
                offline_after_s=60,
            )[0].id
            for name in names
        ]


def test_keyed_update_changes_exactly_the_given_rows_in_one_statement(database: Database) -> None:
    engine = database.engine()
    try:
        first, second, untouched = _enroll(engine, ["a", "b", "c"])
        with engine.connect() as connection:
            before = connection.execute(
                select(_DEVICES.c.reported_status, _DEVICES.c.last_seen_at).where(
                    _DEVICES.c.id == untouched
                )
            ).one()
        when = datetime(2026, 12, 5, 1, 0, tzinfo=UTC)
        rows = [
            {"id": first, "reported_status": ReportedStatus.online, "last_seen_at": when},
            {
                "id": second,
                "reported_status": ReportedStatus.offline,
                "last_seen_at": when + timedelta(seconds=1),
            },
        ]
        statements: list[str] = []
        event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
        with engine.begin() as connection:
            _SEEN.execute(connection, rows)
            _SEEN.execute(connection, [])  # nothing to write: no statement
        statements = [s for s in statements if s != "BEGIN"]  # SQLite: its own BEGIN
        assert len(statements) == 1  # SQLite: one executemany; PostgreSQL: one UPDATE
        assert ("unnest(" in statements[0]) is (database.backend == "postgres")
        with engine.connect() as connection:
            got = connection.execute(
                select(_DEVICES.c.id, _DEVICES.c.reported_status, _DEVICES.c.last_seen_at)
            ).all()
        assert sorted(got) == sorted(
            [
                (first, ReportedStatus.online, when),
                (second, ReportedStatus.offline, when + timedelta(seconds=1)),
                (untouched, *before),
            ]
        )
    finally:
        engine.dispose()
