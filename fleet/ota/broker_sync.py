"""Broker credentials that follow the fleet: the device table is the truth, the broker
reloads it.

``fedfleet fleet mqtt --broker-pid-file PATH`` (or ``--broker-pid PID``) runs a
:class:`CredentialSync` in its loop. Every ``every_s`` seconds (default 1 s) it reads the
``(device id, $7$ hash)`` pairs of the enrolled, not retired devices, and when they differ
from what the broker was last given — a device enrolled, retired, or given a new password,
by the API, the dashboard or the simulator — it rewrites ``acl`` and ``passwd`` in the
folder ``fedfleet fleet broker-config`` wrote (atomically, group ``mosquitto``, see
:func:`fleet.ota.broker_config.write_credentials`) and sends Mosquitto SIGHUP.

On SIGHUP Mosquitto 2.0 re-reads its password and ACL files and checks every connected
client against them again: a client whose user is gone (retired) or whose password no
longer matches (rotated) is disconnected, and refused at its next connect.

Why not Mosquitto's dynamic-security plugin: the fleet keeps only the ``$7$`` hash of a
device password (it is shown once), and the plugin's ``createClient`` command in
Mosquitto 2.0 takes the password in clear, so the table could not be replayed into it.
A password file reloaded by SIGHUP works from the hashes, with Debian's package as it is.

The PID is checked before the signal: it must be a live process named ``mosquitto``
(``/proc/PID/comm``), so a stale PID file never sends SIGHUP — which ends most
programs — to whatever process reused the number. A PID file is re-read at every
reload, so a broker restarted by systemd is found again.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.ota.broker_config import device_credentials_from_db, write_credentials

DEFAULT_EVERY_S = 1.0


class BrokerSyncError(RuntimeError):
    """The broker could not be given the current credentials (retried at the next check)."""


@dataclass(frozen=True)
class BrokerProcess:
    """The Mosquitto to reload: a fixed PID, or a PID file read at each reload."""

    pid: int | None = None
    pid_file: Path | None = None

    def __post_init__(self) -> None:
        if (self.pid is None) == (self.pid_file is None):
            raise ValueError("give the broker's PID or its PID file, exactly one of them")
        if self.pid is not None and self.pid <= 1:
            raise ValueError(f"broker PID {self.pid} must be a process id above 1")

    def current_pid(self) -> int:
        """The broker's PID now (raises :class:`BrokerSyncError` when unreadable)."""
        if self.pid is not None:
            return self.pid
        path = self.pid_file or Path()
        try:
            text = path.read_text().strip()
        except OSError as err:
            raise BrokerSyncError(f"cannot read the broker PID file {path}: {err}") from err
        if not text.isdigit() or int(text) <= 1:
            raise BrokerSyncError(f"broker PID file {path} holds {text!r}, not a PID")
        return int(text)

    def reload(self) -> None:
        """Send the broker SIGHUP: it re-reads its password and ACL files."""
        pid = self.current_pid()
        if Path("/proc/self/comm").exists():  # Linux: check the name before signalling
            try:
                name = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                raise BrokerSyncError(f"no process {pid}: is the broker running?") from None
            if name != "mosquitto":
                raise BrokerSyncError(
                    f"process {pid} is {name!r}, not mosquitto; not signalling it "
                    "(a stale PID or PID file?)"
                )
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            raise BrokerSyncError(f"no process {pid}: is the broker running?") from None
        except PermissionError:
            raise BrokerSyncError(
                f"not allowed to signal the broker (PID {pid}); run the fleet's MQTT service "
                "as the broker's user or as root"
            ) from None


@dataclass(frozen=True)
class SyncResult:
    """What one sync gave the broker."""

    devices: int


def credentials_digest(rows: list[tuple[str, str]]) -> str:
    """SHA-256 over the sorted ``(device id, hash)`` pairs: equal sets, equal digests."""
    digest = hashlib.sha256()
    for user, hashed in sorted(rows):
        digest.update(f"{user}:{hashed}\n".encode())
    return digest.hexdigest()


class CredentialSync:
    """Gives the broker the device table's credentials whenever they change.

    ``reload`` is called after ``folder/passwd`` was rewritten (normally
    :meth:`BrokerProcess.reload`). The first :meth:`step` always writes and reloads, so
    devices enrolled while the service was down get in too.
    """

    def __init__(
        self,
        *,
        engine: Any,
        folder: Path,
        fleet_password: str,
        reload: Callable[[], None],
        every_s: float = DEFAULT_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if every_s <= 0:
            raise ValueError(f"the credentials check interval must be positive, got {every_s}")
        if not (folder / "passwd").is_file():
            raise ValueError(
                f"{folder / 'passwd'} not found; run `fedfleet fleet broker-config --out "
                f"{folder}` first (and give the fleet.pass it wrote)"
            )
        self._engine = engine
        self._folder = folder
        self._fleet_password = fleet_password
        self._reload = reload
        self._every_s = every_s
        self._clock = clock
        self._next_check = clock()
        self._applied: str | None = None

    def step(self) -> SyncResult | None:
        """Check when due; returns what was applied, or None when nothing changed.

        Raises :class:`BrokerSyncError` when the file could not be written or the broker
        not reloaded; the change is retried at the next check.
        """
        now = self._clock()
        if now < self._next_check:
            return None
        self._next_check = now + self._every_s
        rows = device_credentials_from_db(self._engine)
        digest = credentials_digest(rows)
        if digest == self._applied:
            return None
        try:
            count = write_credentials(
                out=self._folder, devices=rows, fleet_password=self._fleet_password
            )
        except (OSError, ValueError) as err:
            raise BrokerSyncError(f"cannot write {self._folder / 'passwd'}: {err}") from err
        self._reload()
        self._applied = digest
        return SyncResult(devices=count)
