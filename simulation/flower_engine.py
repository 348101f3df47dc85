"""``--engine flower``: the same ServerApp and ClientApp on Flower's own simulation runtime.

Flower 1.42's supported path (``run_simulation`` is deprecated): a SuperLink started
with ``--simulation`` runs each submitted app on its Ray-based simulation engine, and
``flwr run APP CONNECTION`` submits the app. This module

1. writes a throw-away ``FLWR_HOME`` whose ``config.toml`` names one connection (Flower
   keeps connection settings there; ``flwr run`` has no address flags),
2. starts ``flower-superlink --simulation`` on a free loopback port as a child process
   (with ``--disable-runtime-dependency-installation``, else it would ``uv sync`` the
   app), with the virtualenv's ``bin/`` first on ``PATH`` because the SuperLink starts
   ``flower-superexec`` by name,
3. writes a minimal Flower App folder whose ``pyproject.toml`` names fedfleet's
   ServerApp and the simulation's ClientApp (``simulation.apps:app``, the one the
   in-process engine runs) and carries the run config, and runs ``flwr run --stream``
   on it with ``--federation-config num-supernodes=N``,
4. follows the run through the ``metrics.json`` the ServerApp writes into ``out-dir``
   (the only channel out of Flower's processes), reporting each round as it lands,
5. stops everything it started, by PID, whatever happens.

This is also the path to a Ray cluster: the same app folder runs under any SuperLink.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from coordinator.results import RoundRecord
from simulation.settings import SimulateSettings

CONNECTION = "fedfleet-sim"
# Temporary FLWR_HOME folders go in the system temp folder under this prefix. Keep that
# folder's path short: Ray puts its session and AF_UNIX sockets (at most 107 bytes) there.
HOME_PREFIX = "ffsim-flwr-"
SUPERLINK_START_TIMEOUT_S = 90.0
_ROUND_FIELDS = ("round", "accuracy", "loss", "duration_s", "clients", "selected", "failures")


class FlowerEngineError(RuntimeError):
    """The Flower run failed; the message carries the end of its log."""


def venv_bin() -> Path:
    """The folder of this interpreter's console scripts (``flwr``, ``flower-superlink``)."""
    return Path(sys.executable).parent


def flower_env(flwr_home: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for Flower's processes: private ``FLWR_HOME``, no telemetry, the
    virtualenv's ``bin/`` first on ``PATH``."""
    env = dict(os.environ if base is None else base)
    env["FLWR_HOME"] = str(flwr_home)
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env["PATH"] = f"{venv_bin()}{os.pathsep}{env.get('PATH', '')}"
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_connection(flwr_home: Path, *, address: str, name: str = CONNECTION) -> Path:
    """Write ``$FLWR_HOME/config.toml`` with one insecure loopback connection, the default."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    doc = {"superlink": {"default": name, name: {"address": address, "insecure": True}}}
    path.write_text(tomli_w.dumps(doc))
    return path


@dataclass
class SuperLink:
    """A ``flower-superlink --simulation`` child process on 127.0.0.1:``port``."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @classmethod
    def start(cls, *, flwr_home: Path, port: int | None = None, attempts: int = 3) -> SuperLink:
        """Start it and wait until its ``/health`` answers; raise with its log if not.

        A SuperLink that exits at once (a "free" port taken before it could bind) is
        retried on another port, up to ``attempts`` times.
        """
        for attempt in range(1, attempts + 1):
            try:
                return cls._start_once(flwr_home=flwr_home, port=port or free_port())
            except FlowerEngineError:
                if port is not None or attempt == attempts:
                    raise
        raise FlowerEngineError("attempts must be >= 1")

    @classmethod
    def _start_once(cls, *, flwr_home: Path, port: int) -> SuperLink:
        import httpx

        log_path = flwr_home / "superlink.log"
        flwr_home.mkdir(parents=True, exist_ok=True)
        command = [
            str(venv_bin() / "flower-superlink"),
            "--insecure",
            "--simulation",
            "--isolation",
            "subprocess",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--disable-runtime-dependency-installation",
        ]
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                command,
                env=flower_env(flwr_home),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=flwr_home,
                start_new_session=True,
            )
        link = cls(process=process, port=port, log_path=log_path)
        deadline = time.monotonic() + SUPERLINK_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                link.stop()
                raise FlowerEngineError(
                    f"flower-superlink exited with code {process.returncode}: {link.log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://{link.address}/health", timeout=0.5).is_success:
                    return link
            time.sleep(0.2)
        link.stop()
        raise FlowerEngineError(
            f"flower-superlink did not answer within {SUPERLINK_START_TIMEOUT_S:.0f} s: "
            f"{link.log_tail()}"
        )

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the SuperLink (its SuperExec and app processes follow it), by PID."""
        stop_process(self.process, timeout=timeout)


def stop_process(process: subprocess.Popen[Any], *, timeout: float = 15.0) -> None:
    """SIGTERM ``process`` (the leader of its own session), then SIGKILL its group."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)
    # Children that outlived their parent (they share its session and process group).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def write_app(app_dir: Path, run_config: Mapping[str, bool | int | float | str]) -> Path:
    """A minimal Flower App folder naming fedfleet's apps, with ``run_config`` as its
    ``[tool.flwr.app.config]`` (fedfleet is installed, so the app ships no code)."""
    app_dir.mkdir(parents=True, exist_ok=True)
    doc = {
        "project": {
            "name": "fedfleet-sim",
            "version": "1.0.0",
            "description": "fedfleet's ServerApp and ClientApp (installed package)",
            "license": "Apache-2.0",
            "dependencies": [],
        },
        "tool": {
            "flwr": {
                "app": {
                    "publisher": "fedfleet",
                    "components": {
                        "serverapp": "coordinator.app:app",
                        "clientapp": "simulation.apps:app",
                    },
                    "config": dict(run_config),
                }
            },
        },
    }
    (app_dir / "pyproject.toml").write_text(tomli_w.dumps(doc))
    return app_dir


def flwr_run_command(app_dir: Path, *, num_supernodes: int, stream: bool = True) -> list[str]:
    """``flwr run APP CONNECTION --federation-config num-supernodes=N [--stream]``."""
    command = [
        str(venv_bin() / "flwr"),
        "run",
        str(app_dir),
        CONNECTION,
        "--federation-config",
        f"num-supernodes={num_supernodes}",
    ]
    return [*command, "--stream"] if stream else command


def record_from_row(row: Mapping[str, Any]) -> RoundRecord:
    """A metrics.json round row back into a RoundRecord (``None`` → NaN)."""

    def num(value: Any) -> float:
        return math.nan if value is None else float(value)

    extra = {
        key: num(value)
        for key, value in row.items()
        if key not in (*_ROUND_FIELDS, "applied") and isinstance(value, int | float | None)
    }
    return RoundRecord(
        round=int(row["round"]),
        accuracy=num(row.get("accuracy")),
        loss=num(row.get("loss")),
        duration_s=num(row.get("duration_s")),
        clients=int(row.get("clients") or 0),
        selected=int(row.get("selected") or 0),
        failures=int(row.get("failures") or 0),
        applied=bool(row.get("applied", True)),
        extra=extra,
    )


def read_rounds(metrics_path: Path) -> list[dict[str, Any]]:
    """The rounds in ``metrics_path`` so far (empty if absent or being replaced)."""
    try:
        return list(json.loads(metrics_path.read_text()).get("rounds", []))
    except (OSError, ValueError):
        return []


@contextlib.contextmanager
def flower_home() -> Iterator[Path]:
    """A private, temporary ``FLWR_HOME`` (removed afterwards)."""
    path = Path(tempfile.mkdtemp(prefix=HOME_PREFIX))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_flower_engine(
    settings: SimulateSettings,
    *,
    run_config: Mapping[str, bool | int | float | str],
    on_round: Callable[[RoundRecord], None] | None = None,
    timeout_s: float = 3600.0,
    poll_s: float = 0.25,
) -> None:
    """Run the simulation on Flower's engine; results land in ``run_config['out-dir']``."""
    out_dir = Path(str(run_config.get("out-dir", "")))
    if not str(out_dir):
        raise ValueError("the Flower engine needs an output folder (out-dir) to read results")
    metrics_path = out_dir / "metrics.json"
    with flower_home() as home:
        link = SuperLink.start(flwr_home=home)
        flwr: subprocess.Popen[bytes] | None = None
        try:
            write_connection(home, address=link.address)
            app_dir = write_app(home / "app", run_config)
            log_path = home / "flwr-run.log"
            with log_path.open("wb") as log:
                flwr = subprocess.Popen(
                    flwr_run_command(app_dir, num_supernodes=settings.clients),
                    env=flower_env(home),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=home,
                    start_new_session=True,
                )
            reported = 0
            deadline = time.monotonic() + timeout_s
            while True:
                finished = flwr.poll() is not None
                rows = read_rounds(metrics_path)
                for row in rows[reported:]:
                    if on_round is not None:
                        on_round(record_from_row(row))
                reported = max(reported, len(rows))
                if finished:
                    break
                if time.monotonic() > deadline:
                    raise FlowerEngineError(f"the Flower run did not finish in {timeout_s:.0f} s")
                time.sleep(poll_s)
            if reported < settings.rounds or not (out_dir / "model.pt").exists():
                tail = " | ".join(
                    line.strip() for line in log_path.read_text(errors="replace").splitlines()[-6:]
                )
                raise FlowerEngineError(
                    f"the Flower run ended after {reported} of {settings.rounds} rounds "
                    f"(flwr exit code {flwr.returncode}): {tail}"
                )
        finally:
            if flwr is not None:
                stop_process(flwr)
            link.stop()
