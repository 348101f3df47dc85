"""State files are private whatever the umask: folders 0700, files 0600 (issue 14 item 5)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from privacy.dp import Mechanism
from privacy.ledger import LEDGER_FILE, Budget, PrivacyLedger
from privacy.private_files import (
    create_private_file,
    open_private,
    private_dir,
    write_private_bytes,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o000, 0o022, 0o277])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """Run the test under a permissive (0), the usual (022) and a too strict (277) umask."""
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def test_private_dir_makes_every_missing_level_0700_and_keeps_existing_ones(
    tmp_path: Path, umask: int
) -> None:
    # Prepare
    (tmp_path / "mine").mkdir(mode=0o755)
    os.chmod(tmp_path / "mine", 0o755)
    # Execute
    made = private_dir(tmp_path / "mine" / "a" / "b")
    # Assert
    assert made.is_dir()
    assert mode(tmp_path / "mine" / "a") == mode(made) == 0o700
    assert mode(tmp_path / "mine") == 0o755  # not ours to change


def test_private_dir_refuses_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises((NotADirectoryError, FileExistsError)):
        private_dir(tmp_path / "f")


def test_files_are_0600_at_creation(tmp_path: Path, umask: int) -> None:
    # Execute
    created = create_private_file(tmp_path / "db" / "x.sqlite")
    write_private_bytes(tmp_path / "out" / "metrics.json", b"{}")
    fd = open_private(tmp_path / "log.jsonl", os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"line\n")
    os.close(fd)
    # Assert
    assert mode(created) == mode(tmp_path / "out" / "metrics.json") == 0o600
    assert mode(tmp_path / "log.jsonl") == 0o600
    assert mode(tmp_path / "db") == mode(tmp_path / "out") == 0o700
    assert (tmp_path / "out" / "metrics.json").read_bytes() == b"{}"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["metrics.json"]  # no temp left


def test_create_private_file_keeps_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "fleet.db"
    path.write_bytes(b"data")
    os.chmod(path, 0o640)
    create_private_file(path)
    assert path.read_bytes() == b"data" and mode(path) == 0o640


def test_privacy_ledger_files_are_private(tmp_path: Path, umask: int) -> None:
    # Execute: the real ledger in a site's (new) state folder, with one write
    ledger = PrivacyLedger.in_state_dir(tmp_path / "state", site="s")
    budget = Budget(epsilon=10.0, delta=1e-5)
    ledger.check_and_reserve(
        task="t",
        run_id="run-1",
        server_round=1,
        mechanism=Mechanism(sample_rate=0.05, noise_multiplier=1.2, steps=20),
        budget=budget,
    )
    # Assert: the file, its WAL/SHM companions and the folder
    state = tmp_path / "state"
    assert mode(state) == 0o700
    files = [p for p in state.iterdir() if p.name.startswith(LEDGER_FILE)]
    assert state / LEDGER_FILE in files
    assert all(mode(p) == 0o600 for p in files), {p.name: oct(mode(p)) for p in files}
