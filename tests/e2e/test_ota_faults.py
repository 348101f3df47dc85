"""Fault tests of the OTA path against the real Mosquitto.

Broker restarted mid-transfer, a tampered chunk, ``kill -9`` of an agent mid-install,
and garbage on a device's topics.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from ota_testkit import TARGET, OtaFleet, register_bundle, wait_for

from edge_client.ota import Download, SlotMeta, SlotStore
from edge_client.protocol import mqtt as proto
from firmware_images.demo import build_demo_bundle
from firmware_images.keys import load_public_key
from fleet.ota.broker_config import FLEET_USER

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[OtaFleet]:
    ota = OtaFleet(tmp_path, devices=1)
    try:
        yield ota
    finally:
        ota.close()


@pytest.fixture(params=["mosquitto", "nats"])
def any_broker_fleet(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[OtaFleet]:
    """One device on Mosquitto, and on NATS (the clustered broker, docs/scale-out.md)."""
    ota = OtaFleet(tmp_path, devices=1, broker=request.param)
    try:
        yield ota
    finally:
        ota.close()


def _install(fleet: OtaFleet, version: str, *, pad_to: int = 0, seed: int = 1) -> proto.Command:
    bundle = build_demo_bundle(private_key=fleet.key, version=version, seed=seed, pad_to=pad_to)
    model_id = register_bundle(
        fleet.engine, fleet.store, bundle=bundle.data, task="t", target=TARGET
    )
    assert fleet.bridge is not None
    return proto.Command(
        command_id=f"test-{uuid.uuid4().hex[:8]}",
        action="install",
        model_version_id=model_id,
        artifact=fleet.bridge.artifact_ref(bundle.sha256),
    )


def test_broker_restart_mid_transfer_resumes_and_completes(
    any_broker_fleet: OtaFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = any_broker_fleet
    # Prepare: a 1 MB bundle in 16 KiB chunks, and a device that writes chunks slowly.
    slow_accept = Download.accept

    def accept(self: Download, chunk: proto.Chunk) -> bool:
        time.sleep(0.02)
        return slow_accept(self, chunk)

    monkeypatch.setattr(Download, "accept", accept)
    fleet.start(chunk_timeout_s=1.0)
    assert fleet.sim is not None and fleet.bridge is not None
    agent = fleet.sim.agents[0]
    command = _install(fleet, "v-big", pad_to=1_000_000)
    assert command.artifact is not None
    total = command.artifact.chunks

    # Execute: start the transfer, restart the broker once a fifth has arrived.
    fleet.bridge.send_command(agent.config.device_id, command)
    wait_for(
        lambda: agent._download is not None and agent._download.received >= total // 5,
        timeout_s=30,
        what="a fifth of the chunks",
    )
    at_restart = agent._download.received if agent._download else total
    fleet.broker.restart(down_s=1.0)
    wait_for(lambda: any(a.ok for a in agent.acks), timeout_s=60, what="the install ack")

    # Assert: it was mid-transfer, it resumed (no restart from zero) and installed.
    assert 0 < at_restart < total
    assert agent.model is not None and agent.model.meta.version == "v-big"
    assert fleet.bridge.stats.chunks_served < 2 * total


def test_tampered_chunk_is_refused_and_fetched_again(
    fleet: OtaFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the first time chunk 2 is served, one of its bytes is flipped on the way.
    real = proto.encode_chunk
    tampered: list[int] = []

    def encode_chunk(chunk: proto.Chunk) -> bytes:
        if chunk.index == 2 and not tampered:
            tampered.append(chunk.index)
            data = bytearray(chunk.data)
            data[100] ^= 0xFF
            chunk = proto.Chunk(transfer_id=chunk.transfer_id, index=chunk.index, data=bytes(data))
        return real(chunk)

    monkeypatch.setattr(proto, "encode_chunk", encode_chunk)
    fleet.start()
    assert fleet.sim is not None and fleet.bridge is not None
    agent = fleet.sim.agents[0]
    command = _install(fleet, "v-tamper", pad_to=100_000)

    # Execute
    fleet.bridge.send_command(agent.config.device_id, command)
    wait_for(lambda: bool(agent.acks), timeout_s=30, what="the install ack")

    # Assert: the bad chunk was refused, fetched again, and the install is the signed one.
    assert tampered == [2]
    assert agent.rejected_chunks == 1
    assert agent.acks[-1].ok
    assert agent.model is not None and agent.model.meta.sha256 == command.artifact.sha256  # type: ignore[union-attr]


def test_garbage_on_device_topics_is_ignored_and_the_agent_keeps_working(
    fleet: OtaFleet,
) -> None:
    # Prepare
    fleet.start()
    assert fleet.sim is not None and fleet.bridge is not None
    agent = fleet.sim.agents[0]
    dev = agent.config.device_id
    other = _install(fleet, "v-other", seed=7)
    assert other.artifact is not None
    garbage = [
        (proto.topic(dev, "cmd"), b"{not json"),
        (proto.topic(dev, "cmd"), b'{"schema": 99, "type": "command"}'),
        (proto.topic(dev, "cmd"), b'{"schema": 2, "type": "command", "command_id": 5}'),
        (proto.topic(dev, "cmd"), b"\xff\xfe"),
        (proto.topic(dev, "chunk"), b"FFC1\x00\x05{bad}data"),
        (proto.topic(dev, "chunk"), b"not a chunk"),
        (
            proto.topic(dev, "chunk"),
            proto.encode_chunk(proto.Chunk(transfer_id="a" * 64, index=0, data=b"x")),
        ),
    ]

    # Execute: garbage first, then a real install, with chunks of another transfer mixed in.
    for topic_name, payload in garbage:
        fleet.bridge.client.publish(topic_name, payload, qos=1)
    good = _install(fleet, "v-good", seed=3)
    fleet.bridge.send_command(dev, good)
    for index in (0, 0, 1):  # duplicated chunks of the right transfer, out of order
        data = fleet.bridge._artifact_bytes(good.artifact.sha256)  # type: ignore[union-attr]
        size = good.artifact.chunk_size  # type: ignore[union-attr]
        frame = proto.encode_chunk(
            proto.Chunk(
                transfer_id=good.artifact.sha256,
                index=index,
                data=data[index * size : (index + 1) * size],
            )  # type: ignore[union-attr]
        )
        fleet.bridge.client.publish(proto.topic(dev, "chunk"), frame, qos=1)
    wait_for(lambda: bool(agent.acks), timeout_s=30, what="the install ack")

    # Assert: every bad message was ignored; the good install went through.
    assert agent.ignored >= 6
    assert agent.acks[-1].ok and agent.acks[-1].command_id == good.command_id
    assert agent.model is not None and agent.model.meta.version == "v-good"


def _device_toml(
    path: Path, *, fleet: OtaFleet, device_id: str, password: str, hold: float
) -> Path:
    (path.parent / "mqtt.pass").write_text(password)
    path.write_text(
        f'device_id = "{device_id}"\n'
        f'target = "{TARGET}"\n'
        f'slots_dir = "slots"\n'
        f'public_key = "{fleet.pubkey}"\n'
        "heartbeat_s = 1\n"
        f"hold_before_switch_s = {hold}\n"
        "[broker]\n"
        'host = "127.0.0.1"\n'
        f"port = {fleet.broker.port}\n"
        'password_file = "mqtt.pass"\n'
    )
    return path


def _statuses(fleet: OtaFleet, device_id: str) -> tuple[mqtt.Client, list[proto.Status]]:
    seen: list[proto.Status] = []
    lock = threading.Lock()

    def on_message(_c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        try:
            status = proto.decode(bytes(message.payload), channel="status")
        except proto.ProtocolError:
            return
        with lock:
            seen.append(status)  # type: ignore[arg-type]

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"watch-{uuid.uuid4().hex[:6]}"
    )
    client.username_pw_set(FLEET_USER, fleet.fleet_password)
    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe(proto.topic(device_id, "status"), 1)
    client.connect("127.0.0.1", fleet.broker.port)
    client.loop_start()
    return client, seen


def test_kill_9_during_install_comes_back_on_the_previous_slot(
    fleet: OtaFleet, tmp_path: Path
) -> None:
    # Prepare: a device (its own process) already running v1 from slot a.
    fleet.start(agents=False)
    assert fleet.bridge is not None
    device = fleet.devices[0]
    home = tmp_path / "device"
    home.mkdir()
    store = SlotStore(
        home / "slots", public_key=load_public_key(fleet.pubkey), target=TARGET, max_failed_starts=2
    )
    v1 = build_demo_bundle(private_key=fleet.key, version="v1", seed=1)
    (home / "v1.ffb").write_bytes(v1.data)
    store.write_slot("a", bundle_file=home / "v1.ffb", meta=SlotMeta(None, "v1", v1.sha256))
    store.switch("a")
    assert store.start() is not None
    config = _device_toml(
        home / "device.toml",
        fleet=fleet,
        device_id=device.device_id,
        password=device.password,
        hold=60,
    )
    watcher, statuses = _statuses(fleet, device.device_id)
    # The agent module directly: the same Typer command as `fedfleet device run`, faster start.
    cmd = [sys.executable, "-m", "edge_client.device_cli", "run", "--config", str(config)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: any(s.online for s in statuses), timeout_s=30, what="the agent online")
        # Execute: install v2; kill -9 once the new slot is written, before the switch.
        fleet.bridge.send_command(device.device_id, _install(fleet, "v2", seed=2))
        wait_for(lambda: store.meta("b") is not None, timeout_s=30, what="slot b written")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        statuses.clear()
        config = _device_toml(
            home / "device.toml",
            fleet=fleet,
            device_id=device.device_id,
            password=device.password,
            hold=0,
        )
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: any(s.online for s in statuses), timeout_s=30, what="the agent back")
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)
        watcher.disconnect()  # before loop_stop(): no wait for the loop's 1 s select
        watcher.loop_stop()

    # Assert: after the crash it runs v1 from slot a; the pointer never moved.
    online = [s for s in statuses if s.online]
    assert online[0].model_version == "v1" and online[0].slot == "a"
    assert store.pointer().active == "a"
