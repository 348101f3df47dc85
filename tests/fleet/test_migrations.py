"""Schema migrations: upgrades keep data, models match migrations, audit is append-only."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine
from sqlalchemy.exc import DatabaseError

from fleet import migrate
from fleet.db import make_engine
from fleet.models import metadata

FIRST = "0001_core"
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_engine(
    request: pytest.FixtureRequest, tmp_path: Path, pg_scratch_schema: Callable[[], Any]
) -> Iterator[Engine]:
    """An engine on a database with no fleet tables at all."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
        yield engine
        engine.dispose()
        return
    with pg_scratch_schema() as schema:
        engine = make_engine(PG_URL, schema=schema)
        try:
            yield engine
        finally:
            engine.dispose()


@pytest.fixture
def sql(
    run_sql: Callable[..., list[tuple[object, ...]]],
) -> Callable[..., list[tuple[object, ...]]]:
    return run_sql


def test_upgrade_from_previous_revision_keeps_data(
    empty_engine: Engine, sql: Callable[..., Any]
) -> None:
    # Prepare: a database at the previous revision, holding data.
    migrate.upgrade(empty_engine, FIRST)
    assert migrate.current_revision(empty_engine) == FIRST
    now = "2025-01-02 03:04:05+00:00"
    sql(
        empty_engine,
        "INSERT INTO groups (id, name, description, created_at) VALUES (1, 'wards', 'ICU', :t)",
        t=now,
    )
    sql(empty_engine, "INSERT INTO tags (id, name) VALUES (1, 'floor-3')")
    sql(
        empty_engine,
        "INSERT INTO model_versions (id, task, name, description, stage, metrics, parent_id, "
        "created_at, created_by) VALUES (1, 'digits-cnn', 'base', '', 'promoted', :m, NULL, :t, 'cli:x'), "
        "(2, 'digits-cnn', 'tuned', '', 'registered', :m, 1, :t, 'cli:x')",
        m=json.dumps({"accuracy": 0.91}),
        t=now,
    )
    sql(
        empty_engine,
        "INSERT INTO devices (id, name, hardware_target, group_id, mqtt_username, "
        "mqtt_password_hash, enrolled_at, enrolled_by, last_seen_at, model_version_id) "
        "VALUES ('dev-00000000000000aa', 'pi-1', 'rpi5', 1, 'dev-00000000000000aa', '$7$1$x$y', :t, "
        "'cli:x', :t, 2)",
        t=now,
    )
    sql(
        empty_engine,
        "INSERT INTO device_tags (device_id, tag_id) VALUES ('dev-00000000000000aa', 1)",
    )
    sql(
        empty_engine,
        "INSERT INTO audit_events (at, actor, actor_role, action, entity_type, entity_id, "
        "before, after, source) VALUES (:t, 'cli:x', 'admin', 'device.enroll', 'device', "
        "'dev-00000000000000aa', NULL, :a, 'cli')",
        t=now,
        a=json.dumps({"name": "pi-1"}),
    )

    # Execute
    migrate.upgrade(empty_engine)

    # Assert: at head, every row still there with its values and links.
    assert migrate.current_revision(empty_engine) == migrate.head_revision()
    device = sql(
        empty_engine,
        "SELECT d.name, g.name, d.model_version_id, d.mqtt_password_hash, d.reported_status "
        "FROM devices d JOIN groups g ON g.id = d.group_id",
    )
    assert device == [("pi-1", "wards", 2, "$7$1$x$y", None)]
    assert sql(empty_engine, "SELECT tag_id FROM device_tags") == [(1,)]
    models = sql(
        empty_engine,
        "SELECT id, parent_id, stage, source_run_id, source_round FROM model_versions ORDER BY id",
    )
    assert models == [(1, None, "promoted", None, None), (2, 1, "registered", None, None)]
    assert sql(empty_engine, "SELECT action, entity_id FROM audit_events") == [
        ("device.enroll", "dev-00000000000000aa")
    ]
    # The new lineage column is a real foreign key now.
    with pytest.raises(DatabaseError):
        sql(empty_engine, "UPDATE model_versions SET source_run_id = 999 WHERE id = 1")


def test_downgrade_and_upgrade_round_trip(empty_engine: Engine) -> None:
    migrate.upgrade(empty_engine)
    migrate.downgrade(empty_engine, FIRST)
    assert migrate.current_revision(empty_engine) == FIRST
    migrate.downgrade(empty_engine, "base")
    assert migrate.current_revision(empty_engine) is None
    migrate.upgrade(empty_engine)
    assert migrate.is_at_head(empty_engine)


def test_models_match_the_migrated_schema(empty_engine: Engine) -> None:
    # A model change without a migration (or the reverse) shows up as a difference.
    migrate.upgrade(empty_engine)
    with empty_engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, metadata)
    assert differences == []


def test_upgrade_is_idempotent(empty_engine: Engine) -> None:
    migrate.upgrade(empty_engine)
    migrate.upgrade(empty_engine)
    assert migrate.is_at_head(empty_engine)


def test_unknown_revision_is_a_clear_error(empty_engine: Engine) -> None:
    with pytest.raises(migrate.MigrationError, match="migration failed"):
        migrate.upgrade(empty_engine, "9999_" + secrets.token_hex(2))
    assert migrate.current_revision(empty_engine) is None


def test_audit_log_is_append_only_in_the_database(database: Any, sql: Callable[..., Any]) -> None:
    engine = database.engine()
    try:
        sql(
            engine,
            "INSERT INTO audit_events (at, actor, actor_role, action, entity_type, entity_id, "
            "source) VALUES (CURRENT_TIMESTAMP, 'cli:x', 'admin', 'group.create', 'group', '1', 'cli')",
        )
        with pytest.raises(DatabaseError, match="append-only"):
            sql(engine, "UPDATE audit_events SET actor = 'someone-else'")
        with pytest.raises(DatabaseError, match="append-only"):
            sql(engine, "DELETE FROM audit_events")
        assert sql(engine, "SELECT actor FROM audit_events") == [("cli:x",)]
    finally:
        engine.dispose()
