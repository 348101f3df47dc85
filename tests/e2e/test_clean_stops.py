"""Every long-running command stops cleanly on SIGINT and SIGTERM: it exits 0 within a
few seconds with one "stopped"-style line, and none of its descendants is left running or
a zombie (checked by PID). Real processes; anything left is killed by PID in a finally."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from silo_testkit import SiloFederation, descendants, free_port, kill_group, wait_for

from coordinator.certs import create_dev_ca

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(300)]

STOP_WITHIN_S = 10.0


def _state(pid: int) -> str | None:
    """The process's state letter, or None once it is gone (reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def assert_stops_cleanly(process: subprocess.Popen[bytes], sig: int, log: Path) -> None:
    tree = descendants(process.pid)
    assert tree, "the command should have started children to stop"
    started = time.monotonic()
    process.send_signal(sig)
    try:
        code = process.wait(timeout=STOP_WITHIN_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {STOP_WITHIN_S:.0f} s after {sig!r}: {log.read_text()[-2000:]}")
    assert code == 0, log.read_text()[-2000:]
    deadline = started + STOP_WITHIN_S
    left = [pid for pid in tree if _state(pid) is not None]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [pid for pid in tree if _state(pid) is not None]
    # a zombie whose parent is gone is reaped by init; one left is a child nobody waited for
    assert not left, {pid: _state(pid) for pid in left}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_coordinator_up_stops_cleanly(tmp_path: Path, sig: int) -> None:
    fed = SiloFederation(tmp_path)
    create_dev_ca(tmp_path / "certs")
    fed.port, fed.control_port = free_port(), free_port()
    fed.coordinator_toml.write_text(
        f'[superlink]\naddress = "127.0.0.1:{fed.port}"\n'
        f'control-address = "127.0.0.1:{fed.control_port}"\n'
    )
    try:
        fed.start_coordinator()
        assert fed.coordinator is not None
        time.sleep(1.0)  # the SuperLink starts its SuperExec after it answers
        assert_stops_cleanly(fed.coordinator, sig, tmp_path / "coordinator.log")
    finally:
        if fed.coordinator is not None and fed.coordinator.poll() is None:
            kill_group(fed.coordinator)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_site_join_stops_cleanly(tmp_path: Path, sig: int) -> None:
    fed = SiloFederation(tmp_path)
    try:
        fed.start(num_sites=1)
        site = fed.sites[0]
        assert site.process is not None
        wait_for(lambda: descendants(site.process.pid), timeout=60, what="the SuperNode")
        assert_stops_cleanly(site.process, sig, site.log)
    finally:
        for process in [s.process for s in fed.sites] + [fed.coordinator]:
            if process is not None and process.poll() is None:
                kill_group(process)
