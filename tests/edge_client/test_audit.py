"""The site's hash-chained audit log: appends verify; any edit, removal or reorder is caught."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_client.audit import GENESIS, AuditLog, entry_hash


def _fill(log: AuditLog, n: int) -> None:
    for i in range(n):
        log.append(
            {"run": 1, "round": i + 1, "type": "train", "size": 100 + i, "sha256": "ab" * 32}
        )


def _rewrite(log: AuditLog, lines: list[str]) -> None:
    log.path.write_text("\n".join(lines) + "\n")


def test_appended_entries_chain_and_verify(tmp_path: Path) -> None:
    # Prepare / Execute
    log = AuditLog(tmp_path)
    _fill(log, 3)
    entries = list(log.entries())
    # Assert
    assert [e["seq"] for e in entries] == [0, 1, 2]
    assert entries[0]["prev"] == GENESIS
    assert entries[1]["prev"] == entries[0]["hash"] == entry_hash(entries[0])
    result = log.verify()
    assert result.ok and result.entries == 3


def test_empty_log_verifies(tmp_path: Path) -> None:
    assert AuditLog(tmp_path).verify().ok


def test_changed_field_is_detected(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    _fill(log, 3)
    lines = log.path.read_text().splitlines()
    entry = json.loads(lines[1])
    entry["size"] = 1
    lines[1] = json.dumps(entry)
    _rewrite(log, lines)
    result = log.verify()
    assert not result.ok and "line 2" in result.problem and "hash" in result.problem


def test_changed_field_with_recomputed_hash_breaks_the_next_link(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    _fill(log, 3)
    lines = log.path.read_text().splitlines()
    entry = json.loads(lines[0])
    entry["size"] = 1
    entry["hash"] = entry_hash(entry)  # a careful forger re-hashes the line
    lines[0] = json.dumps(entry)
    _rewrite(log, lines)
    result = log.verify()
    assert not result.ok and "line 2" in result.problem and "chain" in result.problem


def test_removed_middle_line_is_detected(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    _fill(log, 4)
    lines = log.path.read_text().splitlines()
    _rewrite(log, lines[:1] + lines[2:])
    assert "chain broken" in log.verify().problem


def test_removed_last_line_is_detected_by_the_head(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    _fill(log, 4)
    _rewrite(log, log.path.read_text().splitlines()[:-1])
    result = log.verify()
    assert not result.ok and "removed from the end" in result.problem


def test_reordered_lines_are_detected(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    _fill(log, 3)
    lines = log.path.read_text().splitlines()
    _rewrite(log, [lines[1], lines[0], lines[2]])
    assert not log.verify().ok


def test_deleted_head_is_detected_and_blocks_appends(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    _fill(log, 2)
    log.head_path.unlink()
    assert not log.verify().ok
    with pytest.raises(ValueError, match="tampered"):
        log.append({"run": 1})


def test_reserved_field_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="may not be named"):
        AuditLog(tmp_path).append({"hash": "x"})


def test_garbage_line_is_reported(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    _fill(log, 2)
    with log.path.open("a") as fh:
        fh.write("not json\n")
    assert "line 3: not valid JSON" in log.verify().problem


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(min_value=2, max_value=8),
    data=st.data(),
)
def test_any_single_byte_change_is_detected(
    tmp_path_factory: pytest.TempPathFactory, n: int, data: st.DataObject
) -> None:
    """Property: flipping any one character of the log (keeping it valid UTF-8) is caught."""
    log = AuditLog(tmp_path_factory.mktemp("audit"))
    _fill(log, n)
    text = log.path.read_text()
    positions = [i for i, c in enumerate(text) if c not in "\n"]
    pos = data.draw(st.sampled_from(positions))
    replacement = data.draw(st.sampled_from([c for c in "0123456789abcdefxyz" if c != text[pos]]))
    log.path.write_text(text[:pos] + replacement + text[pos + 1 :])
    assert not log.verify().ok
