"""A real SuperLink started by fedfleet keeps its database private (issue 14 item 5)."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from coordinator.certs import create_dev_ca
from coordinator.superlink import CoordinatorSettings, SuperLinkProcess


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_superlink_database_and_state_are_private(tmp_path: Path) -> None:
    # Prepare: a coordinator folder as an operator writes it, a permissive umask
    create_dev_ca(tmp_path / "certs")
    config = tmp_path / "coordinator.toml"
    config.write_text(f'[superlink]\naddress = "127.0.0.1:{_free_port()}"\n')
    settings = CoordinatorSettings.load(config)
    old = os.umask(0)
    superlink = SuperLinkProcess(settings)
    try:
        # Execute: start the real SuperLink (it creates its tables in the database)
        superlink.start(ready_timeout=90)
    finally:
        superlink.stop()
        os.umask(old)
    # Assert
    state = tmp_path / "state"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    db_files = [p for p in state.iterdir() if p.name.startswith("superlink.db")]
    assert (state / "superlink.db").stat().st_size > 0, "Flower did not write the database"
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in db_files}
    assert set(modes.values()) == {"0o600"}, modes
