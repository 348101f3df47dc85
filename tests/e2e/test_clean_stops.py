"""Every long-running command stops cleanly on SIGINT and SIGTERM: ``coordinator up``,
``site join``, ``fleet serve``, ``fleet mqtt``, ``device run``. Each exits 0 within a few
seconds with one "stopped" line and no traceback, none of its descendants is left running
or a zombie (checked by PID), and what it owed is written: the MQTT service's last batch
of device messages, the device's offline status. Real processes against real Mosquitto
and SQLite; anything left is killed by PID in a finally."""

from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from ota_testkit import TARGET, OtaFleet
from silo_testkit import (
    FEDFLEET,
    SiloFederation,
    descendants,
    free_port,
    kill_group,
    start_group,
    wait_for,
)

from coordinator.certs import create_dev_ca
from edge_client.protocol import mqtt as proto
from fleet.ota.broker_config import FLEET_USER

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(300)]

STOP_WITHIN_S = 10.0
STOPPED_LINE = re.compile(r"^[^\n]*: stopped( \(SIG[A-Z]+\))?$", re.MULTILINE)


def _state(pid: int) -> str | None:
    """The process's state letter, or None once it is gone (reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def assert_stops_cleanly(
    process: subprocess.Popen[bytes], sig: int, log: Path, *, children: bool = True
) -> None:
    """Signal ``process``; it must exit 0 within STOP_WITHIN_S, leave none of the
    descendants it had before the signal, say "stopped" once and print no traceback.
    ``children``: the command is known to start child processes (checked)."""
    tree = descendants(process.pid)
    if children:
        assert tree, "the command should have started children to stop"
    started = time.monotonic()
    process.send_signal(sig)
    try:
        code = process.wait(timeout=STOP_WITHIN_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {STOP_WITHIN_S:.0f} s after {sig!r}: {log.read_text()[-2000:]}")
    output = log.read_text()
    assert code == 0, output[-2000:]
    deadline = started + STOP_WITHIN_S
    left = [pid for pid in tree if _state(pid) is not None]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [pid for pid in tree if _state(pid) is not None]
    # a zombie whose parent is gone is reaped by init; one left is a child nobody waited for
    assert not left, {pid: _state(pid) for pid in left}
    assert "Traceback" not in output, output[-3000:]
    assert len(STOPPED_LINE.findall(output)) == 1, output[-2000:]


def _wait_for_line(log: Path, text: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 90
    while text not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"never said {text!r}: {log.read_text()[-2000:]}")
        time.sleep(0.1)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_coordinator_up_stops_cleanly(tmp_path: Path, sig: int) -> None:
    fed = SiloFederation(tmp_path)
    create_dev_ca(tmp_path / "certs")
    fed.port, fed.control_port = free_port(), free_port()
    fed.coordinator_toml.write_text(
        f'[superlink]\naddress = "127.0.0.1:{fed.port}"\n'
        f'control-address = "127.0.0.1:{fed.control_port}"\n'
    )
    try:
        fed.start_coordinator()
        assert fed.coordinator is not None
        time.sleep(1.0)  # the SuperLink starts its SuperExec after it answers
        assert_stops_cleanly(fed.coordinator, sig, tmp_path / "coordinator.log")
    finally:
        if fed.coordinator is not None and fed.coordinator.poll() is None:
            kill_group(fed.coordinator)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_site_join_stops_cleanly(tmp_path: Path, sig: int) -> None:
    fed = SiloFederation(tmp_path)
    try:
        fed.start(num_sites=1)
        site = fed.sites[0]
        assert site.process is not None
        wait_for(lambda: descendants(site.process.pid), timeout=60, what="the SuperNode")
        assert_stops_cleanly(site.process, sig, site.log)
    finally:
        for process in [s.process for s in fed.sites] + [fed.coordinator]:
            if process is not None and process.poll() is None:
                kill_group(process)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_fleet_serve_stops_cleanly(tmp_path: Path, sig: int) -> None:
    log = tmp_path / "serve.log"
    port = free_port()
    command = [FEDFLEET, "fleet", "serve", "--port", str(port), "--data-dir", str(tmp_path)]
    process = start_group(command, log=log, cwd=tmp_path)
    try:
        _wait_for_line(log, "Application startup complete", process)
        assert_stops_cleanly(process, sig, log, children=False)
        assert "fleet serve: stopped" in log.read_text()
    finally:
        if process.poll() is None:
            kill_group(process)


@pytest.fixture
def ota(tmp_path: Path) -> Iterator[OtaFleet]:
    """A migrated SQLite fleet database with one enrolled device, and a private Mosquitto
    with the broker-config files for it (no bridge: the command under test is the one)."""
    fleet = OtaFleet(tmp_path, devices=1)
    try:
        fleet.broker.start()
        yield fleet
    finally:
        fleet.broker.close()
        fleet.engine.dispose()


def _client(fleet: OtaFleet, user: str, password: str) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{user}-test")
    client.username_pw_set(user, password)
    client.connect("127.0.0.1", fleet.broker.port)
    client.loop_start()
    return client


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_fleet_mqtt_stops_cleanly_and_writes_its_last_batch(
    ota: OtaFleet, tmp_path: Path, sig: int
) -> None:
    # Prepare: the real `fleet mqtt` on the fleet's database and broker.
    log = tmp_path / "mqtt.log"
    command = [
        FEDFLEET, "fleet", "mqtt", "--broker-port", str(ota.broker.port),
        "--password-file", str(tmp_path / "broker" / "fleet.pass"),
        "--database-url", f"sqlite:///{tmp_path / 'fleet.db'}",
    ]  # fmt: skip
    process = start_group(command, log=log, cwd=tmp_path)
    device = ota.devices[0]
    sender = _client(ota, device.device_id, device.password)
    try:
        _wait_for_line(log, "fleet MQTT service connected", process)
        # Execute: 40 telemetry messages, acknowledged by the broker, then at once the
        # signal, while the service's ingester still holds them (it writes every 0.2 s).
        infos = [
            sender.publish(
                proto.topic(device.device_id, "telemetry"),
                proto.encode(
                    proto.Telemetry(
                        seq=i, window_s=1.0, count=1, latency_p50_ms=1.0, latency_p95_ms=1.0
                    )
                ),
                qos=proto.QOS,
            )
            for i in range(40)
        ]
        for info in infos:
            info.wait_for_publish(timeout=10)
        time.sleep(0.05)  # the broker hands them on to the service

        # Assert: a clean stop, and every message is in the database.
        assert_stops_cleanly(process, sig, log, children=False)
        assert "fleet mqtt: stopped" in log.read_text()
        with sqlite3.connect(tmp_path / "fleet.db") as db:
            (rows,) = db.execute("select count(*) from telemetry_records").fetchone()
        assert rows == 40
    finally:
        sender.disconnect()  # before loop_stop(): no wait for the loop's 1 s select
        sender.loop_stop()
        if process.poll() is None:
            kill_group(process)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_device_run_stops_cleanly_and_says_offline(ota: OtaFleet, tmp_path: Path, sig: int) -> None:
    # Prepare: a device.toml for the enrolled device; a watcher of its retained status.
    device = ota.devices[0]
    home = tmp_path / "device"
    home.mkdir()
    (home / "mqtt.pass").write_text(device.password)
    (home / "device.toml").write_text(
        f'device_id = "{device.device_id}"\ntarget = "{TARGET}"\nslots_dir = "slots"\n'
        f'public_key = "{ota.pubkey}"\n[broker]\nhost = "127.0.0.1"\n'
        f'port = {ota.broker.port}\npassword_file = "mqtt.pass"\n'
    )
    statuses: list[bool] = []
    lock = threading.Lock()

    def on_message(_c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        status = proto.decode(bytes(message.payload), channel="status")
        with lock:
            statuses.append(status.online)  # type: ignore[union-attr]

    watcher = _client(ota, FLEET_USER, ota.fleet_password)
    watcher.on_message = on_message
    watcher.subscribe(proto.topic(device.device_id, "status"), qos=1)
    log = tmp_path / "device.log"
    command = [FEDFLEET, "device", "run", "--config", str(home / "device.toml")]
    process = start_group(command, log=log, cwd=home)
    try:
        wait_for(lambda: True in statuses, timeout=90, what="the device online")

        # Execute + Assert: a clean stop, after which the broker holds it offline.
        assert_stops_cleanly(process, sig, log, children=False)
        assert f"device {device.device_id}: stopped" in log.read_text()
        wait_for(lambda: statuses[-1] is False, timeout=5, what="the offline status")
    finally:
        watcher.disconnect()  # before loop_stop(): no wait for the loop's 1 s select
        watcher.loop_stop()
        if process.poll() is None:
            kill_group(process)
