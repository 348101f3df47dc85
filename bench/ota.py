"""OTA rollout and telemetry ingestion over a real Mosquitto on loopback.

Part 1 — rollout. One signed int8 bundle of ``--size`` bytes (default 200 KB) is rolled
out to ``--devices`` simulated devices (default 1,000; real :class:`DeviceAgent`s, one
MQTT connection each, in this process) in one wave, through the fleet's MQTT bridge:
each device asks for its chunks, verifies the bundle (signature, hash, target), writes
its inactive slot, self-tests the model with onnxruntime and acknowledges. Measured:
time until every device has all bytes, and until every device has acknowledged.

The floor, in the same run, on the same broker: the same bytes fanned out by
Mosquitto's own C clients — one ``mosquitto_pub`` of the bundle to ``--devices``
``mosquitto_sub`` processes (QoS 1), from the publish until every subscriber exited.

Part 2 — telemetry. ``--telemetry`` messages published as fast as 50 device
connections can (QoS 1) and ingested by the bridge in batches; messages/s until the
last row is in the database, and the row count (nothing may be lost).

    python bench/ota.py [--devices 1000] [--size 200000] [--telemetry 20000]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from sqlmodel import Session, func, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))

from ota_testkit import TARGET, OtaFleet, wait_for

from edge_client import mqtt_protocol as proto
from fleet.broker_config import FLEET_USER
from fleet.db import session_scope
from fleet.demo_bundles import build_demo_bundle
from fleet.models.ota import Rollout, RolloutCreate, RolloutStatus, TelemetryRecord
from fleet.rollouts import create_rollout
from fleet.simulated_devices import SIM_ACTOR, register_bundle


def raw_fanout(fleet: OtaFleet, *, data: bytes, subscribers: int) -> float:
    """Seconds from one mosquitto_pub of ``data`` until ``subscribers`` mosquitto_sub exit."""
    port = str(fleet.broker.port)
    topic = proto.topic("bench-raw", "cmd")
    auth = ["-u", FLEET_USER, "-P", fleet.fleet_password]
    payload = Path(tempfile.mkdtemp()) / "bundle.bin"
    payload.write_bytes(data)
    procs = [
        subprocess.Popen(
            [
                "mosquitto_sub",
                "-h",
                "127.0.0.1",
                "-p",
                port,
                *auth,
                "-t",
                topic,
                "-q",
                "1",
                "-C",
                "1",
                "-i",
                f"raw-{i}",
                "-N",
            ],
            stdout=subprocess.DEVNULL,
        )
        for i in range(subscribers)
    ]
    _wait_subscriptions(fleet, at_least=subscribers)
    began = time.perf_counter()
    subprocess.run(
        [
            "mosquitto_pub",
            "-h",
            "127.0.0.1",
            "-p",
            port,
            *auth,
            "-t",
            topic,
            "-q",
            "1",
            "-f",
            str(payload),
        ],
        check=True,
    )
    for proc in procs:
        proc.wait(timeout=600)
    elapsed = time.perf_counter() - began
    shutil.rmtree(payload.parent, ignore_errors=True)
    return elapsed


def _wait_subscriptions(fleet: OtaFleet, *, at_least: int) -> None:
    counts: list[int] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-sys")
    client.username_pw_set(FLEET_USER, fleet.fleet_password)
    client.on_message = lambda _c, _u, m: counts.append(int(m.payload or b"0"))
    client.on_connect = lambda c, *_: c.subscribe("$SYS/broker/clients/connected")
    client.connect("127.0.0.1", fleet.broker.port)
    client.loop_start()
    # $SYS is refreshed every 10 s; poll until the subscribers are in, then settle.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not counts or counts[-1] < at_least):
        time.sleep(0.5)
    client.loop_stop()
    client.disconnect()
    time.sleep(1.0)


def rollout(fleet: OtaFleet, *, data: bytes) -> tuple[float, float]:
    """(seconds until every device had all chunks, seconds until every device acked)."""
    assert fleet.sim is not None
    model_id = register_bundle(fleet.engine, fleet.store, bundle=data, task="bench", target=TARGET)
    agents = fleet.sim.agents
    began, began_mono = time.perf_counter(), time.monotonic()
    with session_scope(fleet.engine, write=True) as session:
        rollout_id = create_rollout(
            session,
            RolloutCreate(
                model_version_id=model_id, group=fleet.group, waves=[100], ack_timeout_s=600
            ),
            actor=SIM_ACTOR,
        ).id

    def finished() -> bool:
        with Session(fleet.engine) as session:
            row = session.get(Rollout, rollout_id)
            return row is not None and row.status is not RolloutStatus.running

    wait_for(finished, timeout_s=1800, what="the rollout")
    total = time.perf_counter() - began
    with Session(fleet.engine) as session:
        row = session.get(Rollout, rollout_id)
        assert row is not None and row.status is RolloutStatus.succeeded, row
    transfer = max(a.timings["downloaded"] for a in agents) - began_mono
    return transfer, total


def telemetry(fleet: OtaFleet, *, messages: int, publishers: int = 50) -> tuple[float, int]:
    """(messages/s into the database, rows stored) for ``messages`` telemetry messages."""
    devices = fleet.devices[:publishers]
    per = messages // len(devices)
    clients = []
    for device in devices:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{device.device_id}-tm")
        client.username_pw_set(device.device_id, device.password)
        client.max_inflight_messages_set(1000)
        client.connect("127.0.0.1", fleet.broker.port)
        client.loop_start()
        clients.append(client)
    with Session(fleet.engine) as session:
        before = session.exec(select(func.count()).select_from(TelemetryRecord)).one()
    began = time.perf_counter()

    def publish(client: mqtt.Client, device_id: str) -> None:
        for seq in range(per):
            message = proto.Telemetry(
                seq=seq,
                window_s=1.0,
                count=1,
                latency_p50_ms=1.0,
                latency_p95_ms=2.0,
                predictions={"0": 1},
            )
            client.publish(proto.topic(device_id, "telemetry"), proto.encode(message), qos=1)

    threads = [
        threading.Thread(target=publish, args=(c, d.device_id))
        for c, d in zip(clients, devices, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    expected = before + per * len(devices)

    def stored() -> int:
        with Session(fleet.engine) as session:
            return int(session.exec(select(func.count()).select_from(TelemetryRecord)).one())

    deadline = time.monotonic() + 600
    while stored() < expected and time.monotonic() < deadline:
        time.sleep(0.2)
    elapsed = time.perf_counter() - began
    for client in clients:
        client.loop_stop()
        client.disconnect()
    return per * len(devices) / elapsed, stored() - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--size", type=int, default=200_000, help="bundle bytes")
    parser.add_argument("--telemetry", type=int, default=20_000, help="telemetry messages")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # run the clean-up below
    root = Path(tempfile.mkdtemp(prefix="fedfleet-bench-ota-"))
    t0 = time.perf_counter()

    def say(text: str) -> None:
        print(f"[{time.perf_counter() - t0:7.1f} s] {text}", flush=True)

    say(f"enrolling {args.devices} devices and starting Mosquitto ...")
    fleet = OtaFleet(root, devices=args.devices, chunk_size=64 * 1024)
    try:
        fleet.start(heartbeat_s=60.0, telemetry_s=3600.0, chunk_timeout_s=30.0)
        sim = fleet.sim
        assert sim is not None
        wait_for(lambda: all(a.connected for a in sim.agents), timeout_s=300, what="connections")
        bundle = build_demo_bundle(private_key=fleet.key, version="bench-v1", pad_to=args.size)
        say(f"bundle: {len(bundle.data)} bytes; raw fan-out with mosquitto_pub/sub ...")
        floor = raw_fanout(fleet, data=bundle.data, subscribers=args.devices)
        say("rollout through the fleet ...")
        transfer, total = rollout(fleet, data=bundle.data)
        say("telemetry ingestion ...")
        rate, rows = telemetry(fleet, messages=args.telemetry)
        say("stopping")
    finally:
        fleet.close()
        shutil.rmtree(root, ignore_errors=True)
    print()
    print(f"OTA: {len(bundle.data)} B bundle to {args.devices} devices over Mosquitto (loopback)")
    print(f"{'path':<52}{'seconds':>9}{'x floor':>9}")
    print(f"{'raw fan-out: mosquitto_pub -> N x mosquitto_sub':<52}{floor:>9.2f}{1.0:>9.2f}")
    print(f"{'fedfleet: all devices have every chunk':<52}{transfer:>9.2f}{transfer / floor:>9.2f}")
    print(
        f"{'fedfleet: all verified, self-tested, switched, acked':<52}{total:>9.2f}{total / floor:>9.2f}"
    )
    print()
    print(
        f"telemetry: {args.telemetry} messages -> {rows} rows stored "
        f"({'nothing lost' if rows == args.telemetry // 50 * 50 else 'LOST MESSAGES'}), "
        f"{rate:,.0f} messages/s into SQLite"
    )


if __name__ == "__main__":
    main()
