"""The audit log's formats, pure: canonical lines, strict parsing, hashes, HMACs, the
audit key file, and the check of a run of lines (no log or head files here; their state
and recovery live in :mod:`edge_client.audit`, whose docstring gives the threat model).

A line is the canonical JSON (sorted keys, no spaces, ASCII) of an entry; ``hash`` is the
SHA-256 of the canonical JSON without ``hash``/``mac``; ``mac`` is HMAC-SHA-256 of the hash
under the site's audit key, with a label so an entry MAC can never pass as a head MAC.
Parsing refuses invalid UTF-8, duplicate keys and NaN/Infinity, and a line must be
byte-for-byte canonical, so any edit that parses to the same entry is caught as well.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GENESIS = "0" * 64  # ``prev`` of the first line
KEY_FORMAT = "fedfleet-audit-key/1"
RESERVED_FIELDS = frozenset({"seq", "prev", "hash", "mac", "genesis"})
_ENTRY_MAC_LABEL = b"fedfleet-audit-entry\x00"
_HEAD_MAC_LABEL = b"fedfleet-audit-head\x00"


class AuditLogError(ValueError):
    """The log cannot be appended to: it failed verification, or its key file is bad."""


def canonical(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=True
    ).encode()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json(raw: bytes) -> Any:
    """Parse ``raw`` refusing invalid UTF-8, duplicate keys and NaN/Infinity (ValueError)."""
    return json.loads(
        raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constants
    )


def entry_hash(entry: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of an entry without its ``hash`` and ``mac`` fields."""
    body = {k: v for k, v in entry.items() if k not in ("hash", "mac")}
    return hashlib.sha256(canonical(body)).hexdigest()


def entry_mac(key: bytes, digest: str) -> str:
    return hmac.new(key, _ENTRY_MAC_LABEL + digest.encode(), hashlib.sha256).hexdigest()


def head_mac(key: bytes, *, entries: int, digest: str, genesis: str) -> str:
    body = canonical({"entries": entries, "genesis": genesis, "hash": digest})
    return hmac.new(key, _HEAD_MAC_LABEL + body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class AuditKey:
    """The site's audit key file: HMAC key, the log's genesis id, lines before the key."""

    key: bytes
    genesis: str
    legacy_entries: int = 0

    @classmethod
    def new(cls, *, legacy_entries: int = 0) -> AuditKey:
        return cls(secrets.token_bytes(32), secrets.token_hex(32), legacy_entries)

    def to_bytes(self) -> bytes:
        doc = {
            "format": KEY_FORMAT,
            "key": self.key.hex(),
            "genesis": self.genesis,
            "legacy-entries": self.legacy_entries,
        }
        return json.dumps(doc, indent=2).encode() + b"\n"

    @classmethod
    def load(cls, path: Path) -> AuditKey:
        """Read ``path``; AuditLogError naming the file if it is not an audit key file."""
        try:
            doc = strict_json(path.read_bytes())
            if doc["format"] != KEY_FORMAT:
                raise ValueError(f"format {doc['format']!r}")
            key = bytes.fromhex(doc["key"])
            genesis, legacy = doc["genesis"], doc["legacy-entries"]
            if len(key) != 32 or len(bytes.fromhex(genesis)) != 32:
                raise ValueError("wrong key or genesis length")
            if isinstance(legacy, bool) or not isinstance(legacy, int) or legacy < 0:
                raise ValueError("legacy-entries must be a count")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise AuditLogError(
                f"audit key file {path} is corrupt ({exc}); restore it from a backup"
            ) from None
        return cls(key, genesis, legacy)


def scan_lines(lines: list[bytes], key: AuditKey | None, *, start: int) -> str:
    """Check ``lines[start:]`` (canonical JSON, hash, chain, MAC); the first problem or ""."""
    prev: Any = GENESIS
    if start:
        previous = _parse_line(lines[start - 1])
        if isinstance(previous, str):
            return f"line {start}: {previous}"
        prev = previous.get("hash")
    for seq in range(start, len(lines)):
        entry = _parse_line(lines[seq])
        if isinstance(entry, str):
            return f"line {seq + 1}: {entry}"
        problem = _check_entry(entry, seq, prev, key)
        if problem:
            return f"line {seq + 1}: {problem}"
        prev = entry["hash"]
    return ""


def _parse_line(raw: bytes) -> dict[str, Any] | str:
    """The entry on line ``raw``, or what is wrong with the line."""
    if not raw.strip():
        return "empty line"
    try:
        entry = strict_json(raw)
    except UnicodeDecodeError:
        return "not UTF-8 text"
    except ValueError as exc:
        return f"not valid JSON ({exc})"
    if not isinstance(entry, dict):
        return "not a JSON object"
    if entry.get("hash") != entry_hash(entry):
        return "content does not match hash"
    if canonical(entry) != raw:
        return "not in canonical form (it was edited)"
    return entry


def _check_entry(entry: dict[str, Any], seq: int, prev: Any, key: AuditKey | None) -> str:
    """Chain and authentication of one parsed entry at position ``seq``; "" if fine."""
    if entry.get("seq") != seq or entry.get("prev") != prev:
        return "chain broken (a line was removed or reordered)"
    if key is None:
        if "mac" in entry or "genesis" in entry:
            return "is authenticated but the site's audit key file is missing"
        return ""
    if seq < key.legacy_entries:
        return ""
    mac = entry.get("mac")
    if not isinstance(mac, str) or not hmac.compare_digest(mac, entry_mac(key.key, entry["hash"])):
        return "does not verify with the site's audit key (forged or edited)"
    if seq == key.legacy_entries and entry.get("genesis") != key.genesis:
        return "does not carry this site's genesis id (another log)"
    return ""
