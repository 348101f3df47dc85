"""A real silo federation on 127.0.0.1 for the end-to-end tests.

One coordinator (`fedfleet coordinator up`: a TLS SuperLink with SuperNode
authentication and a database) and three sites (`fedfleet site join`), each a separate
process group started here and stopped by its own PID. Each site holds a differently
split share of `breast-cancer-mlp`'s training data, in a different file format
(CSV, Parquet, NumPy).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from typer.testing import CliRunner

from coordinator.certs import create_dev_ca
from coordinator.cli import run_app
from coordinator.run_state import RunState
from coordinator.superlink import CoordinatorSettings, register_site, tls_ready
from edge_client.audit import AuditLog
from edge_client.site import init_site
from edge_client.site_config import SiteConfig
from tasks import get_task

TASK = "breast-cancer-mlp"
FEDFLEET = str(Path(sys.executable).parent / "fedfleet")


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free loopback port not handed out before in this process (bind(0) may return a
    just-closed port again, and ephemeral ports get taken by outgoing connections)."""
    while True:
        # below the ephemeral range (32768+), which outgoing connections draw from
        port = 20000 + secrets.randbelow(12000)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port


def wait_for(predicate: Callable[[], Any], *, timeout: float, what: str, poll: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["PYTHONUNBUFFERED"] = "1"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def start_group(command: list[str], *, log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """A child in its own session, so killpg(pid) ends it and everything it started."""
    with log.open("ab") as fh:
        return subprocess.Popen(
            command,
            cwd=cwd,
            env=_env(),
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc): Flower's executors start their own
    sessions, so a process-group kill alone would miss them."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_group(process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    """Signal the child's process group and every descendant (by their PIDs), then reap."""
    tree = descendants(process.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)


def port_free(port: int) -> bool:
    """Whether a server could listen on ``port`` now (SO_REUSEADDR like uvicorn, so
    connections in TIME_WAIT after a kill do not count as taken)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def site_splits(seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Three different splits of the task's training data: class-0-heavy, class-1-heavy,
    and uniform — each site sees a different label mix and size. The records are raw
    (unscaled), as a site holds them; the site scales them with the task's scaling."""
    data = get_task(TASK).load_data(seed)
    rng = np.random.default_rng(1234)
    y = data.y_train
    zeros, ones = rng.permutation(np.flatnonzero(y == 0)), rng.permutation(np.flatnonzero(y == 1))
    a = np.concatenate([zeros[:80], ones[:20]])  # 80% class 0, 100 records
    b = np.concatenate([zeros[80:110], ones[20:150]])  # 81% class 1, 160 records
    c = np.concatenate([zeros[110:], ones[150:]])  # the rest, 195 records
    assert data.input_mean is not None and data.input_std is not None
    raw = data.x_train * data.input_std + data.input_mean
    return [(raw[i], y[i]) for i in (a, b, c)]


def write_site_data(site_dir: Path, fmt: str, x: np.ndarray, y: np.ndarray) -> tuple[str, str]:
    """Write the records as ``fmt``; return (data path, schema TOML lines)."""
    names = list(get_task(TASK).feature_names or [f"f{i}" for i in range(x.shape[1])])
    (site_dir / "data").mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        path = "data/records.csv"
        lines = [",".join([*names, "diagnosis"])]
        lines += [
            ",".join([*(f"{v:.7g}" for v in row), str(int(lab))])
            for row, lab in zip(x, y, strict=True)
        ]
        (site_dir / path).write_text("\n".join(lines) + "\n")
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = "data/records.parquet"
        columns = {n: x[:, i].astype(np.float64) for i, n in enumerate(names)}
        columns["diagnosis"] = y.astype(np.int64)
        pq.write_table(pa.table(columns), site_dir / path)
    else:
        path = "data/records.npz"
        np.savez(site_dir / path, x=x.astype(np.float32), y=y.astype(np.int64))
    schema = "\n".join(f'{n} = "float"' for n in names)
    return path, schema


@dataclass
class Site:
    name: str
    dir: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def config(self) -> Path:
        return self.dir / "site.toml"

    @property
    def log(self) -> Path:
        return self.dir / "supernode.log"

    @property
    def audit(self) -> Path:
        return self.dir / "state" / "audit.jsonl"

    def audit_log(self) -> AuditLog:
        """The site's audit log, with the HMAC key its site.toml names."""
        return AuditLog.for_site(SiteConfig.load(self.config))


@dataclass
class SiloFederation:
    root: Path
    sites: list[Site] = field(default_factory=list)
    coordinator: subprocess.Popen[bytes] | None = None
    extra: list[subprocess.Popen[bytes]] = field(default_factory=list)
    port: int = 0
    control_port: int = 0
    runner: CliRunner = field(default_factory=CliRunner)

    @property
    def coordinator_toml(self) -> Path:
        return self.root / "coordinator.toml"

    @property
    def settings(self) -> CoordinatorSettings:
        return CoordinatorSettings.load(self.coordinator_toml)

    def start(self, *, num_sites: int = 3, superlink_extra: str = "") -> SiloFederation:
        """Certificates, `coordinator up`, ``num_sites`` registered sites joined.
        ``superlink_extra``: more lines for coordinator.toml's [superlink] table."""
        create_dev_ca(self.root / "certs")
        self.port, self.control_port = free_port(), free_port()
        self.coordinator_toml.write_text(
            "[superlink]\n"
            f'address = "127.0.0.1:{self.port}"\n'
            f'control-address = "127.0.0.1:{self.control_port}"\n' + superlink_extra
        )
        self.start_coordinator()
        formats = ["csv", "parquet", "npz"]
        for i, (x, y) in enumerate(site_splits()[:num_sites]):
            site = Site(name=f"site-{i}", dir=self.root / f"site-{i}", port=free_port())
            self.make_site(site, fmt=formats[i % 3], x=x, y=y)
            self.sites.append(site)
        # register concurrently (each `flwr supernode register` is a Python start-up)
        threads = [
            threading.Thread(target=self._register, args=(s,), daemon=True) for s in self.sites
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=180)
        for site in self.sites:
            self.start_site(site)
        return self

    def _register(self, site: Site) -> None:
        register_site(self.settings, name=site.name, public_key=site.dir / f"{site.name}.pub")

    def make_site(self, site: Site, *, fmt: str, x: np.ndarray, y: np.ndarray) -> None:
        init_site(name=site.name, out_dir=site.dir)
        (site.dir / "ca.crt").write_bytes((self.root / "certs" / "ca.crt").read_bytes())
        data_path, schema = write_site_data(site.dir, fmt, x, y)
        text = site.config.read_text()
        text = text.replace('address = "127.0.0.1:9092"', f'address = "127.0.0.1:{self.port}"')
        text = text.replace("port = 9094", f"port = {site.port}")
        text = text.replace('path = "data/records.csv"', f'path = "{data_path}"')
        text = text.replace('label = "label"', 'label = "diagnosis"')
        text = text.replace('# age = "int"\n# mean-radius = "float"\n', schema + "\n")
        text = text.replace("require-dp = true", "require-dp = false")
        site.config.write_text(text)

    def start_coordinator(self) -> None:
        for port in (self.port, self.control_port):
            wait_for(lambda p=port: port_free(p), timeout=60, what=f"port {port} to be free")
        self.coordinator = start_group(
            [FEDFLEET, "coordinator", "up", "--config", str(self.coordinator_toml)],
            log=self.root / "coordinator.log",
            cwd=self.root,
        )
        ca = self.root / "certs" / "ca.crt"
        wait_for(
            lambda: tls_ready("127.0.0.1", self.port, ca) or self._dead(self.coordinator),
            timeout=120,
            what="the SuperLink",
        )
        if self.coordinator.poll() is not None:
            raise RuntimeError((self.root / "coordinator.log").read_text()[-3000:])

    @staticmethod
    def _dead(process: subprocess.Popen[bytes] | None) -> bool:
        return process is not None and process.poll() is not None

    def start_site(self, site: Site) -> None:
        wait_for(lambda: port_free(site.port), timeout=60, what=f"port {site.port} to be free")
        site.process = start_group(
            [FEDFLEET, "site", "join", "--config", str(site.config)], log=site.log, cwd=site.dir
        )

    def start_supernode(self, command: list[str], log: Path) -> subprocess.Popen[bytes]:
        process = start_group(command, log=log, cwd=self.root)
        self.extra.append(process)
        return process

    def submit(
        self, run: dict[str, Any], *args: str, env: dict[str, str] | None = None
    ) -> RunState:
        """``fedfleet run submit`` of ``run`` (plus ``args``); the run's state. Its stdout
        is kept in ``last_stdout``."""
        lines = ["[run]"] + [
            f"{k} = {str(v).lower() if isinstance(v, bool) else repr(v) if not isinstance(v, str) else chr(34) + v + chr(34)}"
            for k, v in run.items()
        ]
        path = self.root / f"run-{time.monotonic_ns()}.toml"
        path.write_text("\n".join(lines) + "\n")
        result = self.runner.invoke(
            run_app,
            ["submit", "--config", str(path), "--coordinator", str(self.coordinator_toml), *args],
            env=env,
        )
        assert result.exit_code == 0, result.output
        self.last_stdout = result.stdout
        run_id = result.stdout.strip().splitlines()[0]
        return RunState.load(self.settings.state_dir, run_id)

    def resume(self, run_id: str) -> str:
        result = self.runner.invoke(
            run_app, ["resume", run_id, "--coordinator", str(self.coordinator_toml)]
        )
        assert result.exit_code == 0, result.output
        return result.output

    def status(self, run_id: str) -> str:
        result = self.runner.invoke(
            run_app, ["status", run_id, "--coordinator", str(self.coordinator_toml)]
        )
        assert result.exit_code == 0, result.output
        return result.output

    def wait_finished(self, state: RunState, *, timeout: float) -> RunState:
        wait_for(
            lambda: state.finished or self._dead(self.coordinator),
            timeout=timeout,
            what=f"run {state.run_id} to finish ({state.status()})",
        )
        assert not self._dead(self.coordinator), "the coordinator died"
        return state

    def stop(self) -> None:
        for process in [*self.extra, *(s.process for s in self.sites), self.coordinator]:
            if process is not None:
                kill_group(process)
