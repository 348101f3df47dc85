"""A short-lived in-process cache of authenticated API tokens that revocation empties at once.

Looking a bearer token up costs an ORM query per request (profiled: the largest share of
a heartbeat's CPU). :class:`TokenCache` keeps, per token hash, the :class:`Principal` it
resolved to, the token's own expiry and when it was cached. An entry is trusted only:

- for ``ttl_s`` seconds (default 30) after it was cached, and never past the token's
  ``expires_at``;
- while the **revocation epoch** is the one it was cached under. The epoch is the number
  of revoked tokens (``SELECT count(revoked_at) FROM api_tokens``): a token is only ever
  created or revoked, never un-revoked or changed, so every revocation — by this process,
  another API replica or the CLI — raises it, and the next request in every process sees a
  new epoch and empties its cache before trusting anything. That read is one indexed-free
  aggregate over a table of tens of rows, far cheaper than the token query it replaces.

In this process :meth:`TokenCache.clear` runs on revoke as well (``DELETE
/api/v1/tokens/{id}``), so a revoked token is refused at once even before the epoch is read.
A token's ``expires_at`` edited directly in the database (no API does that) is seen
within ``ttl_s``. The cache holds hashes, never secrets.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from sqlalchemy import Connection, func, select
from sqlalchemy.orm import Session

from fleet.models.auth import ApiToken

P = TypeVar("P")

#: Seconds a cached token is trusted before it is looked up again.
DEFAULT_TTL_S = 30.0
#: Entries kept at most (a fleet has tens of tokens; the bound stops a flood of random ones).
MAX_ENTRIES = 1024

_EPOCH = select(func.count(ApiToken.revoked_at))  # type: ignore[arg-type]
#: The epoch as a column of another statement (the lean heartbeat's UPDATE returns it:
#: one round trip less than reading it on its own).
EPOCH_COLUMN = _EPOCH.scalar_subquery()


def revocation_epoch(db: Session | Connection) -> int:
    """How many tokens have ever been revoked (it changes whenever one is), read in the
    transaction of ``db`` (a session, or the connection of a lean route)."""
    # Through the connection: the ORM execute path costs more than the query.
    connection = db.connection() if isinstance(db, Session) else db
    return int(connection.execute(_EPOCH).scalar_one())


@dataclass(frozen=True, slots=True)
class _Entry(Generic[P]):
    principal: P
    expires_at: datetime | None
    cached_at: float


class TokenCache(Generic[P]):
    """Principals by token hash, valid for one revocation epoch and ``ttl_s`` seconds."""

    def __init__(
        self, *, ttl_s: float = DEFAULT_TTL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if ttl_s < 0:
            raise ValueError(f"ttl_s must be zero (no caching) or positive, got {ttl_s}")
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[str, _Entry[P]] = {}
        self._epoch: int | None = None
        self._lock = threading.Lock()

    def get(self, token_hash: str, *, epoch: int, now: datetime) -> P | None:
        """The cached principal, or None (unknown, too old, expired, or a new epoch)."""
        with self._lock:
            if epoch != self._epoch:
                self._entries.clear()
                self._epoch = epoch
                return None
            entry = self._entries.get(token_hash)
        if entry is None:
            return None
        if self._clock() - entry.cached_at > self.ttl_s or (
            entry.expires_at is not None and entry.expires_at <= now
        ):
            return None
        return entry.principal

    def peek(self, token_hash: str, *, now: datetime) -> P | None:
        """The cached principal without reading the epoch: a hint, not a verdict.

        :class:`fleet.auth_gate.AuthGate` uses it to let a request through to the route,
        whose dependency then checks the epoch in the request's own transaction (one
        connection per request instead of two). After :meth:`clear` it finds nothing.
        """
        with self._lock:
            entry = self._entries.get(token_hash) if self._epoch is not None else None
        if entry is None or self._clock() - entry.cached_at > self.ttl_s:
            return None
        if entry.expires_at is not None and entry.expires_at <= now:
            return None
        return entry.principal

    def put(
        self, token_hash: str, principal: P, *, epoch: int, expires_at: datetime | None
    ) -> None:
        """Remember ``principal`` for ``token_hash`` (looked up under ``epoch``)."""
        if self.ttl_s == 0:
            return
        with self._lock:
            if epoch != self._epoch:
                self._entries.clear()
                self._epoch = epoch
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[token_hash] = _Entry(principal, expires_at, self._clock())

    def clear(self) -> None:
        """Forget everything (a token was revoked here)."""
        with self._lock:
            self._entries.clear()
            self._epoch = None

    def __len__(self) -> int:
        return len(self._entries)
