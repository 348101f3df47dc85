"""A pooled PostgreSQL connection the server closed is replaced at checkout, with no
``SELECT 1`` per checkout (fleet/db.py: the pool's pre-ping is off)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import Engine, event, text

from fleet.db import make_engine

pytestmark = pytest.mark.postgres
PG_DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres connect_timeout=5"
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def one_connection_engine() -> Iterator[Engine]:
    engine = make_engine(PG_URL, pool_size=1)
    try:
        yield engine
    finally:
        engine.dispose()


def _backend_pid(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(pid: int) -> None:
    """What a database restart does to a pooled connection: the server ends it."""
    with psycopg.connect(PG_DSN, autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
        deadline = time.monotonic() + 5.0
        while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
            assert time.monotonic() < deadline, f"backend {pid} still there after 5 s"
            time.sleep(0.01)


def test_next_use_after_the_server_ended_a_pooled_connection_works(
    one_connection_engine: Engine,
) -> None:
    first = _backend_pid(one_connection_engine)
    assert _backend_pid(one_connection_engine) == first  # pooled: the same session
    _terminate(first)
    second = _backend_pid(one_connection_engine)  # no error: replaced at checkout
    assert second != first
    assert _backend_pid(one_connection_engine) == second


def test_a_live_pooled_connection_costs_no_statement_at_checkout(
    one_connection_engine: Engine,
) -> None:
    _backend_pid(one_connection_engine)  # the pool holds one connection now
    statements: list[str] = []
    event.listen(
        one_connection_engine,
        "before_cursor_execute",
        lambda _c, _cur, statement, *_a: statements.append(statement),
    )
    _backend_pid(one_connection_engine)
    assert statements == ["SELECT pg_backend_pid()"]  # no pre-ping SELECT 1
