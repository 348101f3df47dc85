"""Database engines and sessions for SQLite (default) and PostgreSQL.

Nothing here runs at import time: :func:`make_engine` is called by the app factory and
the CLI with the URL from :class:`fleet.settings.FleetSettings`, so tests can point the
fleet at any database.

SQLite is configured for a small server: WAL journal (readers never block the writer),
foreign keys on, a busy timeout, and ``BEGIN IMMEDIATE`` for write sessions so two
writers queue on the lock instead of failing with "database is locked" when a read
transaction tries to upgrade. PostgreSQL gets a connection pool and, when a schema is
configured, a ``search_path`` so several fleets (or test sessions) can share a database.
A pooled PostgreSQL connection the server closed (a restart, ``pg_terminate_backend``)
is replaced when it is checked out, without a ``SELECT 1`` round trip per checkout
(:func:`_closed_by_server`), so the request after a database restart still works.
"""

from __future__ import annotations

import os
import re
import select
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    DateTime,
    Engine,
    bindparam,
    create_engine,
    event,
    exc,
    text,
    update,
)
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.types import TypeDecorator
from sqlmodel import Session

_SCHEMA_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
#: Execution option that makes a SQLite transaction start with ``BEGIN IMMEDIATE``.
_WRITE_OPTION = "fleet_write"


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always returned timezone-aware.

    SQLite has no timezone type and returns naive datetimes; this makes both backends
    behave the same. Naive datetimes are refused on the way in (ambiguous).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use an aware UTC time")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def normalize_database_url(url: str) -> str:
    """Return ``url`` with the driver the fleet uses; refuse anything else.

    ``postgresql://`` and ``postgres://`` become ``postgresql+psycopg://`` (psycopg 3 is
    the installed driver). Raises ValueError with an example of a valid URL.
    """
    text = url.strip()
    if text.startswith("postgres://"):
        text = "postgresql://" + text[len("postgres://") :]
    try:
        parsed = make_url(text)
    except Exception as exc:  # SQLAlchemy raises ArgumentError with a terse message
        raise ValueError(
            f"cannot parse database URL {url!r}; use sqlite:///PATH/fleet.db or "
            "postgresql://USER@HOST:5432/DB"
        ) from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.drivername != "sqlite":
            raise ValueError(f"unsupported SQLite driver {parsed.drivername!r}; use sqlite:///")
        if not parsed.database or parsed.database == ":memory:":
            raise ValueError(
                "an in-memory SQLite database cannot be shared between requests; "
                "give a file: sqlite:///PATH/fleet.db"
            )
        return parsed.render_as_string(hide_password=False)
    if backend == "postgresql":
        if parsed.drivername not in ("postgresql", "postgresql+psycopg"):
            raise ValueError(
                f"unsupported PostgreSQL driver {parsed.drivername!r}; use postgresql:// "
                "(psycopg 3)"
            )
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    raise ValueError(
        f"unsupported database {backend!r} in URL; use sqlite:///PATH/fleet.db or "
        "postgresql://USER@HOST:5432/DB"
    )


def check_schema_name(schema: str) -> str:
    """Validate a PostgreSQL schema name (it is interpolated into ``search_path``)."""
    if not _SCHEMA_RE.fullmatch(schema):
        raise ValueError(
            f"invalid schema name {schema!r}: use lowercase letters, digits and '_', "
            "starting with a letter"
        )
    return schema


def make_engine(
    url: str,
    *,
    schema: str | None = None,
    pool_size: int = 10,
    echo: bool = False,
) -> Engine:
    """Create the engine for ``url``.

    Args:
        url: ``sqlite:///PATH`` or ``postgresql://...`` (normalized by
            :func:`normalize_database_url`).
        schema: PostgreSQL schema to use as ``search_path`` (ignored for SQLite).
        pool_size: PostgreSQL connections kept open (SQLite uses one per thread).
        echo: log every SQL statement.
    """
    url = normalize_database_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        # the file 0600 and its folder 0700 before SQLite opens it (its -wal/-shm copy the mode)
        _create_private_file(Path(parsed.database or ".").expanduser())
        engine = create_engine(
            url,
            echo=echo,
            connect_args={"check_same_thread": False, "timeout": 30.0},
        )
        _configure_sqlite(engine)
        return engine
    connect_args: dict[str, Any] = {}
    if schema is not None:
        connect_args["options"] = f"-csearch_path={check_schema_name(schema)}"
    engine = create_engine(
        url,
        echo=echo,
        pool_size=pool_size,
        max_overflow=pool_size * 2,
        connect_args=connect_args,
    )
    _configure_postgresql(engine)
    return engine


def _closed_by_server(dbapi_connection: Any) -> bool:
    """Whether the server has closed (or is closing) this idle pooled connection.

    A connection resting in the pool has nothing to read: when the server ends it (a
    restart, ``pg_terminate_backend``, an idle timeout) it sends its last error and
    closes the socket, which then polls readable. One ``poll`` with no wait instead of
    ``pool_pre_ping``'s ``SELECT 1`` round trip (issue 16: 0.07 ms of a heartbeat's CPU).
    Anything else readable while idle (a NOTIFY the fleet never asks for) also retires
    the connection: a reconnect, never a wrong answer.
    """
    if dbapi_connection.closed or dbapi_connection.broken:
        return True
    try:
        poller = select.poll()
        poller.register(dbapi_connection.fileno(), select.POLLIN | select.POLLPRI)
        return bool(poller.poll(0))
    except (OSError, ValueError):  # no socket any more
        return True


def _configure_postgresql(engine: Engine) -> None:
    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        if _closed_by_server(dbapi_connection):
            # The pool discards it and checks out (or opens) another, up to three times.
            raise exc.DisconnectionError("the database closed this pooled connection")


def _create_private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 (a missing folder 0700) unless it exists.

    The fleet may not import ``privacy.private_files`` (tests/test_layers.py), so this is
    its own copy of that module's ``create_private_file``: ``os.open`` with the mode, then
    ``fchmod``, so the umask cannot widen it.
    """
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module so "begin" below decides.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        write = connection.get_execution_options().get(_WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


class FleetSession(Session):
    """The session every fleet transaction uses.

    :mod:`fleet.audit` attaches its checks to this class: a transaction that changes
    fleet data without recording an audit event is refused at commit.
    """


def is_sqlite(engine: Engine) -> bool:
    """True when ``engine`` talks to SQLite."""
    return engine.dialect.name == "sqlite"


@contextmanager
def session_scope(engine: Engine, *, write: bool) -> Iterator[Session]:
    """A session that commits on success and rolls back on error.

    ``write=True`` takes SQLite's write lock at the start of the transaction (see the
    module docstring); PostgreSQL ignores it.
    """
    import fleet.audit  # noqa: F401  (attaches the audit checks to FleetSession)

    bind = engine.execution_options(**{_WRITE_OPTION: True}) if write else engine
    with FleetSession(bind, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


class KeyedUpdate:
    """``UPDATE table SET columns WHERE keys`` for many rows at once.

    SQLite: one executemany. PostgreSQL: **one** statement joining the table to the
    rows passed as one array per column (``unnest``): psycopg's executemany runs the
    statement once per row (a pipeline of a thousand executions, ~20 µs of client CPU
    each), the array form is one execution whatever the count (issue 16, item 4: the
    sends and acks of a rollout). Rows are mappings from column name to value; values
    go through the columns' types (enums, :class:`UTCDateTime`) as in any statement.
    """

    def __init__(self, table: Any, keys: tuple[str, ...], columns: tuple[str, ...]) -> None:
        self.table, self.keys, self.columns = table, keys, columns
        self._sqlite = (
            update(table)
            .where(*(table.c[k] == bindparam(f"k_{k}") for k in keys))
            .values({c: bindparam(f"v_{c}") for c in columns})
        )
        self._postgresql: Any = None
        self._processors: dict[str, Any] = {}
        # the SQLite statement's parameter names, paired once (not formatted per row)
        self._names = tuple([(f"k_{k}", k) for k in keys] + [(f"v_{c}", c) for c in columns])

    def execute(self, connection: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Write ``rows`` (each with every key and column) in ``connection``'s transaction."""
        if not rows:
            return
        if connection.dialect.name != "postgresql":
            names = self._names
            connection.execute(self._sqlite, [{p: r[c] for p, c in names} for r in rows])
            return
        if self._postgresql is None:
            self._prepare(connection.dialect)
        arrays = {}
        for name, process in self._processors.items():
            values = [r[name] for r in rows]
            arrays[name] = [process(v) for v in values] if process is not None else values
        connection.execute(self._postgresql, arrays)

    def _prepare(self, dialect: Dialect) -> None:
        names = (*self.keys, *self.columns)
        for name in names:
            self._processors[name] = self.table.c[name].type.bind_processor(dialect)
        arrays = ", ".join(
            f"CAST(:{n} AS {self.table.c[n].type.compile(dialect=dialect)}[])" for n in names
        )
        sets = ", ".join(f"{c} = v.{c}" for c in self.columns)
        match = " AND ".join(f"t.{k} = v.{k}" for k in self.keys)
        self._postgresql = text(
            f"UPDATE {self.table.name} AS t SET {sets} "  # noqa: S608 (names from the model)
            f"FROM unnest({arrays}) AS v({', '.join(names)}) WHERE {match}"
        )
