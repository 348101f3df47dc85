"""Device protocol versions against the real Mosquitto and the real bridge.

A v1 device is played with the v1 agent's own codec (``v1_protocol.py``, a frozen copy of
the pre-v2 ``edge_client/protocol/mqtt.py``): during the fleet's migration window its
messages are stored and the commands it gets are ones its v1 decoder reads (schema 1,
unsigned); without a window every v1 message is refused with one log line naming the
device and the version, while a v2 device in the same fleet is served as before.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import v1_protocol as v1
from ota_testkit import DeviceClient, OtaFleet, stored_seqs, wait_for

from edge_client.protocol import mqtt as proto

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
FEDFLEET = str(Path(sys.executable).parent / "fedfleet")


def _fleet(tmp_path: Path, *, v1_until: float | None) -> OtaFleet:
    return OtaFleet(tmp_path, devices=2, v1_until=v1_until).start(agents=False)


@pytest.fixture
def open_window(tmp_path: Path) -> Iterator[OtaFleet]:
    fleet = _fleet(tmp_path, v1_until=time.time() + 3600)
    try:
        yield fleet
    finally:
        fleet.close()


@pytest.fixture
def closed_window(tmp_path: Path) -> Iterator[OtaFleet]:
    fleet = _fleet(tmp_path, v1_until=None)
    try:
        yield fleet
    finally:
        fleet.close()


def _v1_telemetry(seq: int) -> bytes:
    return v1.encode(
        v1.Telemetry(seq=seq, window_s=1.0, count=1, latency_p50_ms=1.0, latency_p95_ms=1.0)
    )


def test_a_v1_device_keeps_working_during_the_migration_window(open_window: OtaFleet) -> None:
    fleet, bridge = open_window, open_window.bridge
    assert bridge is not None and bridge.v1_accepted()
    old = DeviceClient(fleet, fleet.devices[0])
    new = DeviceClient(fleet, fleet.devices[1])
    try:
        old.subscribe("cmd")
        new.subscribe("cmd")
        old.send("status", v1.encode(v1.Status(online=True, target="cpu-x86")))
        old.send("telemetry", _v1_telemetry(1))
        new.telemetry(2)
        wait_for(lambda: 1 in stored_seqs(fleet, old.device_id), timeout_s=10, what="v1 row")
        wait_for(lambda: 2 in stored_seqs(fleet, new.device_id), timeout_s=10, what="v2 row")

        # The fleet (with a command key) sends each device a rollback in its own version.
        for device in (old, new):
            bridge.send_command(
                device.device_id,
                proto.Command(command_id=f"back-{device.device_id}", action="rollback"),
            )
        wait_for(lambda: bool(old.frames and new.frames), timeout_s=10, what="both commands")
        to_old, to_new = old.frames[0], new.frames[0]
        command = v1.decode(to_old, channel="cmd")  # what a v1 agent reads: no envelope
        assert isinstance(command, v1.Command) and command.action == "rollback"
        assert json.loads(to_old)["schema"] == 1 and "signature" not in json.loads(to_old)
        signed = proto.decode(to_new, channel="cmd")
        assert isinstance(signed, proto.Command) and signed.signature is not None
        with pytest.raises(v1.ProtocolError):  # a v1 agent could not read the v2 one
            v1.decode(to_new, channel="cmd")

        # Its v1 ack (error "" as v1 agents send it) is recorded like any other.
        old.send(
            "ack",
            v1.encode(
                v1.Ack(
                    command_id=command.command_id, ok=True, action="rollback", stage="rolled-back"
                )
            ),
        )
        wait_for(
            lambda: any(a.command_id == command.command_id for a in bridge.stats.acks_seen),
            timeout_s=10,
            what="the v1 ack",
        )
        assert bridge.stats.v1_refused == 0
    finally:
        old.close()
        new.close()


def test_a_v1_device_is_refused_with_a_line_naming_the_version(
    closed_window: OtaFleet, caplog: pytest.LogCaptureFixture
) -> None:
    fleet, bridge = closed_window, closed_window.bridge
    assert bridge is not None and not bridge.v1_accepted()
    old = DeviceClient(fleet, fleet.devices[0])
    new = DeviceClient(fleet, fleet.devices[1])
    try:
        with caplog.at_level(logging.WARNING, logger="fleet.ota"):
            old.send("telemetry", _v1_telemetry(1))
            old.send("chunk-req", v1.encode(v1.ChunkRequest(transfer_id="ab" * 32, indices=(0,))))
            new.telemetry(2)
            old.telemetry(3)  # the same device, upgraded: served at once
            wait_for(lambda: 2 in stored_seqs(fleet, new.device_id), timeout_s=10, what="v2")
            wait_for(lambda: 3 in stored_seqs(fleet, old.device_id), timeout_s=10, what="v2")
            wait_for(lambda: bridge.stats.v1_refused >= 2, timeout_s=10, what="refusals")
        assert 1 not in stored_seqs(fleet, old.device_id)
        assert bridge.stats.guard.version_refused[old.device_id] == 2
        assert bridge.stats.guard.poison[old.device_id] == 0  # refused, not poison
        lines = [r.getMessage() for r in caplog.records if "protocol v1" in r.getMessage()]
        assert lines and old.device_id in lines[0]
        assert "a device protocol v1 message (schema 1)" in lines[0]
        assert "accepts v2 (schema 2) only" in lines[0]
        assert len(lines) == 1  # one line per device and minute, not one per message
    finally:
        old.close()
        new.close()


def test_the_window_closes_at_its_date(open_window: OtaFleet) -> None:
    bridge = open_window.bridge
    assert bridge is not None
    until = bridge.settings.v1_until
    assert until is not None
    assert bridge.v1_accepted(now=until - 1) and not bridge.v1_accepted(now=until)


def test_the_fleet_mqtt_process_refuses_v1_unless_its_window_is_open(tmp_path: Path) -> None:
    # Prepare: the real broker and one enrolled device speaking v1 over its own session.
    fleet = OtaFleet(tmp_path, devices=1)
    fleet.broker.start()
    device = DeviceClient(fleet, fleet.devices[0])
    log = tmp_path / "fleet-mqtt.log"
    base = [
        *(FEDFLEET, "fleet", "mqtt", "--broker-port", str(fleet.broker.port)),
        *("--password-file", str(tmp_path / "broker" / "fleet.pass")),
        *("--database-url", f"sqlite:///{tmp_path / 'fleet.db'}"),
    ]
    env = {**os.environ, "FEDFLEET_FLEET_DATA_DIR": str(tmp_path)}
    service: subprocess.Popen[bytes] | None = None

    def run(extra: list[str]) -> subprocess.Popen[bytes]:
        with open(log, "wb") as out:
            process = subprocess.Popen(base + extra, env=env, stdout=out, stderr=subprocess.STDOUT)
        wait_for(lambda: "connected to" in log.read_text(), timeout_s=60, what="fleet mqtt")
        return process

    try:
        # Execute / Assert: no window (the default) -> the v1 message is refused, named.
        service = run([])
        device.send("telemetry", _v1_telemetry(1))
        wait_for(
            lambda: "protocol v1" in log.read_text().split("connected to")[-1],
            timeout_s=30,
            what="refusal",
        )
        text = log.read_text()
        assert "device protocol v2 only: v1 devices are refused" in text, text
        assert f"device {device.device_id}: message refused" in text, text
        assert "a device protocol v1 message (schema 1)" in text, text
        assert 1 not in stored_seqs(fleet, device.device_id)
        service.terminate()
        assert service.wait(timeout=15) == 0
        # With a window that is still open, the same v1 device is served.
        service = run(["--protocol-v1-until", "2999-01-01"])
        assert "v1 devices served until 2999-01-01T00:00:00+00:00" in log.read_text()
        device.send("telemetry", _v1_telemetry(2))
        wait_for(lambda: 2 in stored_seqs(fleet, device.device_id), timeout_s=30, what="v1 row")
    finally:
        if service is not None and service.poll() is None:
            service.terminate()
            service.wait(timeout=15)
        device.close()
        fleet.close()
