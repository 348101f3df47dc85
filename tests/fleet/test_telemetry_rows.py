"""Telemetry rows in bulk (one COPY on PostgreSQL, executemany on SQLite): what goes in
comes back out unchanged on both backends, and a refused batch writes nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlmodel import Session, select

from edge_client.protocol import mqtt as proto
from fleet import audit
from fleet.crud.devices import enroll_device
from fleet.db import session_scope
from fleet.models.devices import DeviceCreate
from fleet.models.ota import TelemetryRecord
from fleet.ota.telemetry_rows import COLUMNS, insert_telemetry, telemetry_row

ACTOR = audit.Actor("cli:test", "admin", "cli")


def _enroll(database: Any, names: list[str]) -> list[str]:
    engine = database.engine()
    with session_scope(engine, write=True) as session:
        ids = [
            enroll_device(
                session,
                DeviceCreate(name=n, hardware_target="cpu-x86"),
                actor=ACTOR,
                offline_after_s=120.0,
            )[0].id
            for n in names
        ]
    engine.dispose()
    return ids


def _message(seq: int, predictions: dict[str, int]) -> proto.Telemetry:
    return proto.Telemetry(
        seq=seq,
        window_s=1.5,
        count=7,
        latency_p50_ms=0.125,
        latency_p95_ms=3.0e-3,
        model_version_id=None if seq % 2 else seq,
        predictions=predictions,
        features=(proto.FeatureSummary(counts=(0, 2**31, 5)), proto.FeatureSummary(counts=())),
    )


def test_rows_written_in_bulk_read_back_unchanged(database: Any) -> None:
    # Prepare: values COPY's text format must escape (tab, newline, backslash, \N, quotes,
    # non-ASCII) in the JSON columns, a NULL, and a time in another zone.
    a, b = _enroll(database, ["rows-a", "rows-b"])
    tricky = {"cat\tdog": 1, "line\nbreak": 2, "back\\slash": 3, "\\N": 4, '"q"': 5, "é✓": 6}
    now = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    rows = [
        telemetry_row(a, _message(1, tricky), now),
        telemetry_row(b, _message(2, {}), now.astimezone(UTC) + timedelta(seconds=1)),
        telemetry_row(a, _message(3, {"x": 0}), now.astimezone(UTC) + timedelta(hours=-1)),
    ]
    engine = database.engine()

    # Execute
    with session_scope(engine, write=True) as session:
        insert_telemetry(session, rows)

    # Assert: every column of every row as given (times equal as instants).
    with Session(engine) as session:
        stored = session.exec(select(TelemetryRecord).order_by(TelemetryRecord.seq)).all()
    engine.dispose()
    assert [r.seq for r in stored] == [1, 2, 3]
    for row, record in zip(rows, stored, strict=True):
        assert {c: getattr(record, c) for c in COLUMNS} == row
    assert stored[0].predictions == tricky


def test_a_refused_batch_raises_and_writes_nothing(database: Any) -> None:
    # Prepare: one row of the batch names a device the database does not know (FK).
    (a,) = _enroll(database, ["rows-c"])
    now = datetime.now(UTC)
    rows = [telemetry_row(d, _message(i, {}), now) for i, d in enumerate([a, "nope", a])]
    engine = database.engine()

    # Execute / Assert: the database refuses the batch; the transaction leaves no row.
    with (
        pytest.raises(Exception, match=r"(?i)foreign key"),
        session_scope(engine, write=True) as session,
    ):
        insert_telemetry(session, rows)
    with Session(engine) as session:
        assert session.exec(select(TelemetryRecord)).all() == []
    engine.dispose()


def test_a_message_delivered_twice_is_stored_once_with_dedupe(database: Any) -> None:
    # Prepare: a replica killed between commit and PUBACK gets the same messages again,
    # in a later batch and in the same one; without dedupe (one process) nothing changes.
    a, b = _enroll(database, ["rows-d", "rows-e"])
    now = datetime.now(UTC)
    first = [telemetry_row(a, _message(i, {"0": i}), now, dedupe=True) for i in range(3)]
    other = [telemetry_row(b, _message(i, {"0": i}), now, dedupe=True) for i in range(3)]
    again = [telemetry_row(a, _message(i, {"0": i}), now, dedupe=True) for i in (2, 3, 3)]
    plain = [telemetry_row(a, _message(9, {}), now) for _ in range(2)]
    engine = database.engine()

    # Execute
    for batch in (first, again, plain, other):
        with session_scope(engine, write=True) as session:
            insert_telemetry(session, batch)

    # Assert: seq 0..3 once each; the two undeduplicated rows both kept.
    with Session(engine) as session:
        stored = session.exec(select(TelemetryRecord)).all()
    engine.dispose()
    assert sorted(r.seq for r in stored if r.device_id == a) == [0, 1, 2, 3, 9, 9]
    # Another device's identical messages are its own: all stored (the index is per device).
    assert sorted(r.seq for r in stored if r.device_id == b) == [0, 1, 2]
    assert first[0]["digest"] != first[1]["digest"] and plain[0]["digest"] is None
