"""Which ``fleet mqtt`` process is the leader: a PostgreSQL session advisory lock.

Several ``fedfleet fleet mqtt`` processes may run on one PostgreSQL database (all of them
ingest device messages over shared subscriptions); what must happen once — the rollout
controller and the drift checks — runs only in the **leader**, the process that holds the
session advisory lock :func:`leader_key` on a connection of its own.

- A standby tries ``pg_try_advisory_lock`` every ``poll_s`` seconds (never blocks), so
  when the leader dies (``kill -9``, a crash, a lost host) PostgreSQL drops its session,
  the lock with it, and a standby is the leader within about ``poll_s``.
- The leader checks every ``poll_s`` that its connection is alive (``SELECT 1``); a
  dead connection means the lock may already be someone else's: it steps down at once.
- SQLite is the single-process embedded database: the one process is always the leader.

The lock is not what keeps a wave from being sent twice; it keeps the work in one place.
A leader that lost its connection but not yet noticed may overlap a new leader for up
to ``poll_s``: the controller is safe under that on its own (it locks the rollout row,
and records every send before it publishes: :mod:`fleet.ota.controller`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from fleet.db import is_sqlite

log = logging.getLogger(__name__)

POLL_S = 1.0


def leader_key(schema: str | None = None, role: str = "ota") -> int:
    """The advisory lock's 64-bit key: one leader per fleet (per PostgreSQL schema) and
    per ``role`` (``ota``: ``fleet mqtt``'s controller and drift checks; ``promotions``:
    ``fleet serve``'s promotion controller), distinct from the migrations' lock
    (:mod:`fleet.migrate`)."""
    digest = hashlib.blake2b(f"fedfleet.{role}.leader:{schema or ''}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


class Leadership:
    """Call :meth:`check` before work that must run once; it says whether this process
    leads now. Cheap between polls (no query). :meth:`close` gives the lock up."""

    def __init__(
        self,
        engine: Engine,
        *,
        schema: str | None = None,
        role: str = "ota",
        poll_s: float = POLL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if poll_s <= 0:
            raise ValueError(f"poll_s must be positive, got {poll_s}")
        self._single = is_sqlite(engine)
        # Its own engine without a pool: the lock lives and dies with one connection
        # that no request ever borrows (a pooled one could be closed or reset under it).
        self._engine = None if self._single else create_engine(engine.url, poolclass=NullPool)
        self.key = leader_key(schema, role)
        self.poll_s = poll_s
        self._clock = clock
        self._connection: Connection | None = None
        self._leader = self._single
        self._next = 0.0
        self.changes = 0  # times leadership was won or lost (tests, logs)

    @property
    def is_leader(self) -> bool:
        """Whether this process led at the last :meth:`check`."""
        return self._leader

    def check(self) -> bool:
        """Whether this process is the leader now: polls the lock (standby) or the
        connection (leader) at most every ``poll_s``; never raises on a database error
        (that is a standby, retrying)."""
        if self._single:
            return True
        now = self._clock()
        if now < self._next:
            return self._leader
        self._next = now + self.poll_s
        try:
            leading = self._poll()
        except SQLAlchemyError as err:
            log.warning("leader lock: %s", str(err).splitlines()[0][:200])
            self._drop()
            leading = False
        if leading != self._leader:
            self.changes += 1
            log.warning("leader lock %s", "won: this process leads" if leading else "lost")
        self._leader = leading
        return leading

    def _poll(self) -> bool:
        if self._connection is None or self._connection.closed:
            assert self._engine is not None  # noqa: S101 - PostgreSQL only, set above
            self._connection = self._engine.connect().execution_options(
                isolation_level="AUTOCOMMIT"
            )
        if self._leader:
            self._connection.execute(text("SELECT 1"))  # the session (so the lock) lives
            return True
        got = self._connection.execute(
            text("SELECT pg_try_advisory_lock(:key)"), {"key": self.key}
        ).scalar()
        return bool(got)

    def _drop(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(SQLAlchemyError):  # already gone
                self._connection.invalidate()
        self._connection = None

    def close(self) -> None:
        """Give the lock up (closing the session releases it) and forget the connection."""
        if self._connection is not None and not self._connection.closed:
            with contextlib.suppress(SQLAlchemyError):  # already gone
                if self._leader:  # at once: a closed session's locks go when it ends
                    self._connection.execute(
                        text("SELECT pg_advisory_unlock(:key)"), {"key": self.key}
                    )
                self._connection.close()
        self._connection = None
        if not self._single:
            self._leader = False
        if self._engine is not None:
            self._engine.dispose()

    def __enter__(self) -> Leadership:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
