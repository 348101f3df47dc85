"""Fixtures for the fleet tests: a fresh database per test on SQLite and PostgreSQL.

PostgreSQL tests use one schema per test session (``fleet_test_<random>``, dropped at
the end), so several people can run them against the shared ``test`` database at once.
Each test starts from empty tables (TRUNCATE on PostgreSQL; a copy of a migrated
template file on SQLite).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from sqlalchemy import Engine, text

from fleet import migrate
from fleet.audit import Actor
from fleet.crud import tokens as token_crud
from fleet.db import make_engine, session_scope
from fleet.models.auth import Role
from fleet.settings import FleetSettings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette suggests httpx2; httpx is what we have
    from fastapi.testclient import TestClient

PG_DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres connect_timeout=5"
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
CLI_ACTOR = Actor(name="cli:tests", role="admin", source="cli")


@dataclass(frozen=True)
class Database:
    """Where a test's fleet database lives."""

    backend: str
    url: str
    schema: str | None

    def engine(self) -> Engine:
        return make_engine(self.url, schema=self.schema)


def _create_schema() -> str:
    schema = f"fleet_test_{secrets.token_hex(6)}"
    try:
        with psycopg.connect(PG_DSN, autocommit=True) as connection:
            connection.execute(f"CREATE SCHEMA {schema}")
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL on 127.0.0.1:5432 (database 'test') is unreachable: {exc}. "
            "Start it, or deselect these tests with -m 'not postgres'."
        )
    return schema


def _drop_schema(schema: str) -> None:
    with psycopg.connect(PG_DSN, autocommit=True) as connection:
        connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture(scope="session")
def pg_schema() -> Iterator[str]:
    """A migrated PostgreSQL schema for this test session."""
    schema = _create_schema()
    engine = make_engine(PG_URL, schema=schema)
    try:
        migrate.upgrade(engine)
        engine.dispose()
        yield schema
    finally:
        engine.dispose()
        _drop_schema(schema)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file that each test copies (much faster than migrating)."""
    path = tmp_path_factory.mktemp("fleet-template") / "fleet.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate.upgrade(engine)
    with engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return path


def _truncate_all(schema: str) -> None:
    with psycopg.connect(PG_DSN, autocommit=True) as connection:
        tables = [
            row[0]
            for row in connection.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s AND tablename <> "
                "'alembic_version'",
                (schema,),
            )
        ]
        if tables:
            names = ", ".join(f"{schema}.{t}" for t in tables)
            connection.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")


def make_settings(database: Database, data_dir: Path, **changes: object) -> FleetSettings:
    values: dict[str, object] = {
        "database_url": database.url,
        "database_schema": database.schema,
        "data_dir": data_dir,
        "artifact_dir": data_dir / "artifacts",
        "migrate_on_start": False,
        "promotion_interval_s": 0.0,  # tests step the promotion controller themselves
    }
    values.update(changes)
    return FleetSettings(**values)  # type: ignore[arg-type]


class AppHandle:
    """One app per backend for the whole session; :meth:`reset` empties it per test.

    Building a FastAPI app takes ~0.5 s (route models), so tests share one and get a
    fresh database instead: a copy of the migrated template on SQLite, TRUNCATE on
    PostgreSQL. Tests that need other settings build their own with ``app_factory``.
    """

    def __init__(self, database: Database, data_dir: Path, template: Path | None) -> None:
        from fleet.app import create_app

        self.database = database
        self.data_dir = data_dir
        self.template = template
        keys = data_dir / "signing-keys"
        keys.mkdir(mode=0o700, exist_ok=True)
        self.settings = make_settings(database, data_dir, signing_key_dir=keys)
        self.reset()
        self.client = TestClient(create_app(self.settings))
        self.client.__enter__()

    @property
    def engine(self) -> Engine:
        return self.client.app.state.engine  # type: ignore[attr-defined,no-any-return]

    def reset(self) -> None:
        shutil.rmtree(self.settings.artifact_dir, ignore_errors=True)
        if self.database.schema is not None:
            _truncate_all(self.database.schema)
            return
        if hasattr(self, "client"):
            self.engine.dispose()  # no connection may keep the old file open
        path = Path(self.database.url.removeprefix("sqlite:///"))
        for suffix in ("-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        assert self.template is not None
        shutil.copy(self.template, path)

    def close(self) -> None:
        self.client.__exit__(None, None, None)


@pytest.fixture(scope="session")
def sqlite_app(
    tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path
) -> Iterator[AppHandle]:
    data_dir = tmp_path_factory.mktemp("fleet-sqlite")
    database = Database("sqlite", f"sqlite:///{data_dir / 'fleet.db'}", None)
    handle = AppHandle(database, data_dir, sqlite_template)
    yield handle
    handle.close()


@pytest.fixture(scope="session")
def postgres_app(tmp_path_factory: pytest.TempPathFactory, pg_schema: str) -> Iterator[AppHandle]:
    data_dir = tmp_path_factory.mktemp("fleet-postgres")
    handle = AppHandle(Database("postgres", PG_URL, pg_schema), data_dir, None)
    yield handle
    handle.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> AppHandle:
    """The shared app of one backend, with an empty database."""
    handle: AppHandle = request.getfixturevalue(f"{request.param}_app")
    handle.reset()
    return handle


@pytest.fixture
def database(backend: AppHandle) -> Database:
    """An empty, migrated fleet database on each backend."""
    return backend.database


@pytest.fixture
def sqlite_database(tmp_path: Path, sqlite_template: Path) -> Database:
    """An empty, migrated SQLite fleet database of this test's own."""
    path = tmp_path / "fleet.db"
    shutil.copy(sqlite_template, path)
    return Database("sqlite", f"sqlite:///{path}", None)


SettingsFactory = Callable[..., FleetSettings]


@pytest.fixture
def settings_factory(database: Database, tmp_path: Path) -> SettingsFactory:
    """Settings for this test's database (own data folder), with any field changed."""
    return lambda **changes: make_settings(database, tmp_path, **changes)


@pytest.fixture
def settings(backend: AppHandle) -> FleetSettings:
    return backend.settings


@pytest.fixture
def client(backend: AppHandle) -> TestClient:
    return backend.client


@pytest.fixture
def app_factory() -> Iterator[Callable[[FleetSettings], TestClient]]:
    """Build extra apps (with other settings); their engines are disposed at teardown."""
    from fleet.app import create_app

    clients: list[TestClient] = []

    def build(settings: FleetSettings) -> TestClient:
        test_client = TestClient(create_app(settings))
        test_client.__enter__()
        clients.append(test_client)
        return test_client

    yield build
    for test_client in clients:
        test_client.__exit__(None, None, None)


@pytest.fixture
def new_token() -> Callable[..., str]:
    """Create a token directly in the database: ``new_token(engine, role, name=...)``."""
    return create_token


def create_token(engine: Engine, role: Role, name: str | None = None) -> str:
    with session_scope(engine, write=True) as session:
        secret, _ = token_crud.create_token(
            session, name=name or role.value, role=role, actor=CLI_ACTOR
        )
    return secret


@pytest.fixture
def tokens(client: TestClient) -> dict[Role, str]:
    """One token per role."""
    engine = client.app.state.engine  # type: ignore[attr-defined]
    return {role: create_token(engine, role) for role in Role}


@pytest.fixture
def headers(tokens: dict[Role, str]) -> dict[Role, dict[str, str]]:
    """``Authorization`` headers per role."""
    return {role: {"Authorization": f"Bearer {secret}"} for role, secret in tokens.items()}


@pytest.fixture
def admin(headers: dict[Role, dict[str, str]]) -> dict[str, str]:
    return headers[Role.admin]


@pytest.fixture
def run_sql() -> Callable[..., list[tuple[object, ...]]]:
    """``run_sql(engine, "SELECT ...", **params)`` → rows."""
    return sql


@pytest.fixture
def drift_event() -> Callable[[Engine, int], int]:
    """``drift_event(engine, model_version_id)`` → the id of a new drift event."""
    return record_drift_event


def record_drift_event(engine: Engine, model_version_id: int, *, score: float = 0.4) -> int:
    """A drift event on a model version, recorded (and audited) as the fleet's drift
    check records one; for tests that start from an event rather than from telemetry."""
    from fleet import audit
    from fleet.models.ota import DriftEvent

    with session_scope(engine, write=True) as session:
        event = DriftEvent(
            model_version_id=model_version_id,
            method="psi",
            score=score,
            threshold=0.2,
            per_feature=[score],
            samples=300,
            population=5,
            devices=[
                {"device_id": f"dev-{i}", "score": score, "samples": 100, "drifted": True}
                for i in range(3)
            ]
            + [{"device_id": "dev-3", "score": 0.01, "samples": 100, "drifted": False}],
        )
        session.add(event)
        session.flush()
        audit.record(
            session,
            actor=Actor("system:drift", "operator", "cli"),
            action="drift.detected",
            entity_type="drift_event",
            entity_id=event.id or 0,
            after={"score": score},
        )
        return event.id or 0


@pytest.fixture
def pg_scratch_schema() -> Callable[[], Iterator[str]]:
    """A context manager giving a new, empty PostgreSQL schema, dropped afterwards."""
    return _scratch_schema


@contextmanager
def _scratch_schema() -> Iterator[str]:
    schema = _create_schema()
    try:
        yield schema
    finally:
        _drop_schema(schema)


def sql(engine: Engine, statement: str, **params: object) -> list[tuple[object, ...]]:
    """Run one SQL statement in its own transaction; return the rows (if any)."""
    with engine.begin() as connection:
        result = connection.execute(text(statement), params)
        return [tuple(row) for row in result] if result.returns_rows else []


@dataclass(frozen=True)
class Server:
    """A real ``fleet serve`` process."""

    base_url: str
    data_dir: Path
    process: subprocess.Popen[bytes]

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.data_dir / 'fleet.db'}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def running_server(data_dir: Path, env: dict[str, str] | None = None) -> Iterator[Server]:
    """``fedfleet fleet serve`` (as ``python -m fleet.cli serve``, which skips importing the
    other sub-apps) on a free loopback port with a fresh SQLite database; stopped by PID."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "fleet.cli", "serve", "--port", str(port), "--log-level", "warning"],
        env={**os.environ, "FEDFLEET_FLEET_DATA_DIR": str(data_dir), **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                err = process.stderr.read().decode() if process.stderr else ""
                pytest.fail(f"fleet serve exited early: {err[-2000:]}")
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("fleet serve was not ready within 90 s")
            time.sleep(0.2)
        yield Server(base, data_dir, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def fleet_server(tmp_path: Path) -> Iterator[Server]:
    """A real ``fleet serve`` process for one test."""
    with running_server(tmp_path / "fleet-data") as server:
        yield server


@pytest.fixture(scope="module")
def module_fleet_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real ``fleet serve`` process shared by the tests of one module."""
    with running_server(tmp_path_factory.mktemp("fleet-server") / "fleet-data") as server:
        yield server
