"""The site's append-only, hash-chained audit log of every message it sends.

Each line of ``audit.jsonl`` is one JSON object: the entry's fields (run, round,
message type, payload size in bytes, SHA-256 of the payload, DP parameters, ε spent),
``seq`` (0, 1, 2, ...), ``prev`` (the previous line's hash; 64 zeros for the first) and
``hash`` = SHA-256 of the canonical JSON of everything but ``hash``. A changed line
breaks its own hash; a removed or reordered line breaks ``seq``/``prev`` of the next
one. Removing the *last* lines cannot be seen from the chain alone, so a side file
``audit.head`` keeps the count and last hash (updated after every append) and
``verify`` checks the chain ends there. This is a tamper-*evident* log (Schneier &
Kelsey 1999, "Secure audit logs to support computer forensics"): it does not stop an
administrator rewriting the whole file and head, but any partial edit is detected.

Appends take an exclusive ``flock`` so the ClientApp processes of one site (Flower
starts one per message) never interleave lines.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GENESIS = "0" * 64
LOG_NAME = "audit.jsonl"
HEAD_NAME = "audit.head"


def _canonical(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def entry_hash(entry: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of an entry without its ``hash`` field."""
    return hashlib.sha256(_canonical({k: v for k, v in entry.items() if k != "hash"})).hexdigest()


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`verify_log`: ``ok`` and, if not, the first problem found."""

    ok: bool
    entries: int
    problem: str = ""


class AuditLog:
    """The audit log in folder ``state_dir`` (created on first append)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / LOG_NAME
        self.head_path = state_dir / HEAD_NAME

    def append(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Append one entry (its ``fields`` must be JSON values) and return it whole."""
        reserved = {"seq", "prev", "hash"} & set(fields)
        if reserved:
            raise ValueError(f"audit fields may not be named {sorted(reserved)}")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(self.state_dir / ".audit.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            seq, prev = self._read_head()
            entry: dict[str, Any] = dict(fields)
            entry["seq"], entry["prev"] = seq, prev
            entry["hash"] = entry_hash(entry)
            with self.path.open("ab") as fh:
                fh.write(_canonical(entry) + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
            tmp = self.head_path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"entries": seq + 1, "hash": entry["hash"]}))
            os.replace(tmp, self.head_path)
            return entry
        finally:
            fcntl.flock(lock_fd, fcntl.LOCK_UN)
            os.close(lock_fd)

    def _read_head(self) -> tuple[int, str]:
        if not self.head_path.exists():
            if self.path.exists() and self.path.stat().st_size > 0:
                raise ValueError(
                    f"{self.head_path} is missing but {self.path} has entries; "
                    "the log was tampered with — run `fedfleet site audit --verify`"
                )
            return 0, GENESIS
        head = json.loads(self.head_path.read_text())
        return int(head["entries"]), str(head["hash"])

    def entries(self) -> Iterator[dict[str, Any]]:
        """Every entry in file order (no verification; see :meth:`verify`)."""
        if not self.path.exists():
            return
        with self.path.open() as fh:
            for line in fh:
                if line.strip():
                    yield json.loads(line)

    def verify(self) -> VerifyResult:
        """Check the whole chain and the head; report the first broken line (1-based)."""
        return verify_log(self.path, self.head_path)


def verify_log(path: Path, head_path: Path) -> VerifyResult:
    """Walk the chain in ``path`` and check it ends where ``head_path`` says."""
    if not path.exists():
        if head_path.exists():
            return VerifyResult(False, 0, f"{path.name} is missing but {head_path.name} exists")
        return VerifyResult(True, 0)
    prev, count = GENESIS, 0
    with path.open() as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                return VerifyResult(False, count, f"line {lineno}: empty line")
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                return VerifyResult(False, count, f"line {lineno}: not valid JSON")
            if not isinstance(entry, dict):
                return VerifyResult(False, count, f"line {lineno}: not a JSON object")
            if entry.get("hash") != entry_hash(entry):
                return VerifyResult(False, count, f"line {lineno}: content does not match hash")
            if entry.get("seq") != count or entry.get("prev") != prev:
                return VerifyResult(
                    False, count, f"line {lineno}: chain broken (a line was removed or reordered)"
                )
            prev, count = entry["hash"], count + 1
    if not head_path.exists():
        return VerifyResult(False, count, f"{head_path.name} is missing")
    head = json.loads(head_path.read_text())
    if head.get("entries") != count or head.get("hash") != prev:
        return VerifyResult(
            False,
            count,
            f"log ends after {count} entries but the head records {head.get('entries')} "
            "(lines were removed from the end)",
        )
    return VerifyResult(True, count)
