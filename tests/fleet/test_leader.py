"""The leader lock (fleet/ota/leader.py) on a real PostgreSQL: one leader, a standby that
takes over when the leader's session ends, and SQLite's single process always leading."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text

from fleet.db import make_engine
from fleet.ota.leader import Leadership, leader_key

ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture
def pg_engine() -> Iterator[Engine]:
    """An engine on a database of its own (advisory locks are per database)."""
    name = f"leader_{uuid.uuid4().hex[:12]}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    engine = make_engine(f"postgresql://postgres@127.0.0.1:5432/{name}")
    yield engine
    engine.dispose()
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


def _leads_within(leadership: Leadership, clock: Clock, seconds: float) -> bool:
    """Poll as the service does (the clock moved one poll each time) for up to
    ``seconds`` of real time: PostgreSQL frees a dead session's locks when its backend
    has exited, a moment after the client's socket closed."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        clock.now += leadership.poll_s
        if leadership.check():
            return True
        time.sleep(0.05)
    return False


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_sqlite_single_process_always_leads(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    with Leadership(engine) as one, Leadership(engine) as two:
        assert one.check() and two.check()


def test_one_leader_and_the_standby_takes_over_when_it_closes(pg_engine: Engine) -> None:
    clock = Clock()
    first = Leadership(pg_engine, poll_s=1.0, clock=clock)
    second = Leadership(pg_engine, poll_s=1.0, clock=clock)
    try:
        assert first.check() is True
        assert second.check() is False
        first.close()
        assert second.check() is False  # polls at most every poll_s
        clock.now += 1.0
        assert second.check() is True
        assert second.changes == 1
    finally:
        first.close()
        second.close()


def test_leader_whose_session_dies_steps_down_and_standby_leads(pg_engine: Engine) -> None:
    clock = Clock()
    first = Leadership(pg_engine, poll_s=0.5, clock=clock)
    second = Leadership(pg_engine, poll_s=0.5, clock=clock)
    try:
        assert first.check() and not second.check()
        with pg_engine.connect() as connection:  # what kill -9 of the leader does to it
            killed = connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks "
                    "WHERE locktype = 'advisory' AND granted AND database = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database())"
                )
            ).all()
        assert killed == [(True,)]
        assert _leads_within(second, clock, 5.0)
        assert first.check() is False  # its SELECT 1 failed: no longer the leader
        clock.now += 0.5
        assert first.check() is False  # and it cannot win back a held lock
    finally:
        first.close()
        second.close()


def test_keys_are_stable_and_differ_per_schema() -> None:
    assert leader_key(None) == leader_key(None)
    assert leader_key("a") != leader_key("b")
    assert -(2**63) <= leader_key("a") < 2**63


def test_poll_must_be_positive(pg_engine: Engine) -> None:
    with pytest.raises(ValueError, match="poll_s must be positive"):
        Leadership(pg_engine, poll_s=0)


def test_the_promotion_lock_is_apart_from_the_ota_lock(pg_engine: Engine) -> None:
    # Arrange/Execute: fleet mqtt's leader and fleet serve's promotion leader on one fleet.
    assert leader_key(None, "promotions") != leader_key(None)
    with (
        Leadership(pg_engine) as ota,
        Leadership(pg_engine, role="promotions") as promotions,
        Leadership(pg_engine, role="promotions") as second,
    ):
        # Assert: each role has one leader, and the roles do not wait on each other.
        assert ota.check() and promotions.check()
        assert not second.check()
