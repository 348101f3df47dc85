"""The fleet's SQLite database is private: file (and WAL/SHM) 0600, new folder 0700."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from fleet.db import make_engine
from fleet.migrate import upgrade


def test_sqlite_database_is_created_private_whatever_the_umask(tmp_path: Path) -> None:
    # Prepare: a umask that would leave everything world-readable
    old = os.umask(0)
    try:
        # Execute: what `fedfleet fleet migrate` / the app factory do
        engine = make_engine(f"sqlite:///{tmp_path / 'data' / 'fleet.db'}")
        upgrade(engine)
        engine.dispose()
    finally:
        os.umask(old)
    # Assert
    data = tmp_path / "data"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    files = list(data.iterdir())
    assert data / "fleet.db" in files and (data / "fleet.db").stat().st_size > 0
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {"0o600"}, modes
