"""`flwr run .` from a checkout, against a SuperLink the test starts with ``--simulation``.

The repository root ``pyproject.toml`` is a Flower App (fedfleet's ServerApp and
ClientApp); this is what a Flower user types. Connection settings live in
``$FLWR_HOME/config.toml`` (``flwr run`` has no address flags); the SuperLink runs
with ``--disable-runtime-dependency-installation`` and is stopped by its PID.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@dataclass
class Link:
    env: dict[str, str]
    connection: str


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(home: Path, env: dict[str, str], log_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start a SuperLink on a free port; retry on another port if it dies at once
    (another process may take a free port between the probe and the bind)."""
    for _ in range(3):
        port = _free_port()
        (home / "config.toml").write_text(
            '[superlink]\ndefault = "e2e"\n\n'
            f'[superlink.e2e]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
        )
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [
                    str(BIN / "flower-superlink"),
                    "--insecure",
                    "--simulation",
                    "--isolation",
                    "subprocess",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--disable-runtime-dependency-installation",
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 90
        while process.poll() is None and time.monotonic() < deadline:
            with suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.5).is_success:
                    return process, port
            time.sleep(0.2)
        _stop(process)
    raise AssertionError("SuperLink did not start: " + log_path.read_text()[-2000:])


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop the SuperLink by its PID, then whatever is left of its process group."""
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=20)
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # its SuperExec and app processes


@pytest.fixture
def superlink(tmp_path: Path) -> Iterator[Link]:
    home = tmp_path / "flwr-home"
    home.mkdir()
    env = dict(
        os.environ,
        FLWR_HOME=str(home),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    process, _ = _start(home, env, tmp_path / "superlink.log")
    try:
        yield Link(env=env, connection="e2e")
    finally:
        _stop(process)


@pytest.mark.slow
@pytest.mark.e2e
def test_flwr_run_from_the_checkout_completes_two_rounds(superlink: Link, tmp_path: Path) -> None:
    # Execute: exactly what a Flower user types, plus the run's overrides.
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            str(BIN / "flwr"),
            "run",
            ".",
            superlink.connection,
            "--federation-config",
            "num-supernodes=10",
            "--run-config",
            f"num-server-rounds=2 out-dir='{out}'",
            "--stream",
        ],
        cwd=REPO,
        env=superlink.env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    # Assert: the ServerApp ran both rounds on Flower's simulation engine.
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in doc["rounds"]] == [1, 2]
    assert all(r["clients"] == 10 for r in doc["rounds"])
    assert 0.0 < doc["final_accuracy"] <= 1.0
    assert (out / "model.pt").stat().st_size > 0
