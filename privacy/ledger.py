"""A site's persistent privacy ledger: every DP training, and every refusal, in SQLite.

One row per training request at the site: task, run, round, the mechanism (sample rate,
noise multiplier, steps), the accountant, δ, the budget in force, ε before and after,
and a status:

* ``reserved`` — granted by :meth:`PrivacyLedger.check_and_reserve` BEFORE training;
  counts against the budget from that moment, so two trainings racing in two processes
  can never overspend together;
* ``completed`` — the training finished and its update may have left the site;
* ``aborted`` — the training failed before anything was released: no longer counted;
* ``refused`` — the request would have exceeded the budget; nothing was trained.

A reservation left behind by a process that died mid-training stays ``reserved`` and keeps
counting: the ledger cannot know whether the update left, so it assumes it did.

Concurrency and durability: the decision runs inside ``BEGIN IMMEDIATE`` (SQLite's write
lock, taken before the read) so concurrent processes serialise; the file is in WAL mode
with ``synchronous=FULL``, so a committed row survives ``kill -9`` and power loss.

ε of a task is the composition of all its counted rows (``privacy.dp.accounting``),
computed at the budget's δ by the site's accountant.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from privacy.dp.accounting import Accountant, Mechanism, check_accountant, epsilon
from privacy.private_files import create_private_file

Status = Literal["reserved", "completed", "aborted", "refused"]
COUNTED: tuple[Status, ...] = ("reserved", "completed")
LEDGER_FILE = "privacy_ledger.sqlite"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trainings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    site TEXT NOT NULL,
    task TEXT NOT NULL,
    run_id TEXT NOT NULL,
    server_round INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('reserved', 'completed', 'aborted', 'refused')),
    sample_rate REAL NOT NULL,
    noise_multiplier REAL NOT NULL,
    steps INTEGER NOT NULL,
    accountant TEXT NOT NULL,
    delta REAL NOT NULL,
    budget_epsilon REAL,
    epsilon_before REAL NOT NULL,
    epsilon_after REAL NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    pid INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS trainings_site_task ON trainings (site, task, status);
"""


@dataclass(frozen=True)
class Budget:
    """A site's privacy budget for one task: ε (``None`` = record only, no cap) at δ."""

    epsilon: float | None
    delta: float

    def __post_init__(self) -> None:
        if self.epsilon is not None and not self.epsilon > 0:
            raise ValueError(f"budget epsilon {self.epsilon} must be > 0")
        if not 0.0 < self.delta < 1.0:
            raise ValueError(f"budget delta {self.delta} must be in (0, 1)")


def verdict(
    history: list[Mechanism],
    requested: list[Mechanism],
    *,
    budget: Budget,
    accountant: Accountant = "rdp",
) -> tuple[bool, float, float]:
    """The ledger's one budget rule, pure: ``(granted, ε before, ε after)`` of adding the
    ``requested`` trainings to a task's counted ``history``; granted when ε after stays
    within ``budget`` (always without a cap). :meth:`PrivacyLedger.check_and_reserve`
    decides every training with it; the budget pre-flight (:meth:`PrivacyLedger.preview`)
    asks it about a whole run's trainings, so both give the same answer."""
    before = epsilon(history, delta=budget.delta, accountant=accountant)
    after = epsilon([*history, *requested], delta=budget.delta, accountant=accountant)
    return budget.epsilon is None or after <= budget.epsilon, before, after


@dataclass(frozen=True)
class LedgerEntry:
    """One row of the ledger."""

    id: int
    site: str
    task: str
    run_id: str
    server_round: int
    status: Status
    sample_rate: float
    noise_multiplier: float
    steps: int
    accountant: str
    delta: float
    budget_epsilon: float | None
    epsilon_before: float
    epsilon_after: float
    reason: str
    pid: int
    created_at: str
    updated_at: str

    @property
    def mechanism(self) -> Mechanism:
        return Mechanism(self.sample_rate, self.noise_multiplier, self.steps)


@dataclass(frozen=True)
class Decision:
    """The answer to a training request. ``epsilon_after`` is the task's ε including the
    request (what it would have been, when refused)."""

    granted: bool
    entry_id: int
    epsilon_before: float
    epsilon_after: float
    budget: Budget
    reason: str

    @property
    def remaining(self) -> float | None:
        """Budget left after this decision (``None`` without a cap)."""
        if self.budget.epsilon is None:
            return None
        spent = self.epsilon_after if self.granted else self.epsilon_before
        return max(0.0, self.budget.epsilon - spent)


@dataclass(frozen=True)
class TaskSummary:
    """Spent and remaining budget of one task (``fedfleet site budget``)."""

    task: str
    completed: int
    in_flight: int
    refused: int
    delta: float
    accountant: str
    epsilon_rdp: float
    epsilon_prv: float | None
    budget_epsilon: float | None

    @property
    def spent(self) -> float:
        """ε spent by the accountant the site's budget decisions use."""
        if self.accountant == "prv" and self.epsilon_prv is not None:
            return self.epsilon_prv
        return self.epsilon_rdp

    @property
    def remaining(self) -> float | None:
        if self.budget_epsilon is None:
            return None
        return max(0.0, self.budget_epsilon - self.spent)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class PrivacyLedger:
    """The ledger of one site in ``path`` (many simulated sites may share one file:
    rows are keyed by ``site``)."""

    def __init__(self, path: Path | str, *, site: str = "site", busy_timeout_s: float = 60.0):
        if not site:
            raise ValueError("site name must not be empty")
        self.path = Path(path)
        self.site = site
        self._timeout = busy_timeout_s
        create_private_file(self.path)  # 0600 (folder 0700) before SQLite opens it
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("BEGIN IMMEDIATE")
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            elif int(row[0]) != SCHEMA_VERSION:
                conn.execute("ROLLBACK")
                raise ValueError(
                    f"privacy ledger {self.path} has schema version {row[0]}, this fedfleet "
                    f"reads version {SCHEMA_VERSION}; upgrade fedfleet"
                )
            conn.execute("COMMIT")

    @classmethod
    def in_state_dir(cls, state_dir: Path | str, *, site: str = "site") -> PrivacyLedger:
        """The ledger file ``privacy_ledger.sqlite`` in a site's state folder."""
        return cls(Path(state_dir) / LEDGER_FILE, site=site)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(f"PRAGMA busy_timeout={int(self._timeout * 1000)}")
            yield conn
        finally:
            conn.close()

    @staticmethod
    def sites_in(path: Path | str) -> list[str]:
        """The site names with rows in the ledger file ``path`` (read-only)."""
        uri = Path(path).resolve().as_uri() + "?mode=ro"
        conn = sqlite3.connect(uri, uri=True)
        try:
            rows = conn.execute("SELECT DISTINCT site FROM trainings ORDER BY site").fetchall()
        finally:
            conn.close()
        return [str(r[0]) for r in rows]

    # -- decisions ------------------------------------------------------------------
    def check_and_reserve(
        self,
        *,
        task: str,
        run_id: str,
        server_round: int,
        mechanism: Mechanism,
        budget: Budget,
        accountant: Accountant = "rdp",
    ) -> Decision:
        """Grant ``mechanism`` (and reserve it) if the task's ε stays within ``budget``;
        otherwise record the refusal. Atomic across processes."""
        check_accountant(accountant)
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                history = self._counted(conn, task)
                granted, before, after = verdict(
                    history, [mechanism], budget=budget, accountant=accountant
                )
                if granted:
                    reason = ""
                else:
                    reason = (
                        f"privacy budget of task {task!r} at site {self.site!r} would be "
                        f"exceeded: ε would reach {after:.4g} > budget {budget.epsilon:g} "
                        f"(δ={budget.delta:g}, spent {before:.4g})"
                    )
                now = _now()
                cursor = conn.execute(
                    "INSERT INTO trainings (site, task, run_id, server_round, status, "
                    "sample_rate, noise_multiplier, steps, accountant, delta, budget_epsilon, "
                    "epsilon_before, epsilon_after, reason, pid, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        self.site,
                        task,
                        str(run_id),
                        int(server_round),
                        "reserved" if granted else "refused",
                        mechanism.sample_rate,
                        mechanism.noise_multiplier,
                        mechanism.steps,
                        accountant,
                        budget.delta,
                        budget.epsilon,
                        before,
                        after,
                        reason,
                        os.getpid(),
                        now,
                        now,
                    ),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        entry_id = int(cursor.lastrowid or 0)
        return Decision(
            granted=granted,
            entry_id=entry_id,
            epsilon_before=before,
            epsilon_after=after,
            budget=budget,
            reason=reason,
        )

    def preview(
        self,
        *,
        task: str,
        requested: list[Mechanism],
        budget: Budget,
        accountant: Accountant = "rdp",
    ) -> bool:
        """Whether ``requested`` trainings of ``task`` would all be granted now, one after
        the other (ε only grows, so: whether all of them together stay within ``budget``).
        Read-only: writes no row, reserves nothing."""
        check_accountant(accountant)
        granted, _before, _after = verdict(
            self.history(task), requested, budget=budget, accountant=accountant
        )
        return granted

    def commit(self, entry_id: int) -> None:
        """Mark a reservation as a completed training."""
        self._finish(entry_id, "completed", "")

    def abort(self, entry_id: int, *, reason: str) -> None:
        """Mark a reservation as aborted: training failed and nothing was released."""
        self._finish(entry_id, "aborted", reason)

    def _finish(self, entry_id: int, status: Status, reason: str) -> None:
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                updated = conn.execute(
                    "UPDATE trainings SET status = ?, reason = ?, updated_at = ? "
                    "WHERE id = ? AND site = ? AND status = 'reserved'",
                    (status, reason, _now(), entry_id, self.site),
                ).rowcount
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        if updated != 1:
            raise ValueError(
                f"ledger entry {entry_id} of site {self.site!r} is not a pending reservation"
            )

    # -- reading --------------------------------------------------------------------
    def _counted(self, conn: sqlite3.Connection, task: str) -> list[Mechanism]:
        rows = conn.execute(
            "SELECT sample_rate, noise_multiplier, steps FROM trainings "
            "WHERE site = ? AND task = ? AND status IN ('reserved', 'completed') ORDER BY id",
            (self.site, task),
        ).fetchall()
        return [Mechanism(float(q), float(z), int(n)) for q, z, n in rows]

    def history(self, task: str) -> list[Mechanism]:
        """The mechanisms that count against ``task``'s budget, oldest first."""
        with self._connect() as conn:
            return self._counted(conn, task)

    def spent(self, *, task: str, delta: float, accountant: Accountant = "rdp") -> float:
        """ε spent on ``task`` so far at ``delta``."""
        return epsilon(self.history(task), delta=delta, accountant=accountant)

    def entries(self, *, task: str | None = None) -> list[LedgerEntry]:
        """Every row of this site (optionally of one task), oldest first."""
        query = "SELECT * FROM trainings WHERE site = ?"
        args: tuple[object, ...] = (self.site,)
        if task is not None:
            query += " AND task = ?"
            args = (self.site, task)
        with self._connect() as conn:
            conn.row_factory = sqlite3.Row
            rows = conn.execute(query + " ORDER BY id", args).fetchall()
        return [LedgerEntry(**dict(row)) for row in rows]

    def tasks(self) -> list[str]:
        """Tasks with at least one row at this site."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT DISTINCT task FROM trainings WHERE site = ? ORDER BY task", (self.site,)
            ).fetchall()
        return [str(r[0]) for r in rows]

    def summary(self, *, budget: Budget | None = None, with_prv: bool = True) -> list[TaskSummary]:
        """Spent/remaining per task. Without ``budget``, each task's latest recorded
        budget (and its δ) is used."""
        out = []
        for task in self.tasks():
            rows = self.entries(task=task)
            latest = rows[-1]
            delta = budget.delta if budget is not None else latest.delta
            cap = budget.epsilon if budget is not None else latest.budget_epsilon
            history = [r.mechanism for r in rows if r.status in COUNTED]
            out.append(
                TaskSummary(
                    task=task,
                    completed=sum(r.status == "completed" for r in rows),
                    in_flight=sum(r.status == "reserved" for r in rows),
                    refused=sum(r.status == "refused" for r in rows),
                    delta=delta,
                    accountant=latest.accountant,
                    epsilon_rdp=epsilon(history, delta=delta, accountant="rdp"),
                    epsilon_prv=(
                        epsilon(history, delta=delta, accountant="prv")
                        if with_prv or latest.accountant == "prv"
                        else None
                    ),
                    budget_epsilon=cap,
                )
            )
        return out
