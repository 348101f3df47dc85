"""The device agent's settings, read from ``device.toml``.

Example::

    device_id = "dev-0123456789abcdef"     # from enrollment; also the broker user name
    target = "cpu-x86"                      # must match the bundles' target
    slots_dir = "/var/lib/fedfleet/slots"
    public_key = "/etc/fedfleet/fleet.pub"  # Ed25519 key the bundles are signed with
    command_public_key = "/etc/fedfleet/commands.pub"  # optional: the fleet's command key
                                            # (default: public_key)
    task = "digits-cnn"                     # optional: the only task installed (default:
                                            # pinned by the first install)
    heartbeat_s = 30
    telemetry_s = 60
    max_failed_starts = 3
    region = "DE"                           # optional: the grid region it reports
    power_supply_dir = "/sys/class/power_supply"  # optional: where its battery is read

    [broker]
    host = "127.0.0.1"
    port = 8883
    password_file = "/etc/fedfleet/mqtt.pass"   # or password = "..."
    ca_file = "/etc/fedfleet/ca.pem"             # TLS when given

    [http]                                       # optional local inference endpoint
    port = 8088                                  # always bound to 127.0.0.1
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import tomllib

from edge_client.battery import POWER_SUPPLY_DIR
from edge_client.protocol.mqtt import (
    DEFAULT_CHUNK_BYTES,
    ProtocolError,
    check_device_id,
    check_region,
)

_TASK = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")  # a manifest's task name


@dataclass(frozen=True)
class BrokerSettings:
    """How to reach the broker. TLS is on when ``ca_file`` is given."""

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    keepalive_s: int = 30

    def __repr__(self) -> str:  # never print the password
        return (
            f"BrokerSettings(host={self.host!r}, port={self.port}, tls={self.ca_file is not None})"
        )


@dataclass(frozen=True)
class DeviceConfig:
    """Everything one device agent needs; build it with :func:`load_config` or directly.

    ``heartbeat_s``/``telemetry_s``: seconds between heartbeats / telemetry summaries;
    ``chunk_window``: chunk requests in flight (memory bound = window x chunk size);
    ``chunk_timeout_s``: seconds before an unanswered chunk is asked for again;
    ``max_failed_starts``: starts a new model may fail before the agent rolls back;
    ``http_port``: local inference endpoint on 127.0.0.1 (None = off);
    ``hold_before_switch_s``: fault-injection pause for tests (0 in service);
    ``task``: the only task whose bundles this device installs (None: its first install
    pins it, see :mod:`edge_client.floor`);
    ``command_public_key``: the Ed25519 key the fleet signs commands with (``fleet mqtt
    --command-key``; None: ``public_key``, i.e. the fleet holds the bundle key).
    ``durable``: fsync slot writes (always on a device; the simulator turns it off
    because its hundreds of "devices" share one disk).
    ``region``: the grid region the device reports in its status and telemetry (``DE``;
    None: none); ``power_supply_dir``: where its battery is read (:mod:`edge_client.battery`; None:
    never, as the simulator's agents, which share one host).
    """

    device_id: str
    target: str
    slots_dir: Path
    public_key: Path
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    heartbeat_s: float = 30.0
    telemetry_s: float = 60.0
    chunk_window: int = 8
    chunk_timeout_s: float = 5.0
    max_failed_starts: int = 3
    http_port: int | None = None
    hold_before_switch_s: float = 0.0
    durable: bool = True
    task: str | None = None
    command_public_key: Path | None = None
    region: str | None = None
    power_supply_dir: Path | None = POWER_SUPPLY_DIR

    def __post_init__(self) -> None:
        check_device_id(self.device_id)
        if self.region is not None:
            try:
                check_region(self.region)
            except ProtocolError as err:
                raise ValueError(f"region {self.region!r}: {err}") from None
        if self.heartbeat_s <= 0 or self.telemetry_s <= 0:
            raise ValueError("heartbeat_s and telemetry_s must be positive seconds")
        if not 1 <= self.chunk_window <= 256:
            raise ValueError(
                f"chunk_window must be 1..256 (memory: window x {DEFAULT_CHUNK_BYTES})"
            )
        if self.chunk_timeout_s <= 0:
            raise ValueError("chunk_timeout_s must be positive seconds")
        if self.max_failed_starts < 1:
            raise ValueError("max_failed_starts must be at least 1")
        if self.http_port is not None and not 1 <= self.http_port <= 65535:
            raise ValueError("[http] port must be 1..65535")

    def with_changes(self, **changes: Any) -> DeviceConfig:
        return replace(self, **changes)


_TOP = {
    "device_id",
    "target",
    "slots_dir",
    "public_key",
    "heartbeat_s",
    "telemetry_s",
    "chunk_window",
    "chunk_timeout_s",
    "max_failed_starts",
    "hold_before_switch_s",
    "task",
    "command_public_key",
    "region",
    "power_supply_dir",
    "broker",
    "http",
}
_BROKER = {"host", "port", "username", "password", "password_file", "ca_file", "keepalive_s"}


def _task(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and _TASK.match(value)):
        return value
    raise ValueError(f"task must be a task name (lower-case letters, digits, . _ -), got {value!r}")


def load_config(path: Path) -> DeviceConfig:
    """Read and validate ``device.toml``; raise ValueError naming the key to fix."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"config file {path} not found; check --config") from None
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path} is not valid TOML: {err}") from None
    unknown = set(raw) - _TOP
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(_TOP)}")
    for key in ("device_id", "target", "slots_dir", "public_key"):
        if key not in raw:
            raise ValueError(f"{path}: '{key}' is missing")
    broker_raw = dict(raw.get("broker", {}))
    unknown = set(broker_raw) - _BROKER
    if unknown:
        raise ValueError(f"{path}: unknown [broker] keys {sorted(unknown)}")
    base = path.parent
    password = broker_raw.pop("password", None)
    password_file = broker_raw.pop("password_file", None)
    if password_file is not None:
        password = (base / password_file).read_text().strip()
    ca_file = broker_raw.pop("ca_file", None)
    broker = BrokerSettings(
        password=password,
        ca_file=(base / ca_file) if ca_file else None,
        username=broker_raw.pop("username", raw["device_id"]),
        **broker_raw,
    )
    http = raw.get("http", {})
    if not isinstance(http, dict) or set(http) - {"port"}:
        raise ValueError(f"{path}: [http] takes only 'port' (the endpoint is on 127.0.0.1)")
    try:
        return DeviceConfig(
            device_id=raw["device_id"],
            target=raw["target"],
            slots_dir=base / raw["slots_dir"],
            public_key=base / raw["public_key"],
            broker=broker,
            heartbeat_s=float(raw.get("heartbeat_s", 30.0)),
            telemetry_s=float(raw.get("telemetry_s", 60.0)),
            chunk_window=int(raw.get("chunk_window", 8)),
            chunk_timeout_s=float(raw.get("chunk_timeout_s", 5.0)),
            max_failed_starts=int(raw.get("max_failed_starts", 3)),
            http_port=http.get("port"),
            hold_before_switch_s=float(raw.get("hold_before_switch_s", 0.0)),
            task=_task(raw.get("task")),
            command_public_key=(
                base / raw["command_public_key"] if "command_public_key" in raw else None
            ),
            region=raw.get("region"),
            power_supply_dir=base / raw.get("power_supply_dir", str(POWER_SUPPLY_DIR)),
        )
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from None
