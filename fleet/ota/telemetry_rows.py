"""Telemetry rows into the fleet database in bulk: what the bridge's ingester writes.

On PostgreSQL one batch is one ``COPY telemetry_records (...) FROM STDIN`` (psycopg's
copy API): no statement per row, no per-row round trip, no per-row SQLAlchemy bind
processing — the rows stream in one command. Elsewhere (SQLite) one ``executemany``
INSERT. Either way it runs inside the caller's transaction, so a batch the database
refuses (a constraint, a trigger) raises and writes nothing: the bridge then writes each
message on its own (:meth:`fleet.ota.bridge.FleetBridge.ingest_batch`) and drops only the
refused one.

Measured (docs/decisions.md, "Issue 16 item 4"): the PostgreSQL executemany it
replaces (psycopg pipeline, one INSERT and one round of JSON bind processing per row)
was the larger half of the ingester's write time.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session

from edge_client.protocol import mqtt as proto
from fleet.models.ota import FeedbackRecord, TelemetryRecord

#: The columns a telemetry row fills, in COPY order (``id`` comes from its sequence).
COLUMNS = (
    "device_id",
    "received_at",
    "model_version_id",
    "seq",
    "window_s",
    "count",
    "latency_p50_ms",
    "latency_p95_ms",
    "predictions",
    "features",
    "errors",
    "digest",
)
_JSON = frozenset({"predictions", "features"})
_STAGE = "fedfleet_telemetry_in"  # per session, emptied at commit
_COLUMN_LIST = ", ".join(COLUMNS)
# Constants only (no input in them): the staging table for deduplicated batches.
_STAGE_CREATE = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGE} ON COMMIT DELETE ROWS AS "  # noqa: S608
    f"SELECT {_COLUMN_LIST} FROM telemetry_records WITH NO DATA"
)
_STAGE_INSERT = (
    f"INSERT INTO telemetry_records ({_COLUMN_LIST}) SELECT {_COLUMN_LIST} "  # noqa: S608
    f"FROM {_STAGE} ON CONFLICT (device_id, digest) DO NOTHING"
)
_STAGE_EMPTY = f"DELETE FROM {_STAGE}"  # noqa: S608


def message_digest(message: proto.Telemetry | proto.Feedback) -> str:
    """32 hex digits that are the same for every delivery of one message (its decoded
    fields, so a redelivery's DUP flag or key order does not matter)."""
    return hashlib.blake2b(repr(message).encode(), digest_size=16).hexdigest()


def telemetry_row(
    device_id: str, message: proto.Telemetry, now: datetime, *, dedupe: bool = False
) -> dict[str, Any]:
    """The stored row of one decoded telemetry message received at ``now`` (aware UTC);
    with ``dedupe`` its digest, so a second delivery is not stored again."""
    return {
        "digest": message_digest(message) if dedupe else None,
        "device_id": device_id,
        "received_at": now,
        "model_version_id": message.model_version_id,
        "seq": message.seq,
        "window_s": message.window_s,
        "count": message.count,
        "latency_p50_ms": message.latency_p50_ms,
        "latency_p95_ms": message.latency_p95_ms,
        "predictions": message.predictions,
        "features": [list(f.counts) for f in message.features],
        "errors": message.errors,
    }


def feedback_row(
    device_id: str, message: proto.Feedback, now: datetime, *, dedupe: bool = False
) -> dict[str, Any]:
    """The stored row of one decoded feedback message (label counts and their sums);
    with ``dedupe`` its digest, so a second delivery is not stored again."""
    labels = {k: [v.correct, v.wrong] for k, v in message.labels.items()}
    return {
        "digest": message_digest(message) if dedupe else None,
        "device_id": device_id,
        "received_at": now,
        "model_version_id": message.model_version_id,
        "seq": message.seq,
        "window_s": message.window_s,
        "labelled": sum(v.total for v in message.labels.values()),
        "correct": sum(v.correct for v in message.labels.values()),
        "labels": labels,
    }


def insert_feedback(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Write feedback ``rows`` (from :func:`feedback_row`) in one executemany INSERT
    (one message a window per labelled device: far fewer than telemetry rows); a row
    whose ``(device_id, digest)`` is stored already is skipped (ON CONFLICT DO NOTHING,
    on SQLite and PostgreSQL alike)."""
    if not rows:
        return
    connection = session.connection()
    dialect = postgresql_insert if connection.dialect.name == "postgresql" else sqlite_insert
    connection.execute(dialect(FeedbackRecord).on_conflict_do_nothing(), list(rows))


def insert_telemetry(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Write ``rows`` (from :func:`telemetry_row`) in the session's transaction: one COPY
    on PostgreSQL, one executemany INSERT elsewhere. Raises what the database raises."""
    if not rows:
        return
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        statement = sqlite_insert(TelemetryRecord).on_conflict_do_nothing()
        connection.execute(statement, list(rows))
        return
    driver = connection.connection.driver_connection  # psycopg.Connection
    if driver is None:  # pragma: no cover - a pooled connection always has one
        raise RuntimeError("no PostgreSQL driver connection to COPY through")
    table = TelemetryRecord.__tablename__
    deduped = any(row["digest"] is not None for row in rows)
    with driver.cursor() as cursor:
        if deduped:  # COPY cannot skip conflicts: through a temporary table, then INSERT
            cursor.execute(_STAGE_CREATE)
        target = _STAGE if deduped else table
        with cursor.copy(f"COPY {target} ({_COLUMN_LIST}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(_copy_values(row))
        if deduped:
            cursor.execute(_STAGE_INSERT)
            cursor.execute(_STAGE_EMPTY)


def _copy_values(row: dict[str, Any]) -> tuple[Any, ...]:
    """One row's values in COPY order: JSON columns as JSON text, times in UTC."""
    received = row["received_at"]
    if received.tzinfo is None:
        raise ValueError("naive datetime given to the database; use an aware UTC time")
    values: list[Any] = []
    for name in COLUMNS:
        value = row[name]
        if name in _JSON:
            value = json.dumps(value, separators=(",", ":"), allow_nan=False)
        elif name == "received_at":
            value = received.astimezone(UTC)
        values.append(value)
    return tuple(values)
