"""Replicas that do not step on each other (issue 16, item 2), all real: Mosquitto,
PostgreSQL (a database per test), `fedfleet fleet mqtt` and `fleet serve` processes.

- two `fleet mqtt --replica` processes: one leads; kill -9 the leader mid-rollout, the
  other leads within a few seconds, the rollout finishes, and no device gets an install
  twice (a spy counts the commands on the broker);
- exactly-once ingestion: N telemetry messages (QoS 1) over two replicas sharing the
  subscription, one killed -9 mid-stream and started again: exactly N rows;
- `fleet serve --workers 2` on PostgreSQL serves from two processes and stops cleanly;
- the bad-input lines (SQLite with --workers or --replica, an unreachable PostgreSQL).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import psutil
import pytest
from cryptography.hazmat.primitives import serialization
from sqlalchemy import create_engine, func, text
from sqlmodel import Session, select

sys.path.insert(0, str(Path(__file__).parent))

from broker_process import free_port
from ota_testkit import (
    SIM_ACTOR,
    DeviceClient,
    OtaFleet,
    ReplicaProcess,
    register_demo_bundle,
    wait_for,
)

from edge_client.protocol import mqtt as proto
from fleet.crud.rollouts import create_rollout
from fleet.db import session_scope
from fleet.models.ota import Rollout, RolloutCreate, RolloutStatus, TelemetryRecord
from fleet.ota.broker_config import FLEET_USER, SESSION_PER_USER

pytestmark = [pytest.mark.e2e]

PG = "postgresql://postgres@127.0.0.1:5432"
FEDFLEET = str(Path(sys.executable).parent / "fedfleet")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL database of this test's own, dropped after."""
    name = f"leader_{uuid.uuid4().hex[:12]}"
    admin = create_engine(f"{PG.replace('postgresql', 'postgresql+psycopg')}/test")
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    yield f"{PG}/{name}"
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _key_file(fleet: OtaFleet) -> Path:
    path = fleet.root / "command.key"
    path.write_bytes(
        fleet.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


class CommandSpy:
    """The fleet's own broker user watching every device's command topic."""

    def __init__(self, fleet: OtaFleet) -> None:
        self.installs: list[tuple[str, str]] = []  # (device, command id)
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="spy")
        self.client.username_pw_set(FLEET_USER, fleet.fleet_password)
        self.client.on_connect = lambda c, *_: c.subscribe(f"{proto.TOPIC_ROOT}/dev/+/cmd", 1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", fleet.broker.port)
        self.client.loop_start()
        assert subscribed.wait(10)

    def _on_message(self, _c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        device_id = message.topic.split("/")[3]
        command = proto.decode(message.payload, channel="cmd")
        if getattr(command, "action", "") == "install":
            self.installs.append((device_id, command.command_id))

    def close(self) -> None:
        self.client.disconnect()  # before loop_stop(): no wait for the loop's 1 s select
        self.client.loop_stop()


def _rollout_status(fleet: OtaFleet, rollout_id: int) -> tuple[RolloutStatus, int]:
    with Session(fleet.engine) as session:
        row = session.get(Rollout, rollout_id)
        assert row is not None
        return row.status, row.current_wave


def test_leader_killed_mid_rollout_standby_takes_over_no_wave_sent_twice(
    tmp_path: Path, pg_url: str
) -> None:
    # Prepare: 4 devices, two replicas (a leads: started first), a spy on the commands.
    # The broker names each session after its user (broker-config's listener): each
    # replica logs in as its own user (broker-config --replicas), or they knock each other off.
    fleet = OtaFleet(
        tmp_path, devices=4, database=pg_url, replicas=("a", "b"), broker_extra=SESSION_PER_USER
    )
    replicas: list[ReplicaProcess] = []
    spy = None
    try:
        fleet.start(fleet_service=False, heartbeat_s=1.0)
        key = _key_file(fleet)
        replicas.append(ReplicaProcess(fleet, "a", "--command-key", str(key)))
        replicas[0].wait_said("fleet mqtt: leader")
        replicas.append(ReplicaProcess(fleet, "b", "--command-key", str(key)))
        replicas[1].wait_said("fleet mqtt: standby")
        spy = CommandSpy(fleet)
        model_id, _sha = register_demo_bundle(fleet)
        with session_scope(fleet.engine, write=True) as session:
            rollout = create_rollout(
                session,
                RolloutCreate(model_version_id=model_id, group=fleet.group, waves=[50, 100]),
                actor=SIM_ACTOR,
            )
            rollout_id = rollout.id or 0

        # Execute: kill -9 the leader once wave 1 went out.
        wait_for(lambda: len(spy.installs) >= 1, timeout_s=20, what="wave 1's install")
        killed_at = time.monotonic()
        replicas[0].kill()
        replicas[1].wait_said("fleet mqtt: leader", timeout_s=15)
        took_over_s = time.monotonic() - killed_at
        # Restarted under its own name (what a supervisor does): it drains the device
        # messages the broker kept in its session, and stands by.
        replicas[0] = ReplicaProcess(fleet, "a", "--command-key", str(key))
        replicas[0].wait_said("fleet MQTT service connected")
        wait_for(
            lambda: _rollout_status(fleet, rollout_id)[0] is not RolloutStatus.running,
            timeout_s=40,
            what="the rollout to finish",
        )

        # Assert: b led within a few seconds, the rollout finished, one install each.
        assert took_over_s < 5, took_over_s
        assert not replicas[0].said("fleet mqtt: leader")  # the restarted one stands by
        assert _rollout_status(fleet, rollout_id) == (RolloutStatus.succeeded, 1)
        devices = [device for device, _ in spy.installs]
        assert sorted(devices) == sorted(d.device_id for d in fleet.devices), spy.installs
    finally:
        if spy is not None:
            spy.close()
        for replica in replicas:
            replica.stop()
        fleet.close()


def test_two_replicas_store_every_telemetry_message_once_across_a_kill_9(
    tmp_path: Path, pg_url: str
) -> None:
    # Prepare: 30 devices' raw sessions (each under the bridge's per-device telemetry
    # burst, so nothing is throttled), two replicas sharing the subscription.
    fleet = OtaFleet(
        tmp_path, devices=30, database=pg_url, replicas=("a", "b"), broker_extra=SESSION_PER_USER
    )
    replicas: list[ReplicaProcess] = []
    devices: list[DeviceClient] = []
    per_device = 50
    total = per_device * 30
    try:
        fleet.start(fleet_service=False, agents=False)
        key = _key_file(fleet)
        replicas = [
            ReplicaProcess(fleet, "a", "--command-key", str(key)),
            ReplicaProcess(fleet, "b", "--command-key", str(key)),
        ]
        for replica in replicas:
            replica.wait_said("fleet MQTT service connected")
        devices = [DeviceClient(fleet, d) for d in fleet.devices]

        def stored() -> int:
            with Session(fleet.engine) as session:
                return session.exec(select(func.count()).select_from(TelemetryRecord)).one()

        # Execute: publish N (QoS 1); kill -9 replica a mid-stream, then start it again
        # (the same name: the broker kept its session and unacknowledged messages).
        for seq in range(per_device):
            for device in devices:
                device.telemetry(seq)
            if seq == per_device // 2:
                wait_for(lambda: stored() > 0, timeout_s=20, what="the first rows")
                replicas[0].kill()
        before_restart = stored()
        replicas[0] = ReplicaProcess(fleet, "a", "--command-key", str(key))
        replicas[0].wait_said("fleet MQTT service connected")
        try:
            wait_for(lambda: stored() >= total, timeout_s=30, what=f"{total} rows")
        except AssertionError:
            raise AssertionError(f"{stored()} of {total} rows; {replicas[0].lines[-5:]}") from None
        time.sleep(1.0)  # anything redelivered late would land now

        # Assert: exactly N rows, each (device, seq) once; the kill left some to redeliver.
        with Session(fleet.engine) as session:
            rows = session.exec(select(TelemetryRecord.device_id, TelemetryRecord.seq)).all()
        assert len(rows) == total
        assert set(rows) == {(d.device_id, s) for d in fleet.devices for s in range(per_device)}
        assert before_restart < total
        assert replicas[1].process.poll() is None
    finally:
        for device in devices:
            device.close()
        for replica in replicas:
            replica.stop()
        fleet.close()


def test_serve_two_workers_on_postgresql_serve_from_two_pids_and_stop(
    tmp_path: Path, pg_url: str
) -> None:
    # Prepare
    port = free_port()
    process = subprocess.Popen(
        [
            *(FEDFLEET, "fleet", "serve", "--workers", "2", "--port", str(port)),
            *("--log-level", "warning", "--database-url", pg_url),
        ],
        env={**os.environ, "FEDFLEET_FLEET_DATA_DIR": str(tmp_path / "data")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    clients: list[socket.socket] = []
    try:

        def ready() -> bool:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            try:
                return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout_s=50, what="fleet serve --workers 2")
        # The workers: the children listening on the port (not multiprocessing's tracker).
        workers = [
            child
            for child in psutil.Process(process.pid).children()
            if any(
                c.laddr.port == port and c.status == psutil.CONN_LISTEN
                for c in child.net_connections("tcp")
            )
        ]
        assert len(workers) == 2

        # Execute: connections kept open (raw sockets, cheap), each with a request
        # answered; each stays with the worker that accepted it.
        serving: set[int] = set()
        for _ in range(20):
            batch = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(8)]
            for sock in batch:
                sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: fleet\r\n\r\n")
            for sock in batch:
                assert sock.recv(64).startswith(b"HTTP/1.1 200")
            clients.extend(batch)
            for worker in workers:
                connections = worker.net_connections("tcp")
                if any(c.laddr.port == port and c.raddr for c in connections):
                    serving.add(worker.pid)
            if len(serving) == 2:
                break

        # Assert: both workers served; SIGTERM stops all three processes, exit 0.
        assert serving == {w.pid for w in workers}
        process.send_signal(signal.SIGTERM)
        for client in clients:
            client.close()
        assert process.wait(30) == 0
        _gone, alive = psutil.wait_procs(workers, timeout=10)
        assert alive == []
        assert "fleet serve: stopped" in (process.stderr.read() if process.stderr else "")
    finally:
        for client in clients:
            client.close()
        if process.poll() is None:
            process.kill()
            process.wait()


def _fedfleet(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FEDFLEET, *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_bad_input_one_line_each_nothing_started(tmp_path: Path) -> None:
    sqlite = f"sqlite:///{tmp_path / 'fleet.db'}"
    workers = _fedfleet("fleet", "serve", "--workers", "4", "--database-url", sqlite)
    assert workers.returncode == 2
    assert workers.stderr.strip().splitlines() == [
        "error: --workers 4 needs PostgreSQL: SQLite is the single-process embedded default "
        "(drop --workers, or give --database-url postgresql://...)"
    ]
    (tmp_path / "fleet.pass").write_text("x")
    replica = _fedfleet(
        *("fleet", "mqtt", "--replica", "a", "--password-file", str(tmp_path / "fleet.pass")),
        *("--database-url", sqlite),
    )
    assert replica.returncode == 2 and "--replica needs PostgreSQL" in replica.stderr
    assert len(replica.stderr.strip().splitlines()) == 1
    shared = _fedfleet(
        *("fleet", "mqtt", "--replica", "a", "--password-file", str(tmp_path / "fleet.pass")),
        *("--database-url", "postgresql://postgres@127.0.0.1:1/nowhere"),
    )
    assert shared.returncode == 2
    assert shared.stderr.strip().splitlines() == [
        "error: --replica a logs in as its own broker user: pass --password-file "
        f"{tmp_path / 'fleet-a.pass'} (write it with `fedfleet fleet broker-config "
        "--replicas a,...`)"
    ]
    unreachable = _fedfleet(
        *("fleet", "serve", "--workers", "2", "--port", str(free_port())),
        *("--database-url", "postgresql://postgres@127.0.0.1:1/nowhere"),
    )
    assert unreachable.returncode != 0
    lines = unreachable.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach the database"), lines
    assert not (tmp_path / "fleet.db").exists()  # nothing created by the refused commands
