"""Run a private Mosquitto for tests and benchmarks (loopback only).

:class:`MosquittoProcess` writes a config (its own ``listener PORT 127.0.0.1``, the
given password and ACL files, no pid file, no persistence) into a folder the
``mosquitto`` user can read (Mosquitto started as root drops to that user), starts
``mosquitto`` in the foreground as a child process and stops it by its PID.
``restart()`` keeps the port, so clients reconnect to the same address. ``config=`` runs
a config written elsewhere (``fedfleet fleet broker-config``) as it is.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Self

from edge_client.protocol.mqtt import MAX_PACKET_BYTES

MOSQUITTO = "/usr/sbin/mosquitto"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MosquittoProcess:
    """A Mosquitto child process on 127.0.0.1:``port`` with optional auth files."""

    def __init__(
        self,
        *,
        passwd: Path | None = None,
        acl: Path | None = None,
        port: int | None = None,
        extra: str = "",
        executable: str = MOSQUITTO,
        config: Path | None = None,
    ) -> None:
        if not Path(executable).exists():
            raise FileNotFoundError(
                f"{executable} not found; install it with: apt-get install -y mosquitto"
            )
        self.executable = executable
        self.port = port or free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="fedfleet-mosquitto-"))
        os.chmod(self.folder, 0o755)
        self.log = self.folder / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None
        if config is not None:  # a config written elsewhere (broker-config), used as it is
            if port is None or passwd or acl or extra:
                raise ValueError("with config=, give its listener's port and nothing else")
            self.conf = config
            return
        lines = [f"listener {self.port} 127.0.0.1", "persistence false"]
        lines += ["max_queued_messages 100000", "max_inflight_messages 64"]
        # As fedfleet fleet broker-config writes it (fleet/ota/broker_config.py).
        lines.append(f"max_packet_size {MAX_PACKET_BYTES}")
        if passwd is not None:
            shutil.copyfile(passwd, self.folder / "passwd")
            os.chmod(self.folder / "passwd", 0o644)
            lines += ["allow_anonymous false", f"password_file {self.folder / 'passwd'}"]
        else:
            lines.append("allow_anonymous true")
        if acl is not None:
            shutil.copyfile(acl, self.folder / "acl")
            os.chmod(self.folder / "acl", 0o644)
            lines.append(f"acl_file {self.folder / 'acl'}")
        if extra:
            lines.append(extra)
        self.conf = self.folder / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        os.chmod(self.conf, 0o644)

    name = "mosquitto"  # in start-up errors

    def start(self, *, timeout_s: float = 10.0) -> Self:
        """Start the broker (``executable -c conf``) and wait until its MQTT listener
        accepts connections."""
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen(
                [self.executable, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not listen on port {self.port} within {timeout_s} s")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def stop(self) -> None:
        """Stop the process by its PID (SIGTERM, then SIGKILL)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def restart(self, *, down_s: float = 0.0) -> None:
        """Stop, stay down ``down_s`` seconds, start again on the same port."""
        self.stop()
        time.sleep(down_s)
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> MosquittoProcess:
        return self.start()

    def __exit__(
        self,
        _t: type[BaseException] | None,
        _e: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.close()


NATS_SERVER = "/usr/sbin/nats-server"


class NatsProcess(MosquittoProcess):
    """A ``nats-server`` child process (MQTT enabled) running a config written by
    ``fedfleet fleet broker-config --broker nats``; its JetStream store (MQTT sessions,
    retained messages, queued QoS 1 messages) is on disk, so ``restart()`` keeps them."""

    name = "nats-server"

    def __init__(self, *, config: Path, port: int, executable: str = NATS_SERVER) -> None:
        if not Path(executable).exists():
            raise FileNotFoundError(
                f"{executable} not found; install it with: apt-get install -y nats-server"
            )
        self.executable = executable
        self.port = port
        self.folder = Path(tempfile.mkdtemp(prefix="fedfleet-nats-"))
        self.log = self.folder / "nats.log"
        self.conf = config
        self._proc = None

    def __enter__(self) -> NatsProcess:
        return self.start()
