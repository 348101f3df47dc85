"""The site's append-only, authenticated audit log of every message it sends.

Each line of ``audit.jsonl`` is the canonical JSON (sorted keys, no spaces) of one entry:
the entry's fields (run, round, message type, payload size in bytes, SHA-256 of the
payload, DP parameters, ε spent), ``seq`` (0, 1, 2, ...), ``prev`` (the previous line's
hash; 64 zeros for the first), ``hash`` = SHA-256 of the canonical JSON of everything
but ``hash``/``mac``, and ``mac`` = HMAC-SHA-256 of that hash under the site's *audit
key*. The side file ``audit.head`` holds the count, the last hash and the log's genesis
id, with an HMAC under the same key. A log is a hash chain (Schneier & Kelsey 1999,
"Secure audit logs to support computer forensics") whose entries and end are
authenticated.

Threat model: someone who can edit the state folder (``site.state-dir``) but cannot
read the audit key. The key lives in its own 0600 file, ``keys.audit-key`` of
``site.toml`` (by default ``NAME.audit-key`` beside the site's private key, never in the
state folder), as JSON ``{"format", "key", "genesis", "legacy-entries"}``. We chose an
HMAC key kept apart from the log over signing heads with the site's node key: the node
key belongs to Flower's SuperNode authentication (one key, one purpose; replacing it
with ``site init --force`` must not invalidate the log), and an HMAC is ~1 µs against a
P-384 signature's ~1 ms on every message. The cost: checking the log needs the audit
key, i.e. it is done by the site (``fedfleet site audit --verify``), not by a third
party holding only a public key.

What is detected (each has a test in ``tests/edge_client/test_audit.py``): a changed,
re-hashed, removed, inserted or reordered line anywhere, the last included (the entry
MAC and the chain); lines removed from the end with a rewritten head (the head MAC); a
deleted or emptied log, with or without its head (the key file records the genesis id,
which the first authenticated entry and every head carry, so a log that began cannot
vanish); a line or head that is not in canonical form, e.g. with a duplicate JSON key.
Not detected: restoring an *older* log and head pair that the attacker saved earlier
(that needs a counter outside the state folder, e.g. the coordinator's copy); and
everything, by someone who holds the key.

Crash safety: an append writes and fsyncs the entry, then replaces the head (temporary
file, fsync, rename, fsync of the folder). A crash between the two leaves one
authenticated entry after the head; the next open seals it (writes its head) instead of
reporting tampering, and a torn last line without its newline (a crash mid-write) is
cut. Anything else is tampering and appends refuse with one line that says to run
``fedfleet site audit --verify``. The log starts on the first append (or ``site
join``): the key file is written as ``NAME.audit-key.pending`` first, renamed into place
once the first entry and its head are durable.

Logs written before heads were authenticated (no key file, no ``mac``): verify reports
them as ``legacy`` with an unauthenticated head; the first open for appending (``site
join`` or the next message) migrates them: it checks the old chain, creates the key file
with ``legacy-entries`` = the number of old lines, and authenticates the head from then
on (the old lines are covered by the chain from that point, not before).

The line and key formats, parsing and line checks are pure functions in
:mod:`edge_client.audit_format`; this module holds the files, the lock and recovery.

Appends take an exclusive ``flock`` so that nothing else writing the same log (the
threads of one ``site join``, a second process pointed at the same state folder) ever
interleaves lines.
"""

from __future__ import annotations

import fcntl
import hmac
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from edge_client.audit_format import (
    GENESIS,
    RESERVED_FIELDS,
    AuditKey,
    AuditLogError,
    canonical,
    entry_hash,
    entry_mac,
    head_mac,
    scan_lines,
    strict_json,
)
from privacy.private_files import (
    PRIVATE_FILE_MODE,
    fsync_dir,
    open_private,
    private_dir,
    write_private_bytes,
)

if TYPE_CHECKING:
    from edge_client.site_config import SiteConfig

__all__ = [
    "GENESIS",
    "AuditKey",
    "AuditLog",
    "AuditLogError",
    "VerifyResult",
    "entry_hash",
    "verify_log",
]

LOG_NAME = "audit.jsonl"
HEAD_NAME = "audit.head"
_VERIFY_HINT = "run `fedfleet site audit --verify`"


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`verify_log`: ``ok`` and, if not, the first problem found.

    ``note`` says what is fine but unusual (a legacy head, an interrupted append that
    the next start repairs). ``authenticated``: the head was checked against the site's
    audit key (False for a legacy log, which has no key yet).
    """

    ok: bool
    entries: int
    problem: str = ""
    note: str = ""
    authenticated: bool = False


Repair = Literal["none", "seal", "finish-start", "migrate"]
_REPAIRED: dict[Repair, str] = {
    "none": "",
    "seal": "sealed the last entry (its append was interrupted before its head was written)",
    "finish-start": "completed the log's interrupted first start",
    "migrate": "migrated a legacy log: its head is authenticated from now on",
}
_TORN_NOTE = "a torn last line (an interrupted append) is cut at the next start"


@dataclass(frozen=True)
class _State:
    """What the files say: a verdict and the repairs the next open makes."""

    result: VerifyResult
    repair: Repair = "none"
    hashes: tuple[str, ...] = ()  # the hash of the last two full lines (fewer if fewer)
    torn_from: int | None = None  # where a torn last line starts (None: there is none)
    key: AuditKey | None = None


def _bad(count: int, problem: str) -> _State:
    return _State(VerifyResult(False, count, problem))


class AuditLog:
    """The audit log in folder ``state_dir`` (created on first append), authenticated with
    the audit key file ``key_file`` (created with the log; must be outside ``state_dir``)."""

    def __init__(self, state_dir: Path, *, key_file: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / LOG_NAME
        self.head_path = state_dir / HEAD_NAME
        self.key_file = key_file
        self.pending_key_file = key_file.with_name(key_file.name + ".pending")

    @classmethod
    def for_site(cls, config: SiteConfig) -> AuditLog:
        """The log of a :class:`edge_client.site_config.SiteConfig`."""
        return cls(config.state_dir, key_file=config.audit_key)

    # --- appending -------------------------------------------------------------------

    def append(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Append one entry (its ``fields`` must be JSON values) and return it whole.

        Raises AuditLogError (one line) when the log fails verification.
        """
        reserved = RESERVED_FIELDS & set(fields)
        if reserved:
            raise ValueError(f"audit fields may not be named {sorted(reserved)}")
        with self._lock(exclusive=True):
            state = self._open_locked()
            key = state.key
            if key is None:  # no log yet: start one (the key file stays pending until then)
                key = AuditKey.new()
                write_private_bytes(self.pending_key_file, key.to_bytes())
            count = state.result.entries
            entry: dict[str, Any] = dict(fields)
            entry["seq"] = count
            entry["prev"] = state.hashes[-1] if state.hashes else GENESIS
            if count == key.legacy_entries:
                entry["genesis"] = key.genesis
            entry["hash"] = entry_hash(entry)
            entry["mac"] = entry_mac(key.key, entry["hash"])
            line = canonical(entry) + b"\n"  # raises on NaN: nothing is written then
            new_file = not self.path.exists()
            fd = open_private(self.path, os.O_WRONLY | os.O_APPEND)
            try:
                with memoryview(line) as rest:
                    while rest:
                        rest = rest[os.write(fd, rest) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            if new_file:
                fsync_dir(self.state_dir)
            self._write_head(key, entries=count + 1, digest=entry["hash"])
            if not self.key_file.exists():
                self._finish_key()
            return entry

    def open(self) -> VerifyResult:
        """Start, migrate or repair the log as the site starts (``site join``).

        Checks every line (an append checks only the last two, which the head and their
        MACs authenticate), seals an interrupted append, cuts a torn last line, migrates a
        legacy log; raises AuditLogError (one line) when the log fails verification.
        The result's ``note`` says what was repaired ("" if nothing).
        """
        with self._lock(exclusive=True):
            state = self._open_locked(full=True)
            notes = [
                _REPAIRED[state.repair],
                "cut a torn last line" if state.torn_from is not None else "",
            ]
            return VerifyResult(
                True,
                state.result.entries,
                note="; ".join(filter(None, notes)),
                authenticated=state.result.authenticated,
            )

    def _open_locked(self, *, full: bool = False) -> _State:
        state = self._inspect(full=full)
        if not state.result.ok:
            raise AuditLogError(f"audit log {self.path}: {state.result.problem}; {_VERIFY_HINT}")
        if state.torn_from is not None:
            fd = os.open(self.path, os.O_WRONLY)
            try:
                os.ftruncate(fd, state.torn_from)
                os.fsync(fd)
            finally:
                os.close(fd)
        key, count = state.key, state.result.entries
        if state.repair == "migrate":
            key = AuditKey.new(legacy_entries=count)
            write_private_bytes(self.pending_key_file, key.to_bytes())
        if state.repair != "none" and key is not None:
            self._write_head(key, entries=count, digest=state.hashes[-1])
        if state.repair in ("finish-start", "migrate"):
            self._finish_key()
        return _State(state.result, state.repair, state.hashes, state.torn_from, key)

    def _write_head(self, key: AuditKey, *, entries: int, digest: str) -> None:
        head = {"entries": entries, "genesis": key.genesis, "hash": digest}
        head["mac"] = head_mac(key.key, entries=entries, digest=digest, genesis=key.genesis)
        write_private_bytes(self.head_path, canonical(head) + b"\n")

    def _finish_key(self) -> None:
        os.replace(self.pending_key_file, self.key_file)
        fsync_dir(self.key_file.parent)

    def _lock(self, *, exclusive: bool) -> _Flock:
        return _Flock(self.state_dir / ".audit.lock", exclusive=exclusive)

    # --- reading ---------------------------------------------------------------------

    def entries(self) -> Iterator[dict[str, Any]]:
        """Every entry in file order (no verification; see :meth:`verify`)."""
        if not self.path.exists():
            return
        with self.path.open() as fh:
            for line in fh:
                if line.strip():
                    yield json.loads(line)

    def verify(self) -> VerifyResult:
        """Check every line, the chain, the MACs and the head; report the first problem
        (lines are 1-based)."""
        with self._lock(exclusive=False):
            return self._inspect(full=True).result

    def _load_key(self) -> tuple[AuditKey | None, bool]:
        if self.key_file.exists():
            return AuditKey.load(self.key_file), True
        if self.pending_key_file.exists():
            return AuditKey.load(self.pending_key_file), False
        return None, False

    def _inspect(self, *, full: bool = False) -> _State:
        """Read the log and head. ``full`` checks every line; otherwise only the last two
        (enough to append: they are authenticated and the head is)."""
        try:
            key, final = self._load_key()
        except AuditLogError as exc:
            return _bad(0, str(exc))
        data = self.path.read_bytes() if self.path.exists() else b""
        body, newline, torn = data.rpartition(b"\n")
        lines = body.split(b"\n") if newline else []
        count = len(lines)
        start = 0 if full else max(count - 2, 0)
        problem = scan_lines(lines, key, start=start)
        if problem:
            return _bad(count, problem)
        hashes = tuple(json.loads(raw)["hash"] for raw in lines[-2:])
        torn_from = len(body) + len(newline) if torn else None

        def ok(repair: Repair, note: str = "") -> _State:
            notes = "; ".join(filter(None, [note, _TORN_NOTE if torn else ""]))
            result = VerifyResult(True, count, note=notes, authenticated=key is not None)
            return _State(result, repair, hashes, torn_from, key)

        if key is None:
            return self._inspect_legacy(count, hashes, ok)
        if not final:  # the log's first start was interrupted: the key file is pending
            started = count == key.legacy_entries + 1
            if not (started and not torn) and count != key.legacy_entries:
                return _bad(count, f"{self.key_file.name} is pending but the log does not match")
            if count == 0:  # nothing written yet: the first append finishes the start
                return ok("none")
            note = "the log's first start was interrupted; the next start completes it"
            return ok("finish-start", note)
        if count == 0:
            return _bad(
                0,
                f"{self.path.name} is missing or empty but {self.key_file} records that this "
                f"site's log began (genesis {key.genesis[:12]}…): it was deleted — restore "
                "it from a backup",
            )
        head, head_problem = self._read_head(key)
        if head is None:
            return _bad(count, head_problem)
        recorded = head["entries"]
        if count == recorded and head["hash"] == (hashes[-1] if hashes else GENESIS):
            return ok("none")
        if count == recorded + 1 and not torn and len(hashes) == 2 and head["hash"] == hashes[0]:
            note = (
                "the last entry's append was interrupted before its head was written; "
                "the next start seals it"
            )
            return ok("seal", note)
        if count < recorded:
            return _bad(
                count,
                f"log ends after {count} entries but the authenticated head records "
                f"{recorded} (lines were removed from the end)",
            )
        if count > recorded:
            return _bad(
                count,
                f"log has {count} entries but the authenticated head records {recorded} "
                "(an older head was put back)",
            )
        return _bad(count, "the last entry does not match the authenticated head")

    def _read_head(self, key: AuditKey) -> tuple[dict[str, Any] | None, str]:
        if not self.head_path.exists():
            return None, f"{self.head_path.name} is missing"
        raw = self.head_path.read_bytes()
        try:
            head = strict_json(raw)
            if not isinstance(head, dict) or set(head) != {"entries", "genesis", "hash", "mac"}:
                raise ValueError("wrong fields")
            if canonical(head) + b"\n" != raw:
                raise ValueError("not canonical")
            entries, digest, genesis = head["entries"], head["hash"], head["genesis"]
            if isinstance(entries, bool) or not isinstance(entries, int):
                raise ValueError("entries is not a count")
            mac = head_mac(key.key, entries=entries, digest=str(digest), genesis=str(genesis))
        except ValueError:
            return None, f"{self.head_path.name} is empty or corrupt"
        if not hmac.compare_digest(mac, str(head["mac"])):
            return None, (
                f"{self.head_path.name} does not verify with the site's audit key "
                "(it was rewritten)"
            )
        if genesis != key.genesis:
            return None, f"{self.head_path.name} belongs to another log (its genesis differs)"
        return head, ""

    def _inspect_legacy(
        self, count: int, hashes: tuple[str, ...], ok: Callable[[Repair, str], _State]
    ) -> _State:
        """A log without a key file: nothing yet, or one written before authentication."""
        if count == 0 and not self.head_path.exists():
            return ok("none", "no audit log yet")
        if not self.head_path.exists():
            return _bad(count, f"{self.head_path.name} is missing")
        try:
            head = strict_json(self.head_path.read_bytes())
            recorded, digest = int(head["entries"]), str(head["hash"])
        except (ValueError, KeyError, TypeError):
            return _bad(count, f"{self.head_path.name} is empty or corrupt")
        if "mac" in head:
            return _bad(count, f"the head is authenticated but {self.key_file} is missing")
        if count == 0 and recorded == 0:  # an empty legacy log: start afresh on append
            return ok("none", "no audit log yet")
        legacy = (
            "legacy log: its head is not authenticated (written before fedfleet "
            "authenticated audit heads); the next `fedfleet site join` migrates it"
        )
        if count == recorded and digest == (hashes[-1] if hashes else GENESIS):
            return ok("migrate", legacy)
        before_last = hashes[0] if len(hashes) == 2 else GENESIS
        if count == recorded + 1 and digest == before_last:
            return ok("migrate", legacy + "; its last append was interrupted before its head")
        return _bad(
            count,
            f"log ends after {count} entries but the head records {recorded} "
            "(lines were removed from the end)",
        )


class _Flock:
    """``flock`` on the state folder's lock file (shared for reading, exclusive to append).

    A reader that cannot create the lock file (a read-only state folder) reads unlocked.
    """

    def __init__(self, path: Path, *, exclusive: bool) -> None:
        self.path, self.exclusive = path, exclusive
        self.fd: int | None = None

    def __enter__(self) -> _Flock:
        if self.exclusive:
            private_dir(self.path.parent)
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE_MODE)
        except OSError:
            if self.exclusive:
                raise
            return self
        fcntl.flock(self.fd, fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)


def verify_log(state_dir: Path, *, key_file: Path) -> VerifyResult:
    """Verify the log in ``state_dir`` with the audit key file ``key_file``."""
    return AuditLog(state_dir, key_file=key_file).verify()
