"""The coordinator's SuperLink: its settings (``coordinator.toml``), process and CLI link.

``CoordinatorSettings`` says where sites reach the Fleet API (``superlink.address``, served
by ``coordinator.fleet_gateway``), where the SuperLink itself listens (``control-address``,
loopback only: its Control API has no authentication), the optional operators' listener
(``operator-address``, mutual TLS), its TLS files, its database (registered sites and
runs survive restarts) and the state folder (runs, sites).
``SuperLinkProcess`` starts ``flower-superlink`` with TLS, SuperNode authentication and
``--database``; ``flwr_env`` gives the environment in which Flower's own CLI
(``flwr run``, ``flwr supernode register``) reaches it over TLS on loopback (Flower 1.42
keeps the connection in ``$FLWR_HOME/config.toml``; ``flwr`` itself has no TLS flags).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import tomllib

from privacy.private_files import create_private_file, private_dir, write_private_bytes
from strategies.deployment_telemetry import check_region

CONNECTION = "fedfleet"
_ALLOWED = {
    "superlink": {"address", "control-address", "operator-address", "database"},
    "tls": {"ca-cert", "certificate", "private-key", "operator-ca"},
    "state": {"dir"},
}


@dataclass(frozen=True)
class CoordinatorSettings:
    """A parsed ``coordinator.toml``; relative paths are relative to its folder.

    ``host:port`` is the public Fleet API address sites dial; ``control_host:control_port``
    the loopback address of the SuperLink itself (Control, Fleet and Runtime APIs);
    ``operator_host:operator_port`` (optional, ``operator_port == 0`` when off) the
    operators' remote Control API, which requires a certificate ``operator_ca`` issued.
    """

    host: str
    port: int
    ca_cert: Path
    certificate: Path
    private_key: Path
    database: Path
    state_dir: Path
    control_host: str = "127.0.0.1"
    control_port: int = 9093
    operator_host: str = ""
    operator_port: int = 0
    operator_ca: Path = Path("certs/operator-ca.crt")

    @property
    def address(self) -> str:
        return join_host_port(self.host, self.port)

    @property
    def control_address(self) -> str:
        return join_host_port(self.control_host, self.control_port)

    @classmethod
    def load(cls, path: Path) -> CoordinatorSettings:
        """Read ``coordinator.toml`` with errors that name the key to fix."""
        if not path.is_file():
            raise ValueError(
                f"coordinator config {path} does not exist; write one (see docs/deployment.md)"
            )
        try:
            doc = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path} is not valid TOML: {exc}") from None
        return cls.from_dict(doc, base=path.resolve().parent, source=path.name)

    @classmethod
    def from_dict(cls, doc: dict[str, Any], *, base: Path, source: str) -> CoordinatorSettings:
        for table, value in doc.items():
            if table not in _ALLOWED or not isinstance(value, dict):
                raise ValueError(f"{source}: unknown table [{table}]; use {sorted(_ALLOWED)}")
            unknown = set(value) - _ALLOWED[table]
            if unknown:
                raise ValueError(
                    f"{source}: unknown key {table}.{sorted(unknown)[0]}; "
                    f"allowed: {sorted(_ALLOWED[table])}"
                )

        def get(table: str, key: str, default: str) -> str:
            value = doc.get(table, {}).get(key, default)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{source}: {table}.{key} must be a non-empty string")
            return value

        def host_port(key: str, default: str) -> tuple[str, int]:
            value = get("superlink", key, default)
            host, _, port = value.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{source}: superlink.{key} {value!r} must be host:port")
            return host.strip("[]"), int(port)

        host, port = host_port("address", "127.0.0.1:9092")
        control_host, control_port = host_port("control-address", "127.0.0.1:9093")
        if not is_loopback(control_host):
            raise ValueError(
                f"{source}: superlink.control-address {control_host}:{control_port} must be "
                "a loopback address such as 127.0.0.1:9093 (the SuperLink's Control API has "
                "no authentication); for remote operators set superlink.operator-address "
                "(mutual TLS, see docs/deployment.md)"
            )
        operator_host, operator_port = "", 0
        if "operator-address" in doc.get("superlink", {}):
            operator_host, operator_port = host_port("operator-address", "")
        ports = [port, control_port, *([operator_port] if operator_port else [])]
        if len(set(ports)) < len(ports):
            raise ValueError(
                f"{source}: superlink.address, control-address and operator-address must "
                "use different ports; change one of them"
            )
        settings = cls(
            host=host,
            port=port,
            ca_cert=base / get("tls", "ca-cert", "certs/ca.crt"),
            certificate=base / get("tls", "certificate", "certs/server.crt"),
            private_key=base / get("tls", "private-key", "certs/server.key"),
            database=base / get("superlink", "database", "state/superlink.db"),
            state_dir=base / get("state", "dir", "state"),
            control_host=control_host,
            control_port=control_port,
            operator_host=operator_host,
            operator_port=operator_port,
            operator_ca=base / get("tls", "operator-ca", "certs/operator-ca.crt"),
        )
        return settings

    def check_tls_files(self) -> None:
        """Refuse to start without the TLS files, saying how to make them."""
        for key, path in (
            ("tls.ca-cert", self.ca_cert),
            ("tls.certificate", self.certificate),
            ("tls.private-key", self.private_key),
        ):
            if not path.is_file():
                raise ValueError(
                    f"{key} {path} does not exist; run `fedfleet certs create --out "
                    f"{path.parent}` or point {key} at your certificate"
                )
        if self.operator_port and not self.operator_ca.is_file():
            raise ValueError(
                f"tls.operator-ca {self.operator_ca} does not exist; run `fedfleet certs "
                f"create-operator --out {self.operator_ca.parent} NAME` or remove "
                "superlink.operator-address"
            )
        from coordinator.certs import certificate_hosts, load_certificate

        hosts = certificate_hosts(load_certificate(self.certificate))
        if self.control_host not in hosts:
            raise ValueError(
                f"tls.certificate {self.certificate} is not valid for {self.control_host}, "
                "where the coordinator's own processes reach the SuperLink; re-create it "
                "with `fedfleet certs create` (it always adds 127.0.0.1 and localhost) or "
                f"set superlink.control-address to one of {hosts}"
            )


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine's loopback interface only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bin_dir() -> Path:
    """The folder of this interpreter's console scripts (flower-superlink, flwr...)."""
    return Path(sys.executable).parent


def flwr_env(settings: CoordinatorSettings) -> dict[str, str]:
    """Environment for Flower processes: telemetry off, FLWR_HOME with a TLS connection
    to this SuperLink, and the virtualenv's ``bin/`` first on PATH (the SuperLink starts
    ``flower-superexec`` by name)."""
    home = settings.state_dir / "flwr-home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        "[superlink]\n"
        f'default = "{CONNECTION}"\n\n'
        f"[superlink.{CONNECTION}]\n"
        f'address = "{settings.control_address}"\n'
        f"root-certificates = {json.dumps(str(settings.ca_cert.resolve()))}\n"
    )
    env = dict(os.environ)
    env["FLWR_HOME"] = str(home)
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["PATH"] = f"{bin_dir()}{os.pathsep}{env.get('PATH', '')}"
    return env


def superlink_command(settings: CoordinatorSettings) -> list[str]:
    """The ``flower-superlink`` command line: TLS, node authentication, persistence."""
    return [
        str(bin_dir() / "flower-superlink"),
        "--ssl-ca-certfile",
        str(settings.ca_cert),
        "--ssl-certfile",
        str(settings.certificate),
        "--ssl-keyfile",
        str(settings.private_key),
        "--enable-supernode-auth",
        "--database",
        str(settings.database),
        "--disable-runtime-dependency-installation",
        "--host",
        settings.control_host,
        "--port",
        str(settings.control_port),
    ]


def tls_ready(host: str, port: int, ca_cert: Path, *, timeout: float = 1.0) -> bool:
    """Whether a TLS handshake with ``host:port`` succeeds under ``ca_cert``."""
    context = ssl.create_default_context(cafile=str(ca_cert))
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as sock,
            context.wrap_socket(sock, server_hostname=host),
        ):
            return True
    except OSError:
        return False


class SuperLinkProcess:
    """A ``flower-superlink`` child process, by default in its own session (so stopping
    its process group also ends the SuperExec and ServerApp processes it started).
    ``own_session=False`` keeps it in the caller's group (``coordinator up``: killing
    that command's group ends the whole coordinator)."""

    def __init__(
        self,
        settings: CoordinatorSettings,
        *,
        log_file: IO[bytes] | None = None,
        own_session: bool = True,
    ) -> None:
        self.settings = settings
        self.log_file = log_file
        self.own_session = own_session
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, ready_timeout: float = 60.0) -> None:
        """Start the SuperLink and wait until it answers TLS handshakes."""
        self.settings.check_tls_files()
        create_private_file(self.settings.database)  # 0600, folder 0700: Flower opens it
        env = flwr_env(self.settings)
        if shutil.which("flower-superlink", path=env["PATH"]) is None:
            raise ValueError("flower-superlink is not installed; pip install 'fedfleet[server]'")
        self.process = subprocess.Popen(
            superlink_command(self.settings),
            env=env,
            stdout=self.log_file or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=self.own_session,
        )
        deadline = time.monotonic() + ready_timeout
        settings = self.settings
        while not tls_ready(settings.control_host, settings.control_port, settings.ca_cert):
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"flower-superlink exited with code {self.process.returncode}; "
                    "is the port in use? see its log"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the SuperLink did not start within {ready_timeout:.0f} s")
            time.sleep(0.3)

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def stop(self, *, timeout: float = 10.0) -> None:
        """SIGTERM the SuperLink's process group, SIGKILL after ``timeout`` seconds."""
        if self.process is None:
            return
        if self.own_session:
            stop_group(self.process, timeout=timeout)
            return
        # in the caller's group: end the SuperExec and ServerApp processes it started too
        from fedfleet.stopping import stop_tree

        stop_tree(self.process, timeout=timeout)


def stop_group(process: subprocess.Popen[bytes], *, timeout: float = 10.0) -> None:
    """End a child started with ``start_new_session=True`` and everything it started."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=timeout)
            if sig == signal.SIGTERM:
                # the leader exited; make sure its children are gone too
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
            break
        except subprocess.TimeoutExpired:
            continue


def flwr_json(settings: CoordinatorSettings, args: list[str], *, timeout: float) -> dict[str, Any]:
    """Run Flower's CLI (``flwr ARGS --format json``) against the SuperLink; its JSON
    answer, or ``ValueError`` with Flower's error message when it did not succeed."""
    result = subprocess.run(
        [str(bin_dir() / "flwr"), *args, "--format", "json"],
        env=flwr_env(settings),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    try:
        doc: dict[str, Any] = json.loads(result.stdout[result.stdout.index("{") :])
    except ValueError:
        doc = {}
    if result.returncode != 0 or not doc.get("success"):
        raise ValueError(
            str(doc.get("error-message") or (result.stderr.strip().splitlines() or ["?"])[-1])
        )
    return doc


def register_site(
    settings: CoordinatorSettings, *, name: str, public_key: Path, region: str | None = None
) -> int:
    """Register a site's public key with the running SuperLink; return its node id.

    The key is an OpenSSH ECDSA (NIST curve) public key as ``fedfleet site init``
    writes it. The name → node id map (and the site's grid ``region`` when given, for
    carbon-aware selection: docs/carbon.md) is kept in ``<state>/sites.json``.
    """
    if region is not None:
        check_region(region)
    if not public_key.is_file():
        raise ValueError(f"public key {public_key} does not exist")
    if name in load_sites(settings):
        raise ValueError(f"site {name!r} is already registered")
    try:
        doc = flwr_json(
            settings,
            ["supernode", "register", str(public_key), CONNECTION, "--name", name],
            timeout=120,
        )
    except ValueError as exc:
        raise ValueError(f"the SuperLink refused to register {name}: {exc}") from None
    node_id = int(doc["node-id"])
    private_dir(settings.state_dir)
    lock_fd = os.open(settings.state_dir / ".sites.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:  # several add-site commands may run at once
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        sites = load_sites(settings)
        sites[name] = {"node-id": node_id, "public-key": public_key.read_text().strip()}
        if region is not None:
            sites[name]["region"] = region
        write_private_bytes(sites_path(settings), json.dumps(sites, indent=2).encode())
    finally:
        fcntl.flock(lock_fd, fcntl.LOCK_UN)
        os.close(lock_fd)
    return node_id


def sites_path(settings: CoordinatorSettings) -> Path:
    return settings.state_dir / "sites.json"


def load_sites(settings: CoordinatorSettings) -> dict[str, dict[str, Any]]:
    """Registered sites: name → {"node-id", "public-key"}."""
    path = sites_path(settings)
    return json.loads(path.read_text()) if path.exists() else {}
