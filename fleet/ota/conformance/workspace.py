"""The kit's folder: keys, the test device's configuration, bundles, broker and agent.

``prepare(folder, ...)`` creates (or reuses) in ``folder``::

    bundle.key / bundle.pub     the fleet's bundle-signing key (agents trust bundle.pub)
    command.key / command.pub   the fleet's command key (agents verify commands with it)
    device.pass                 the test device's broker password
    device.toml                 the device's settings in ``fedfleet device run``'s format
    slots/                      a fresh state folder for the agent (emptied each run)
    mosquitto.log               what the kit's own Mosquitto printed (its files, as
                                ``fleet broker-config`` writes them, live in a
                                temporary folder for the run)
    agent.log                   what the agent the kit started printed

Keys and the password are kept across runs, so an agent configured once (an already
running one) keeps working; the bundles are built fresh each run with release numbers
above any earlier run's (Unix milliseconds), so a device's floor never blocks a rerun.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_client.protocol.mqtt import check_device_id
from fedfleet.stopping import stop_tree
from firmware_images.demo import build_demo_bundle
from firmware_images.keys import generate_keypair, load_private_key
from fleet.credentials import mosquitto_hash
from fleet.ota.broker_config import FLEET_USER, write_broker_config

DEFAULT_DEVICE_ID = "conformance-device"
# The generated device.toml's timings: short, so that a whole run takes seconds.
HEARTBEAT_S = 1.0
TELEMETRY_S = 2.0
CHUNK_TIMEOUT_S = 1.0
CHUNK_WINDOW = 4


@dataclass(frozen=True)
class Workspace:
    """What :func:`prepare` made: paths, the device's identity and the fleet's keys."""

    folder: Path
    device_id: str
    device_password: str
    target: str
    task: str
    bundle_key: Ed25519PrivateKey
    command_key: Ed25519PrivateKey
    config: Path
    host: str
    port: int
    arch: str = "x86_64"

    @property
    def slots(self) -> Path:
        return self.folder / "slots"


def onnx_target(name_or_path: str) -> tuple[str, str]:
    """``(target name, arch)`` of a registered target or a recipe ``.toml``; ValueError
    when unknown or not an ONNX target (the kit's test models are ONNX)."""
    from firmware_images.targets import resolve_target

    try:
        recipe = resolve_target(name_or_path)
    except OSError as err:
        raise ValueError(f"--target {name_or_path}: {err}") from None
    if recipe.model.format != "onnx":
        raise ValueError(
            f"--target {recipe.name} runs {recipe.model.format} models; the kit's test bundles "
            'are ONNX: give an ONNX target, or a recipe .toml of yours with format = "onnx"'
        )
    return recipe.name, recipe.arch


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _key(folder: Path, name: str) -> Ed25519PrivateKey:
    prefix = folder / name
    if not Path(f"{prefix}.key").exists():
        generate_keypair(prefix=prefix)
    return load_private_key(Path(f"{prefix}.key"))


def prepare(
    folder: Path,
    *,
    device_id: str,
    target: str,
    task: str,
    host: str,
    port: int,
    password: str | None = None,
) -> Workspace:
    """Create or reuse the kit's folder (see the module doc); raise ValueError on bad input.

    ``password``: the device's broker password on a broker the kit does not run (None:
    keep or generate ``device.pass``)."""
    check_device_id(device_id)
    target, arch = onnx_target(target)
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--work {folder} exists and is not a folder; choose a folder")
    folder.mkdir(parents=True, exist_ok=True)
    password_file = folder / "device.pass"
    if password is not None or not password_file.exists():
        password_file.write_text((password or secrets.token_urlsafe(18)) + "\n")
        os.chmod(password_file, 0o600)
    config = folder / "device.toml"
    config.write_text(
        "# Written by fedfleet device conformance: the test device's settings.\n"
        f'device_id = "{device_id}"\n'
        f'target = "{target}"\n'
        f'task = "{task}"\n'
        'slots_dir = "slots"\n'
        'public_key = "bundle.pub"\n'
        'command_public_key = "command.pub"\n'
        f"heartbeat_s = {HEARTBEAT_S}\n"
        f"telemetry_s = {TELEMETRY_S}\n"
        f"chunk_window = {CHUNK_WINDOW}\n"
        f"chunk_timeout_s = {CHUNK_TIMEOUT_S}\n"
        "\n[broker]\n"
        f'host = "{host}"\n'
        f"port = {port}\n"
        'password_file = "device.pass"\n'
    )
    return Workspace(
        folder=folder,
        device_id=device_id,
        device_password=password_file.read_text().strip(),
        target=target,
        task=task,
        bundle_key=_key(folder, "bundle"),
        command_key=_key(folder, "command"),
        config=config,
        host=host,
        port=port,
        arch=arch,
    )


def fresh_state(workspace: Workspace) -> None:
    """Empty the agent's state folder: each run starts from a new device."""
    shutil.rmtree(workspace.slots, ignore_errors=True)
    workspace.slots.mkdir()


@dataclass(frozen=True)
class TestBundle:
    """A signed bundle of the kit and what it claims."""

    name: str
    data: bytes
    release: int
    model_version_id: int

    @property
    def sha(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def build_bundles(workspace: Workspace) -> dict[str, TestBundle]:
    """The run's bundles, by role: ``first``, ``second`` (several chunks, for the
    resume), ``third`` (for the tampered chunk), ``bad-signature`` (signed by a key the
    device does not trust, newest release) and ``downgrade`` (validly signed, a release
    below ``third``'s)."""
    base = time.time_ns() // 1_000_000
    rogue = Ed25519PrivateKey.generate()
    plan = {
        "first": (1, 101, workspace.bundle_key, 0),
        "second": (2, 102, workspace.bundle_key, 40_000),
        "third": (3, 103, workspace.bundle_key, 12_000),
        "bad-signature": (5, 104, rogue, 0),
        "downgrade": (0, 105, workspace.bundle_key, 0),
    }
    out = {}
    for seed, (name, (offset, mv, key, pad)) in enumerate(plan.items()):
        bundle = build_demo_bundle(
            private_key=key,
            version=f"conformance-{name}-{base}",
            target=workspace.target,
            arch=workspace.arch,
            task=workspace.task,
            seed=seed,
            pad_to=pad,
            model_version=str(mv),
            release=base + offset,
        )
        out[name] = TestBundle(name, bundle.data, base + offset, mv)
    return out


class KitBroker:
    """The kit's own Mosquitto: ``fleet broker-config``'s files for the test device and
    the fleet user, started in the foreground and stopped by its PID."""

    def __init__(self, workspace: Workspace, *, port: int, executable: str) -> None:
        found = shutil.which(executable)
        if found is None:
            raise ValueError(
                f"{executable} not found; install Mosquitto (apt-get install mosquitto), "
                "give --mosquitto PATH, or use a running broker with --broker HOST:PORT"
            )
        self.executable = found
        self.port = port
        # Mosquitto started as root drops to the mosquitto user, which must reach these
        # files: they go to a fresh folder under the system's temporary folder (the kit's
        # folder may sit below one only its owner can enter), removed by stop().
        self.folder = Path(tempfile.mkdtemp(prefix="fedfleet-conformance-broker-"))
        os.chmod(self.folder, 0o755)  # noqa: S103 - a folder; passwd stays 0640
        files = write_broker_config(
            out=self.folder,
            devices=[(workspace.device_id, mosquitto_hash(workspace.device_password))],
            port=port,
        )
        self.conf = files.conf
        self.fleet_user = FLEET_USER
        self.fleet_password = files.fleet_password_file.read_text().strip()
        self.log = workspace.folder / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, *, timeout_s: float = 10.0) -> None:
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen(
                [self.executable, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = self.log.read_text(errors="replace")[-500:]
                raise RuntimeError(f"mosquitto exited at start ({self.log}): {tail}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on port {self.port} within {timeout_s:g} s")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_tree(proc, timeout=5.0)
        shutil.rmtree(self.folder, ignore_errors=True)


class AgentProcess:
    """The vendor's agent, started from ``--agent-cmd`` and stopped with its children.

    ``{config}`` and ``{workdir}`` in the command are replaced by the paths of
    ``device.toml`` and the kit's folder; the environment also carries them
    (``FEDFLEET_DEVICE_CONFIG``, ``FEDFLEET_CONFORMANCE_DIR``)."""

    def __init__(self, command: str, workspace: Workspace) -> None:
        text = command.replace("{config}", shlex.quote(str(workspace.config))).replace(
            "{workdir}", shlex.quote(str(workspace.folder))
        )
        self.argv = shlex.split(text)
        if not self.argv:
            raise ValueError("--agent-cmd is empty; give the command that starts your agent")
        self.log = workspace.folder / "agent.log"
        self.env = {
            **os.environ,
            "FEDFLEET_DEVICE_CONFIG": str(workspace.config),
            "FEDFLEET_CONFORMANCE_DIR": str(workspace.folder),
        }
        self.cwd = workspace.folder
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "wb") as log:
            try:
                self._proc = subprocess.Popen(
                    self.argv,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=self.env,
                    cwd=self.cwd,
                )
            except OSError as err:
                raise ValueError(f"--agent-cmd could not start {self.argv[0]!r}: {err}") from None

    def gone(self) -> str | None:
        """Why the agent is no longer running (None while it runs)."""
        code = self._proc.poll() if self._proc is not None else None
        return None if code is None else f"the agent exited with code {code} (see {self.log})"

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_tree(proc, timeout=10.0)
