"""Schema migrations, run programmatically (``fedfleet fleet serve`` upgrades at start).

The revisions live in :mod:`fleet.migrations` inside the package, so an installed fleet
can upgrade its own database. To change the schema: edit the tables in
:mod:`fleet.models`, add ``fleet/migrations/versions/NNNN_<what>.py`` whose
``down_revision`` is the current head, and run ``pytest tests/fleet/test_migrations.py``:
it fails while the models and the migrated schema differ.

Upgrades run in one transaction (all or nothing on both backends). On PostgreSQL an
advisory lock serializes servers starting together; on SQLite foreign keys are switched
off while tables are rebuilt (Alembic batch mode) and checked before commit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

from fleet.db import is_sqlite


class MigrationError(RuntimeError):
    """The database cannot be brought to the wanted revision."""


def alembic_config() -> Config:
    """Alembic configuration pointing at the migrations shipped in this package."""
    config = Config()
    config.set_main_option("script_location", "fleet:migrations")
    return config


def head_revision() -> str:
    """The newest revision shipped with this version of the fleet."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships revisions
        raise MigrationError("no migrations found in fleet.migrations")
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None for an empty database."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def is_at_head(engine: Engine) -> bool:
    """True when the database schema is the one this code expects."""
    return current_revision(engine) == head_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Upgrade the database to ``revision`` (default: the newest)."""
    _run(engine, lambda cfg: command.upgrade(cfg, revision))


def downgrade(engine: Engine, revision: str) -> None:
    """Downgrade the database to ``revision`` (``"base"`` drops every fleet table)."""
    _run(engine, lambda cfg: command.downgrade(cfg, revision))


def _run(engine: Engine, step: object) -> None:
    config = alembic_config()
    with _migration_connection(engine) as connection:
        config.attributes["connection"] = connection
        try:
            step(config)  # type: ignore[operator]
        except Exception as exc:
            raise MigrationError(f"database migration failed: {exc}") from exc
        if is_sqlite(engine):
            broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise MigrationError(
                    f"migration left {len(broken)} broken foreign keys (first: {broken[0]}); "
                    "nothing was changed"
                )


@contextmanager
def _migration_connection(engine: Engine) -> Iterator[Connection]:
    sqlite = is_sqlite(engine)
    bind = engine.execution_options(fleet_write=True)
    with bind.connect() as connection:
        if sqlite:
            # Must be set outside a transaction; batch mode drops and renames tables.
            connection.connection.driver_connection.execute(  # type: ignore[union-attr]
                "PRAGMA foreign_keys=OFF"
            )
        try:
            with connection.begin():
                if not sqlite:
                    connection.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"),
                        {"key": _lock_key(connection)},
                    )
                yield connection
        finally:
            if sqlite:
                connection.connection.driver_connection.execute(  # type: ignore[union-attr]
                    "PRAGMA foreign_keys=ON"
                )


def _lock_key(connection: Connection) -> int:
    """A 63-bit advisory-lock key per schema, so separate fleets never wait on each other."""
    schema = connection.execute(text("SELECT current_schema()")).scalar_one_or_none() or ""
    digest = hashlib.sha256(b"fedfleet-migrate:" + schema.encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1
