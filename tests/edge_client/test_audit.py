"""The site's audit log: appends verify; every edit, removal, reorder, forged head,
deletion or duplicate key is caught; a crash (kill -9) is repaired without a false alarm."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from edge_client.audit import GENESIS, AuditKey, AuditLog, AuditLogError, entry_hash
from edge_client.site_cli import app as site_app
from edge_client.site_config import SiteConfig

sys.path.insert(0, str(Path(__file__).parent))
from site_testkit import make_site

ROOT = Path(__file__).resolve().parents[2]


def _log(folder: Path) -> AuditLog:
    return AuditLog(folder / "state", key_file=folder / "keys" / "site.audit-key")


@pytest.fixture
def log(tmp_path: Path) -> AuditLog:
    return _log(tmp_path)


def _fill(log: AuditLog, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        log.append(
            {"run": 1, "round": i + 1, "type": "train", "size": 100 + i, "sha256": "ab" * 32}
        )


def _lines(log: AuditLog) -> list[str]:
    return log.path.read_text().splitlines()


def _rewrite(log: AuditLog, lines: list[str]) -> None:
    log.path.write_text("".join(line + "\n" for line in lines))


def _canonical(obj: dict[str, object]) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _forge_head(log: AuditLog, *, entries: int, last_hash: str) -> None:
    """What someone without the key can do to the head: new count and hash, old MAC."""
    head = json.loads(log.head_path.read_text())
    head["entries"], head["hash"] = entries, last_hash
    log.head_path.write_text(_canonical(head) + "\n")


def _rehash_from(lines: list[str], index: int, edit: dict[str, object]) -> list[str]:
    """A careful forger: edit line ``index`` and re-hash it and every later line."""
    out = lines[:index]
    prev = json.loads(lines[index - 1])["hash"] if index else GENESIS
    for i, line in enumerate(lines[index:], start=index):
        entry = json.loads(line)
        if i == index:
            entry.update(edit)
        entry["prev"] = prev
        entry["hash"] = entry_hash(entry)
        prev = entry["hash"]
        out.append(_canonical(entry))
    return out


# --- appending and reading ----------------------------------------------------------------


def test_appended_entries_chain_authenticate_and_verify(log: AuditLog) -> None:
    # Execute
    _fill(log, 3)
    entries = list(log.entries())
    # Assert
    key = AuditKey.load(log.key_file)
    assert [e["seq"] for e in entries] == [0, 1, 2]
    assert entries[0]["prev"] == GENESIS and entries[0]["genesis"] == key.genesis
    assert "genesis" not in entries[1]
    assert entries[1]["prev"] == entries[0]["hash"] == entry_hash(entries[0])
    assert all(len(e["mac"]) == 64 for e in entries)
    result = log.verify()
    assert result.ok and result.entries == 3 and result.note == ""


def test_no_log_yet_verifies_and_has_no_key_file(log: AuditLog) -> None:
    result = log.verify()
    assert result.ok and result.entries == 0
    assert not log.key_file.exists()


def test_reserved_field_names_are_refused(log: AuditLog) -> None:
    for name in ("hash", "mac", "genesis", "seq"):
        with pytest.raises(ValueError, match="may not be named"):
            log.append({name: "x"})


def test_audit_files_are_private(log: AuditLog) -> None:
    """Issue 14 item 5: the state folder 0700, log, head and key file 0600."""
    old = os.umask(0o022)
    try:
        _fill(log, 1)
    finally:
        os.umask(old)
    assert stat.S_IMODE(log.state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(log.key_file.parent.stat().st_mode) == 0o700
    for path in (log.path, log.head_path, log.key_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


# --- attacks: each one is detected --------------------------------------------------------


def test_changed_field_is_detected(log: AuditLog) -> None:
    _fill(log, 3)
    lines = _lines(log)
    entry = json.loads(lines[1])
    entry["size"] = 1
    lines[1] = _canonical(entry)
    _rewrite(log, lines)
    result = log.verify()
    assert not result.ok and "line 2" in result.problem and "hash" in result.problem


@pytest.mark.parametrize("index", [0, 1, 3])  # first, middle, last
def test_edit_and_rehash_of_any_line_with_a_fixed_head_is_detected(
    log: AuditLog, index: int
) -> None:
    # Prepare: the forger re-hashes the edited line and the rest of the chain, then
    # rewrites the head to the new last hash (it cannot recompute the MACs)
    _fill(log, 4)
    lines = _rehash_from(_lines(log), index, {"size": 1})
    _rewrite(log, lines)
    _forge_head(log, entries=4, last_hash=json.loads(lines[-1])["hash"])
    # Execute
    result = log.verify()
    # Assert
    assert not result.ok
    assert f"line {index + 1}" in result.problem and "audit key" in result.problem


def test_tail_truncation_with_a_rewritten_head_is_detected(log: AuditLog) -> None:
    _fill(log, 4)
    lines = _lines(log)[:-1]
    _rewrite(log, lines)
    _forge_head(log, entries=3, last_hash=json.loads(lines[-1])["hash"])
    result = log.verify()
    assert not result.ok and "does not verify with the site's audit key" in result.problem


def test_removed_last_line_is_detected_by_the_head(log: AuditLog) -> None:
    _fill(log, 4)
    _rewrite(log, _lines(log)[:-1])
    result = log.verify()
    assert not result.ok and "removed from the end" in result.problem


def test_removed_middle_line_is_detected(log: AuditLog) -> None:
    _fill(log, 4)
    lines = _lines(log)
    _rewrite(log, lines[:1] + lines[2:])
    assert "chain broken" in log.verify().problem


def test_reordered_lines_are_detected(log: AuditLog) -> None:
    _fill(log, 3)
    lines = _lines(log)
    _rewrite(log, [lines[1], lines[0], lines[2]])
    result = log.verify()
    assert not result.ok and "chain broken" in result.problem


@pytest.mark.parametrize("what", ["both", "emptied"])
def test_deleted_log_is_detected_by_the_genesis_and_blocks_appends(
    log: AuditLog, what: str
) -> None:
    # Prepare: delete log and head (`ok: 0 entries` before), or empty the log
    _fill(log, 2)
    if what == "both":
        log.path.unlink()
        log.head_path.unlink()
    else:
        log.path.write_bytes(b"")
    # Execute
    result = log.verify()
    # Assert
    assert not result.ok and "deleted" in result.problem and "genesis" in result.problem
    with pytest.raises(AuditLogError, match="was deleted"):
        log.append({"run": 1})


def test_duplicate_json_key_is_detected(log: AuditLog) -> None:
    # Prepare: a reader taking the first "size" sees 1, the hash covers the last one
    _fill(log, 2)
    lines = _lines(log)
    lines[0] = '{"size":1,' + lines[0][1:]
    _rewrite(log, lines)
    result = log.verify()
    assert not result.ok and "line 1" in result.problem and "duplicate key" in result.problem


def test_appended_entry_without_the_key_is_detected(log: AuditLog) -> None:
    _fill(log, 2)
    last = json.loads(_lines(log)[-1])
    forged = {"run": 1, "kind": "reply", "seq": 2, "prev": last["hash"], "mac": "0" * 64}
    forged["hash"] = entry_hash(forged)
    _rewrite(log, [*_lines(log), _canonical(forged)])
    result = log.verify()
    assert not result.ok and "line 3" in result.problem and "audit key" in result.problem


@pytest.mark.parametrize("content", [b"", b"{", b'{"entries": 2}\n'])
def test_empty_or_corrupt_head_is_tampering_and_appends_refuse_in_one_line(
    log: AuditLog, content: bytes
) -> None:
    _fill(log, 2)
    log.head_path.write_bytes(content)
    result = log.verify()
    assert not result.ok and "audit.head is empty or corrupt" in result.problem
    with pytest.raises(AuditLogError) as excinfo:
        log.append({"run": 1})
    assert not isinstance(excinfo.value, json.JSONDecodeError)
    assert "\n" not in str(excinfo.value) and "fedfleet site audit --verify" in str(excinfo.value)


def test_deleted_head_is_detected_and_blocks_appends(log: AuditLog) -> None:
    _fill(log, 2)
    log.head_path.unlink()
    assert "audit.head is missing" in log.verify().problem
    with pytest.raises(AuditLogError, match="audit.head is missing"):
        log.append({"run": 1})


def test_head_of_another_site_is_detected(tmp_path: Path) -> None:
    ours, theirs = _log(tmp_path / "a"), _log(tmp_path / "b")
    _fill(ours, 2)
    _fill(theirs, 2)
    ours.head_path.write_bytes(theirs.head_path.read_bytes())
    assert not ours.verify().ok


def test_garbage_line_is_reported(log: AuditLog) -> None:
    _fill(log, 2)
    with log.path.open("a") as fh:
        fh.write("not json\n")
    assert "line 3: not valid JSON" in log.verify().problem


@settings(max_examples=60, deadline=None)
@given(n=st.integers(min_value=2, max_value=6), data=st.data())
def test_any_single_byte_change_is_detected(
    tmp_path_factory: pytest.TempPathFactory, n: int, data: st.DataObject
) -> None:
    """Property: one changed byte (any value), one deleted line or two swapped lines of a
    valid log is always caught by verify, and the next start refuses."""
    # Prepare
    log = _log(tmp_path_factory.mktemp("audit"))
    _fill(log, n)
    raw = log.path.read_bytes()
    lines = raw.splitlines(keepends=True)
    kind = data.draw(st.sampled_from(["byte", "delete", "swap"]))
    if kind == "byte":
        pos = data.draw(st.integers(0, len(raw) - 1))
        byte = data.draw(st.integers(0, 255).filter(lambda b: b != raw[pos]))
        tampered = raw[:pos] + bytes([byte]) + raw[pos + 1 :]
    elif kind == "delete":
        drop = data.draw(st.integers(0, n - 1))
        tampered = b"".join(lines[:drop] + lines[drop + 1 :])
    else:
        i, j = data.draw(st.lists(st.integers(0, n - 1), min_size=2, max_size=2, unique=True))
        lines[i], lines[j] = lines[j], lines[i]
        tampered = b"".join(lines)
    # Execute
    log.path.write_bytes(tampered)
    # Assert
    assert not log.verify().ok, kind
    with pytest.raises(AuditLogError):
        log.open()


# --- crashes: repaired at the next start, no false alarm, no fork ------------------------


def test_crash_between_entry_and_head_is_sealed_at_the_next_start(log: AuditLog) -> None:
    # Prepare: the state a crash after the entry's fsync and before the head leaves
    _fill(log, 3)
    head_before = log.head_path.read_bytes()
    _fill(log, 1, start=3)
    log.head_path.write_bytes(head_before)
    # Execute / Assert: no alarm, a note; the next start seals; appends continue the chain
    waiting = log.verify()
    assert waiting.ok and waiting.entries == 4 and "interrupted" in waiting.note
    opened = log.open()
    assert opened.entries == 4 and "sealed" in opened.note
    assert log.verify() == type(waiting)(True, 4, authenticated=True)
    _fill(log, 1, start=4)
    entries = list(log.entries())
    assert [e["seq"] for e in entries] == [0, 1, 2, 3, 4]
    assert entries[4]["prev"] == entries[3]["hash"]
    assert log.verify().ok


def test_torn_last_line_is_cut_at_the_next_start(log: AuditLog) -> None:
    _fill(log, 2)
    intact = log.path.read_bytes()
    with log.path.open("ab") as fh:
        fh.write(b'{"run":1,"seq":2,"pr')
    assert "torn" in log.verify().note
    log.open()
    assert log.path.read_bytes() == intact and log.verify().note == ""


def test_torn_first_line_of_a_new_log_is_cut_and_the_log_starts(log: AuditLog) -> None:
    # Prepare: killed while writing the very first entry (the key file still pending)
    log.state_dir.mkdir()
    log.key_file.parent.mkdir()
    log.pending_key_file.write_bytes(AuditKey.new().to_bytes())
    log.path.write_bytes(b'{"genesis":"ab')
    # Execute
    waiting = log.verify()
    _fill(log, 1)
    # Assert
    assert waiting.ok and "torn" in waiting.note
    assert log.key_file.exists() and not log.pending_key_file.exists()
    assert log.verify() == type(waiting)(True, 1, authenticated=True)


def test_interrupted_first_start_is_completed(log: AuditLog) -> None:
    # Prepare: the first entry was written but the key file is still pending
    _fill(log, 1)
    log.key_file.rename(log.pending_key_file)
    log.head_path.unlink()
    # Execute
    assert log.verify().ok
    log.open()
    # Assert
    assert log.key_file.exists() and not log.pending_key_file.exists()
    assert log.verify() == type(log.verify())(True, 1, authenticated=True)


_APPENDER = """
import sys
from pathlib import Path
from edge_client.audit import AuditLog
log = AuditLog(Path(sys.argv[1]) / "state", key_file=Path(sys.argv[1]) / "keys" / "site.audit-key")
i = 0
while True:
    log.append({"run": 7, "round": i, "type": "train", "size": i, "reason": "x" * (i % 5000)})
    i += 1
"""


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_minus_9_mid_append_recovers_without_alarm_or_fork(tmp_path: Path, seed: int) -> None:
    """A real process appending in a loop, SIGKILLed (by its PID) at a random moment."""
    # Prepare
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", _APPENDER, str(tmp_path)], env=env)
    log = _log(tmp_path)
    try:
        deadline = time.monotonic() + 60
        while not (log.path.exists() and log.path.stat().st_size > 20_000):
            assert proc.poll() is None and time.monotonic() < deadline, "appender did not start"
            time.sleep(0.01)
        time.sleep(random.Random(seed).uniform(0.0, 0.05))
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    # Execute: what the site's next start does
    after_kill = log.verify()
    opened = log.open()
    _fill(log, 2, start=10_000)
    # Assert
    assert after_kill.ok, after_kill.problem
    entries = list(log.entries())
    assert opened.entries == len(entries) - 2 and after_kill.entries >= opened.entries
    assert [e["seq"] for e in entries] == list(range(len(entries)))
    assert all(b["prev"] == a["hash"] for a, b in itertools.pairwise(entries))
    result = log.verify()
    assert result.ok and result.note == "" and result.entries == len(entries)


# --- logs written before authentication ---------------------------------------------------


def _write_legacy(log: AuditLog, n: int) -> None:
    """A log and head in the old format (SHA-256 chain, plain head, no key file)."""
    prev, lines = GENESIS, []
    for seq in range(n):
        entry: dict[str, object] = {"run": 1, "round": seq, "seq": seq, "prev": prev}
        entry["hash"] = hashlib.sha256(_canonical(entry).encode()).hexdigest()
        prev = str(entry["hash"])
        lines.append(_canonical(entry))
    log.state_dir.mkdir(parents=True)
    _rewrite(log, lines)
    log.head_path.write_text(json.dumps({"entries": n, "hash": prev}))


def test_legacy_log_verifies_as_unauthenticated_then_migrates_on_start(log: AuditLog) -> None:
    # Prepare
    _write_legacy(log, 3)
    # Execute / Assert: before the start, legacy; after, authenticated from line 4 on
    legacy = log.verify()
    assert legacy.ok and legacy.entries == 3 and "legacy" in legacy.note
    assert not legacy.authenticated
    log.open()
    assert AuditKey.load(log.key_file).legacy_entries == 3
    assert log.verify() == type(legacy)(True, 3, authenticated=True)
    _fill(log, 1)
    fourth = list(log.entries())[3]
    assert fourth["seq"] == 3 and fourth["genesis"] == AuditKey.load(log.key_file).genesis
    assert log.verify().ok
    lines = _lines(log)
    _rewrite(log, lines[:1] + lines[2:])  # the old lines stay covered by the chain
    assert not log.verify().ok


def test_broken_legacy_log_is_not_migrated(log: AuditLog) -> None:
    _write_legacy(log, 3)
    _rewrite(log, _lines(log)[:-1])
    assert "removed from the end" in log.verify().problem
    with pytest.raises(AuditLogError):
        log.open()
    assert not log.key_file.exists()


def test_site_audit_verify_cli_reports_a_deleted_log(tmp_path: Path) -> None:
    """`fedfleet site audit --verify`: ok while intact, exit 1 once both files are gone."""
    # Prepare
    site = make_site(tmp_path, {})
    log = AuditLog.for_site(SiteConfig.load(site))
    _fill(log, 2)
    runner = CliRunner()
    # Execute
    ok = runner.invoke(site_app, ["audit", "--config", str(site), "--verify"])
    log.path.unlink()
    log.head_path.unlink()
    bad = runner.invoke(site_app, ["audit", "--config", str(site), "--verify"])
    # Assert
    assert ok.exit_code == 0 and "ok: 2 entries" in ok.output and "authenticated" in ok.output
    assert log.key_file.parent == site.parent  # beside the private key, not in state/
    assert bad.exit_code == 1 and "TAMPERED" in bad.output and "deleted" in bad.output


def test_site_audit_verify_json_is_the_verdict_as_one_object(tmp_path: Path) -> None:
    """`--verify --json` (what `fedfleet report --site` reads): verify_log's result."""
    # Prepare
    site = make_site(tmp_path, {})
    config = SiteConfig.load(site)
    log = AuditLog.for_site(config)
    _fill(log, 3)
    runner = CliRunner()
    # Execute
    ok = runner.invoke(site_app, ["audit", "--config", str(site), "--verify", "--json"])
    _rewrite(log, _lines(log)[:-1])
    bad = runner.invoke(site_app, ["audit", "--config", str(site), "--verify", "--json"])
    # Assert
    assert ok.exit_code == 0 and bad.exit_code == 1
    good, broken = json.loads(ok.stdout), json.loads(bad.stdout)
    assert good == {
        "site": "st-marys",
        "path": str(log.path),
        "ok": True,
        "entries": 3,
        "problem": "",
        "note": "",
        "authenticated": True,
    }
    assert broken["ok"] is False and "removed from the end" in broken["problem"]
    assert broken == {**broken, **dataclasses.asdict(log.verify()), "site": "st-marys"}
