"""A whole OTA fleet on loopback for end-to-end tests: database, broker, bridge, devices.

:class:`OtaFleet` creates a migrated SQLite fleet database, a signing key, enrolls
devices, writes the broker's password and ACL files with ``fleet.ota.broker_config``, starts
a private Mosquitto with them (stopped by PID), starts the fleet bridge and a rollout
controller thread, and runs the devices as :class:`SimulatedFleet` agents in this process, or with
``processes=K`` as a :class:`ProcessFleet` over K worker processes (``self.procs``).
:class:`DeviceClient` is one device's raw broker session (its own credentials), for tests
of what a hostile device can and cannot do.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from broker_process import MosquittoProcess, NatsProcess, free_port
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine
from sqlmodel import Session, select

from edge_client.device_config import BrokerSettings
from edge_client.protocol import mqtt as proto
from fleet import migrate
from fleet.artifacts import ArtifactStore
from fleet.audit import Actor
from fleet.db import make_engine, session_scope
from fleet.models.ota import TelemetryRecord
from fleet.ota.bridge import BridgeSettings, FleetBridge
from fleet.ota.broker_config import FLEET_USER, device_credentials_from_db, write_broker_config
from fleet.ota.broker_nats import write_nats_config
from fleet.ota.controller import RolloutController
from fleet.ota.guard import Limits
from fleet.ota.reference_push import push_references
from simulation.device_quality import TrafficModel
from simulation.fleet_devices import AgentReport, ProcessFleet, SimDevice, SimulatedFleet

SIM_ACTOR = Actor(name="cli:simulate-devices", role="operator", source="cli")

TARGET = "cpu-x86"


# --- the fleet database, written directly (tests and bench/ota.py own theirs) ----------


def enroll_devices(
    engine: Engine, *, count: int, group: str, target: str, prefix: str = "sim"
) -> list[SimDevice]:
    """Enroll ``count`` devices into ``group`` (created if missing); return credentials."""
    from fleet.crud.devices import enroll_device
    from fleet.crud.groups import create_group, group_by_name
    from fleet.models.devices import DeviceCreate, GroupCreate

    if count < 1:
        raise ValueError("--count must be at least 1")
    out: list[SimDevice] = []
    with session_scope(engine, write=True) as session:
        if group_by_name(session, group) is None:
            create_group(session, GroupCreate(name=group), actor=SIM_ACTOR)
    start = time.time_ns() // 1000 % 10**9
    # Small transactions: the audit checks walk the session's objects at every flush.
    for first in range(0, count, 25):
        with session_scope(engine, write=True) as session:
            for i in range(first, min(first + 25, count)):
                device, password = enroll_device(
                    session,
                    DeviceCreate(
                        name=f"{prefix}-{start}-{i:05d}", hardware_target=target, group=group
                    ),
                    actor=SIM_ACTOR,
                    offline_after_s=120.0,
                )
                out.append(SimDevice(device_id=device.id, password=password))
    return out


def register_bundle(
    engine: Engine, store: ArtifactStore, *, bundle: bytes, task: str, target: str, name: str = ""
) -> int:
    """Register a model version with ``bundle`` as its signed-bundle artifact; its id."""
    import io

    from fleet.crud.registry import add_artifact, register_model
    from fleet.models.registry import ArtifactFormat, ModelVersionCreate

    stored = store.save(io.BytesIO(bundle), max_bytes=len(bundle) + 1)
    # No registry signature: a bundle carries its own Ed25519 signature over its manifest.
    with session_scope(engine, write=True) as session:
        model = register_model(session, ModelVersionCreate(task=task, name=name), actor=SIM_ACTOR)
        add_artifact(
            session,
            model,
            format=ArtifactFormat.bundle,
            target=target,
            filename="model.ffb",
            size_bytes=stored.size_bytes,
            sha256=stored.sha256,
            signature=None,
            actor=SIM_ACTOR,
        )
        return model.id or 0


def wait_for(predicate: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    """Poll ``predicate`` every 50 ms; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


class OtaFleet:
    """Everything of the OTA path, started in :meth:`start` and stopped in :meth:`close`."""

    def __init__(
        self,
        root: Path,
        *,
        devices: int,
        group: str = "wards",
        chunk_size: int = 16 * 1024,
        broker_extra: str = "",
        limits: Limits | None = None,
        spares: int = 0,
        sign_commands: bool = True,
        v1_until: float | None = None,
        broker: str = "mosquitto",
        database: str | None = None,
        replicas: tuple[str, ...] = (),
    ) -> None:
        """``replicas``: names given their own broker users (broker-config --replicas);
        ``database``: a PostgreSQL URL; the fleet then lives in a fresh schema there,
        dropped in :meth:`close` (default: a SQLite file under ``root``);
        ``broker_extra``: more ``mosquitto.conf`` lines (e.g. ``log_type subscribe``);
        ``limits``: the bridge's per-device limits (default: the fleet's); ``spares``:
        devices enrolled in group ``{group}-spare`` that run no agent (``self.spares``:
        a test or bench drives their broker sessions itself); ``broker``: ``mosquitto``
        or ``nats`` (its config from ``fleet.ota.broker_nats``, with the devices'
        passwords, which this kit knows and the fleet does not)."""
        self.chunk_size = chunk_size
        self.sign_commands = sign_commands  # the bridge signs commands with self.key
        self.v1_until = v1_until  # end of the protocol v1 window (Unix s; None: refused)
        self.limits = limits or Limits()
        self.root = root
        self._pg: tuple[str, str] | None = None
        if database is not None:
            schema = f"ota_{uuid.uuid4().hex[:12]}"
            self._pg = (database, schema)
            admin = make_engine(database)
            with admin.begin() as connection:
                connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
            admin.dispose()
            self.engine = make_engine(database, schema=schema)
        else:
            self.engine = make_engine(f"sqlite:///{root / 'fleet.db'}")
        migrate.upgrade(self.engine)
        self.store = ArtifactStore(root / "artifacts")
        self.key = Ed25519PrivateKey.generate()
        self.pubkey = root / "fleet.pub"
        self.pubkey.write_bytes(
            self.key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        self.group = group
        self.devices: list[SimDevice] = (
            enroll_devices(self.engine, count=devices, group=group, target=TARGET)
            if devices
            else []
        )
        self.spares: list[SimDevice] = (
            enroll_devices(
                self.engine, count=spares, group=f"{group}-spare", target=TARGET, prefix="spare"
            )
            if spares
            else []
        )
        files = write_broker_config(
            out=root / "broker", devices=device_credentials_from_db(self.engine), replicas=replicas
        )
        self.fleet_password = files.fleet_password_file.read_text().strip()
        self.broker: MosquittoProcess = MosquittoProcess(
            passwd=files.passwd, acl=files.acl, extra=broker_extra
        )
        if broker == "nats":
            port = free_port()
            conf, _kept, _left = write_nats_config(
                out=root / "broker",
                devices=[(d.device_id, d.password) for d in self.devices + self.spares],
                port=port,
                client_port=free_port(),
            )
            self.broker.close()
            self.broker = NatsProcess(config=conf, port=port)
        self.bridge: FleetBridge | None = None
        self.controller: RolloutController | None = None
        self.sim: SimulatedFleet | None = None
        self.procs: ProcessFleet | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def broker_settings(self) -> BrokerSettings:
        return BrokerSettings(host="127.0.0.1", port=self.broker.port)

    def start(
        self,
        *,
        agents: bool = True,
        processes: int = 1,
        durable: bool = False,
        device_root: Path | None = None,
        traffic: TrafficModel | None = None,
        fleet_service: bool = True,
        **sim_options: float,
    ) -> OtaFleet:
        """``processes > 1`` runs the agents in worker processes (``self.procs``, else
        ``self.sim``); ``durable`` makes them fsync like real devices; ``device_root``
        holds their slots (default ``root/devices``); ``traffic``: synthetic quality signals
        the agents publish for the version each runs (:mod:`simulation.device_quality`);
        ``fleet_service=False``: no bridge or controller in this process (the test runs
        ``fleet mqtt`` processes)."""
        self.broker.start()
        if fleet_service:
            self._start_fleet_service()
        if agents and self.devices:
            self._start_agents(processes, durable, device_root, sim_options, traffic)
        return self

    def _start_fleet_service(self) -> None:
        self.bridge = FleetBridge(
            engine=self.engine,
            store=self.store,
            settings=BridgeSettings(
                port=self.broker.port,
                username=FLEET_USER,
                password=self.fleet_password,
                chunk_size=self.chunk_size,
                batch_wait_s=0.05,
                limits=self.limits,
                command_key=self.key if self.sign_commands else None,
                # only when set: bench/ota.py --before runs code that predates the window
                **({"v1_until": self.v1_until} if self.v1_until is not None else {}),
            ),
        ).start()
        self.controller = RolloutController(engine=self.engine, sender=self.bridge)
        self._thread = threading.Thread(target=self._control, daemon=True)
        self._thread.start()

    def _start_agents(
        self,
        processes: int,
        durable: bool,
        device_root: Path | None,
        sim_options: Any,
        traffic: TrafficModel | None = None,
    ) -> None:
        options: dict[str, Any] = {
            "root": device_root or self.root / "devices",
            "target": TARGET,
            "public_key": self.pubkey,
            "broker": self.broker_settings,
            "heartbeat_s": float(sim_options.get("heartbeat_s", 5.0)),
            "telemetry_s": float(sim_options.get("telemetry_s", 60.0)),
            "chunk_timeout_s": float(sim_options.get("chunk_timeout_s", 2.0)),
            "durable": durable,
        }
        if traffic is not None:
            options["traffic"] = traffic
        if processes > 1:
            self.procs = ProcessFleet(self.devices, processes=processes, **options).start()
        else:
            self.sim = SimulatedFleet(self.devices, **options).start()

    def reports(self) -> list[AgentReport]:
        """Every simulated agent's state, wherever it runs."""
        if self.procs is not None:
            return self.procs.reports()
        return self.sim.reports() if self.sim is not None else []

    def _control(self) -> None:
        """What ``fleet mqtt``'s loop does each tick: rollouts, then changed drift
        references to the devices running their version."""
        while not self._stop.wait(0.1):
            if self.controller is not None:
                self.controller.step()
            if self.bridge is not None:
                push_references(self.engine, self.bridge)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.sim is not None:
            self.sim.stop()
        if self.procs is not None:
            self.procs.stop()
        if self.bridge is not None:
            self.bridge.stop()
        self.broker.close()
        self.engine.dispose()
        if self._pg is not None:
            url, schema = self._pg
            engine = make_engine(url)
            with engine.begin() as connection:
                connection.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            engine.dispose()


# --- a device's raw broker session (tests of hostile devices) -------------------------


def _json(**fields: object) -> bytes:
    return json.dumps({"schema": 2, **fields}).encode()


# The findings' payloads, each a valid shape but for one value (or no shape at all).
POISONS: dict[str, bytes] = {
    "nested-300kb": b"[" * 300_000,
    "400-digit-number": _json(type="heartbeat", uptime_s=int("9" * 400)),
    "seq-2^63": _json(
        type="telemetry", seq=2**63, window_s=1, count=1, latency_p50_ms=1, latency_p95_ms=1
    ),
    "bin-count-2^63": _json(
        type="telemetry",
        seq=1,
        window_s=1,
        count=1,
        latency_p50_ms=1,
        latency_p95_ms=1,
        features=[{"counts": [2**63, 1]}],
    ),
    "id-2^70-status": _json(type="status", online=True, model_version_id=2**70),
    "id-2^70-ack": _json(
        type="ack", command_id="x", ok=True, action="install", model_version_id=2**70
    ),
    "non-utf8": b'{"schema":2,"type":"heartbeat","uptime_s":1,"\xff\xfe":2}',
    "huge-2mb": b'{"schema":2,"type":"heartbeat","uptime_s":1,"pad":"' + b"x" * 2_000_000 + b'"}',
}


class DeviceClient:
    """A device's own broker session (its credentials), publishing raw payloads and
    collecting what arrives on the topics it subscribes (tests of what a device may do)."""

    def __init__(self, fleet: OtaFleet, device: SimDevice) -> None:
        self.device_id = device.device_id
        self.frames: list[bytes] = []
        self._lock = threading.Lock()
        connected = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"{device.device_id}-{uuid.uuid4().hex[:4]}"
        )
        self.client.username_pw_set(device.device_id, device.password)
        self.client.max_inflight_messages_set(1000)
        self.client.on_connect = lambda *_: connected.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", fleet.broker.port)
        self.client.loop_start()
        if not connected.wait(10):
            raise AssertionError(f"{self.device_id} could not connect")

    def _on_message(self, _c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.frames.append(bytes(message.payload))

    def subscribe_chunks(self) -> None:
        self.subscribe("chunk")

    def subscribe(self, channel: proto.Channel) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *_: done.set()
        self.client.subscribe(proto.topic(self.device_id, channel), 1)
        assert done.wait(10)

    def send(self, channel: proto.Channel, payload: bytes, *, qos: int = 1) -> None:
        self.client.publish(proto.topic(self.device_id, channel), payload, qos=qos)

    def telemetry(self, seq: int) -> None:
        message = proto.Telemetry(
            seq=seq, window_s=1.0, count=1, latency_p50_ms=1.0, latency_p95_ms=1.0
        )
        self.send("telemetry", proto.encode(message))

    def close(self) -> None:
        # disconnect first: it wakes the network thread, which sends DISCONNECT and ends;
        # loop_stop() first waits out the thread's 1 s select (~0.6 s per device).
        self.client.disconnect()
        self.client.loop_stop()


def threads_alive(bridge: FleetBridge) -> bool:
    return bool(bridge._threads) and all(t.is_alive() for t in bridge._threads)


def stored_seqs(fleet: OtaFleet, device_id: str) -> set[int]:
    with Session(fleet.engine) as session:
        rows = session.exec(
            select(TelemetryRecord.seq).where(TelemetryRecord.device_id == device_id)
        ).all()
    return set(rows)


def register_demo_bundle(fleet: OtaFleet) -> tuple[int, str]:
    """A signed demo bundle (about 100 KB) registered as a model version: (id, SHA-256)."""
    from firmware_images.demo import build_demo_bundle

    bundle = build_demo_bundle(private_key=fleet.key, version="v1", seed=3, pad_to=100_000)
    model_id = register_bundle(
        fleet.engine, fleet.store, bundle=bundle.data, task="t", target=TARGET
    )
    return model_id, bundle.sha256


FEDFLEET = str(Path(sys.executable).parent / "fedfleet")


class ReplicaProcess:
    """One ``fedfleet fleet mqtt --replica NAME`` child of a test or bench on ``fleet``'s
    broker and database, logging in as its own broker user; its output kept line by line."""

    def __init__(self, fleet: OtaFleet, name: str, *extra: str) -> None:
        url, schema = fleet._pg or ("", "")
        self.name = name
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [
                *(FEDFLEET, "fleet", "mqtt", "--replica", name),
                *("--broker-port", str(fleet.broker.port), "--drift-every-s", "3600"),
                *("--password-file", str(fleet.root / "broker" / f"fleet-{name}.pass")),
                *extra,
            ],
            env={
                **os.environ,
                "FEDFLEET_FLEET_DATABASE_URL": url,
                "FEDFLEET_FLEET_DATABASE_SCHEMA": schema,
                "FEDFLEET_FLEET_DATA_DIR": str(fleet.root),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip())

    def said(self, words: str) -> bool:
        return any(words in line for line in self.lines)

    def wait_said(self, words: str, timeout_s: float = 30) -> None:
        try:
            wait_for(
                lambda: self.said(words) or self.process.poll() is not None,
                timeout_s=timeout_s,
                what=repr(words),
            )
            assert self.said(words)
        except AssertionError:
            raise AssertionError(f"{words!r} not in: {self.lines[-20:]}") from None

    def connected(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"replica {self.name} exited: {self.lines[-5:]}")
        return self.said("fleet MQTT service connected")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)  # our own child, by PID
        self.process.wait(10)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # our own child, by PID
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode
