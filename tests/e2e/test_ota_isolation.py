"""One device cannot stop the fleet (issue 15, "Isolation"), against the real Mosquitto,
the real bridge threads and the real ``fedfleet fleet mqtt`` process.

An enrolled device (its own broker credentials, so the ACL lets it publish only its own
topics) sends poison payloads and floods; another device's messages must still be stored,
every bridge thread must still run, and the poison must be counted against the sender.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session

sys.path.insert(0, str(Path(__file__).parent))

from ota_testkit import (
    POISONS,
    SIM_ACTOR,
    TARGET,
    DeviceClient,
    OtaFleet,
    register_bundle,
    register_demo_bundle,
    stored_seqs,
    threads_alive,
    wait_for,
)

from edge_client.protocol import mqtt as proto
from fleet import audit
from fleet.crud.rollouts import create_rollout
from fleet.db import session_scope
from fleet.models.devices import Device
from fleet.models.ota import (
    DeviceRolloutState,
    DriftReference,
    RolloutCreate,
    RolloutDevice,
    TelemetryRecord,
)
from fleet.ota.guard import Limits, Rate

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FEDFLEET = str(Path(sys.executable).parent / "fedfleet")


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[OtaFleet]:
    ota = OtaFleet(tmp_path, devices=2)
    try:
        yield ota.start(agents=False)
    finally:
        ota.close()


@pytest.fixture
def pair(fleet: OtaFleet) -> Iterator[tuple[DeviceClient, DeviceClient]]:
    attacker, victim = (DeviceClient(fleet, d) for d in fleet.devices)
    try:
        yield attacker, victim
    finally:
        attacker.close()
        victim.close()


def test_a_300_kb_nested_chunk_request_leaves_the_chunk_server_serving(
    fleet: OtaFleet, pair: tuple[DeviceClient, DeviceClient]
) -> None:
    # Prepare: a stored bundle; the victim listens on its chunk topic.
    attacker, victim = pair
    bridge = fleet.bridge
    assert bridge is not None
    _model, sha = register_demo_bundle(fleet)
    ref = bridge.artifact_ref(sha)
    victim.subscribe_chunks()

    # Execute: the 300 KB nested request (finding a), then a good request from the victim.
    attacker.send("chunk-req", POISONS["nested-300kb"])
    wait_for(
        lambda: bridge.stats.ignored >= 1 or not threads_alive(bridge),
        timeout_s=10,
        what="the request handled",
    )
    victim.send("chunk-req", proto.encode(proto.ChunkRequest(transfer_id=sha, indices=(0, 1))))

    # Assert: the chunk server lives and serves; the poison is counted against the sender.
    wait_for(lambda: len(victim.frames) >= 2, timeout_s=10, what="the victim's chunks")
    chunks = [proto.decode_chunk(f) for f in victim.frames]
    assert sorted(c.index for c in chunks) == [0, 1] and chunks[0].transfer_id == ref.sha256
    assert threads_alive(bridge)
    assert bridge.stats.guard.poison == {attacker.device_id: 1}


def test_poison_on_every_uplink_topic_takes_no_other_devices_message_with_it(
    fleet: OtaFleet, pair: tuple[DeviceClient, DeviceClient]
) -> None:
    # Prepare: a rollout that sent both devices an install (nobody answers but the test).
    attacker, victim = pair
    bridge = fleet.bridge
    assert bridge is not None
    model_id, _sha = register_demo_bundle(fleet)
    with session_scope(fleet.engine, write=True) as session:
        rollout_id = create_rollout(
            session,
            RolloutCreate(model_version_id=model_id, group=fleet.group, waves=[100]),
            actor=SIM_ACTOR,
        ).id

    def row() -> RolloutDevice | None:
        with Session(fleet.engine) as session:
            return session.get(RolloutDevice, (rollout_id, victim.device_id))

    wait_for(
        lambda: (r := row()) is not None and r.state is DeviceRolloutState.sent,
        timeout_s=10,
        what="the install sent",
    )
    sent = row()
    assert sent is not None and sent.command_id is not None

    # Execute: each poison on each device->fleet topic, the victim's messages in between
    # (in the same ingest batch: published back to back within its 50 ms window).
    seq = 0
    poisons = [v for v in POISONS.values() if len(v) <= proto.MAX_PACKET_BYTES]
    for payload in poisons:
        for channel in ("heartbeat", "telemetry", "ack", "status"):
            attacker.send(channel, payload)
            victim.telemetry(seq)
            seq += 1
    victim.send(
        "ack",
        proto.encode(
            proto.Ack(
                command_id=sent.command_id,
                ok=True,
                action="install",
                rollout_id=rollout_id,
                model_version_id=model_id,
                stage="installed",
            )
        ),
    )
    attacker.send("heartbeat", POISONS["nested-300kb"])

    # Assert: every victim message stored, its ack applied, the poison counted, all alive.
    wait_for(
        lambda: stored_seqs(fleet, victim.device_id) == set(range(seq)),
        timeout_s=20,
        what=f"the victim's {seq} telemetry messages",
    )
    wait_for(
        lambda: (r := row()) is not None and r.state is DeviceRolloutState.installed,
        timeout_s=10,
        what="the victim's ack applied",
    )
    guard = bridge.stats.guard
    # Each poison is dropped: refused by decoding, or before it by the rate limit.
    expected = 4 * len(poisons) + 1
    wait_for(
        lambda: guard.poison[attacker.device_id] + guard.throttled[attacker.device_id] >= expected,
        timeout_s=10,
        what="every poison message counted",
    )
    bridge.flush()
    counts = (guard.poison[attacker.device_id], guard.throttled[attacker.device_id])
    assert sum(counts) == expected, counts
    assert guard.poison[attacker.device_id] >= 4 * len(poisons) - 4
    assert stored_seqs(fleet, attacker.device_id) == set()
    assert victim.device_id not in bridge.stats.guard.poison
    assert threads_alive(bridge) and bridge.stats.thread_errors == 0


def test_a_payload_over_the_packet_limit_is_refused_by_the_broker_unread(
    fleet: OtaFleet, pair: tuple[DeviceClient, DeviceClient]
) -> None:
    # Prepare
    attacker, victim = pair
    bridge = fleet.bridge
    assert bridge is not None
    received = bridge.stats.received
    gone = threading.Event()
    attacker.client.on_disconnect = lambda *_: gone.set()

    # Execute: 2 MB on the heartbeat topic (max_packet_size is 1 MiB + 64 KiB).
    attacker.send("heartbeat", POISONS["huge-2mb"], qos=0)
    victim.telemetry(1)

    # Assert: the broker disconnected the sender; the fleet never read those bytes and
    # stored the victim's message.
    assert gone.wait(10), "the broker kept the session of a device sending 2 MB"
    wait_for(lambda: stored_seqs(fleet, victim.device_id) == {1}, timeout_s=10, what="victim")
    assert bridge.stats.received == received + 1 and not bridge.stats.guard.poison


def test_a_batch_the_database_refuses_is_written_one_message_at_a_time(
    fleet: OtaFleet,
) -> None:
    # Prepare: the database itself refuses a's telemetry rows (a trigger: the stand-in for
    # any value a stricter database refuses), in a batch with b's message.
    bridge = fleet.bridge
    assert bridge is not None
    a, b = (d.device_id for d in fleet.devices)
    with fleet.engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TRIGGER refuse_a BEFORE INSERT ON telemetry_records "
            f"WHEN NEW.device_id = '{a}' BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        )
    batch = [("msg", proto.topic(d, "telemetry"), proto.encode(_telemetry(7))) for d in (a, b)]

    # Execute
    bridge.ingest_batch(batch)

    # Assert: b's row stored; a's message dropped and counted as poison, alone.
    assert stored_seqs(fleet, b) == {7} and stored_seqs(fleet, a) == set()
    assert bridge.stats.guard.poison == {a: 1}


def test_a_flooding_device_is_throttled_and_flagged_and_others_are_unaffected(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: tight limits so the flood is short; the victim stays within them.
    limits = Limits(
        rates={
            "telemetry": Rate(per_s=5.0, burst=20),
            "chunk-req": Rate(per_s=20.0, burst=50),
        },
        pending_per_device=10,
    )
    fleet = OtaFleet(tmp_path, devices=2, limits=limits).start(agents=False)
    attacker, victim = (DeviceClient(fleet, d) for d in fleet.devices)
    try:
        bridge = fleet.bridge
        assert bridge is not None
        _model, sha = register_demo_bundle(fleet)
        victim.subscribe_chunks()
        request = proto.encode(proto.ChunkRequest(transfer_id=sha, indices=(0,)))

        # Execute: 2,000 telemetry messages and 2,000 chunk requests as fast as paho sends
        # them; the victim's 10 telemetry messages and one chunk request among them.
        started = time.monotonic()
        for i in range(2000):
            attacker.send("telemetry", proto.encode(_telemetry(i)), qos=0)
            attacker.send("chunk-req", request, qos=0)
            if i % 200 == 0:
                victim.telemetry(i // 200)
        victim.send("chunk-req", request)
        wait_for(
            lambda: stored_seqs(fleet, victim.device_id) == set(range(10)),
            timeout_s=20,
            what="the victim's telemetry",
        )
        wait_for(lambda: len(victim.frames) >= 1, timeout_s=10, what="the victim's chunk")
        elapsed = time.monotonic() - started
        bridge.flush()
        stored = len(stored_seqs(fleet, attacker.device_id))
    finally:
        attacker.close()
        victim.close()
        fleet.close()

    # Assert: the attacker got its burst and its rate, no more; flagged once per channel.
    assert stored <= 20 + 5 * elapsed + 1, f"{stored} of 2000 stored in {elapsed:.1f} s"
    guard = bridge.stats.guard
    assert guard.throttled[attacker.device_id] > 2000
    assert victim.device_id not in guard.throttled and victim.device_id not in guard.dropped
    assert guard.pending == (0, 0)
    flags = [r.getMessage() for r in caplog.records if attacker.device_id in r.getMessage()]
    assert sum("exceeds its telemetry rate" in m for m in flags) == 1
    assert sum("exceeds its chunk-req rate" in m for m in flags) == 1


def _telemetry(seq: int) -> proto.Telemetry:
    return proto.Telemetry(seq=seq, window_s=1.0, count=1, latency_p50_ms=1.0, latency_p95_ms=1.0)


def test_fleet_mqtt_keeps_running_past_bad_drift_rows(tmp_path: Path) -> None:
    # Prepare: the real `fleet mqtt` process on a database holding the finding's rows — a
    # one-bin reference (stored before the API refused it) and a telemetry bin count of
    # 2^63 (stored before the decoder bounded it) — and one good model that drifted. One
    # device per model (on record as running it), and an agreement of one device
    # (FEDFLEET_FLEET_DRIFT_MIN_DEVICES=1, read by the real process).
    fleet = OtaFleet(tmp_path, devices=3)
    fleet.broker.start()
    models = [
        register_bundle(fleet.engine, fleet.store, bundle=b, task="t", target=TARGET)
        for b in (b"one-bin", b"huge-count", b"good")
    ]
    one_bin, huge, good = models
    with (
        session_scope(fleet.engine, write=True) as session,
        audit.exempt(session, reason="rows as an older fleet stored them"),
    ):
        session.add(
            DriftReference(model_version_id=one_bin, edges=[[]], proportions=[[1.0]], samples=9)
        )
        for model in (huge, good):
            session.add(
                DriftReference(
                    model_version_id=model, edges=[[0.0]], proportions=[[0.5, 0.5]], samples=9
                )
            )
        features = {one_bin: [[500]], huge: [[2**63, 1]], good: [[0, 500]]}
        for (model, counts), enrolled in zip(features.items(), fleet.devices, strict=True):
            device = enrolled.device_id
            row = session.get(Device, device)
            assert row is not None
            row.model_version_id = model
            session.add(row)
            session.add(
                TelemetryRecord(
                    device_id=device,
                    model_version_id=model,
                    seq=1,
                    window_s=1.0,
                    count=500,
                    latency_p50_ms=1.0,
                    latency_p95_ms=1.0,
                    features=counts,
                )
            )
        session.flush()
    log = tmp_path / "fleet-mqtt.log"
    env = {
        **os.environ,
        "FEDFLEET_FLEET_DATA_DIR": str(tmp_path),
        "FEDFLEET_FLEET_DRIFT_MIN_DEVICES": "1",
    }
    command = [
        *(FEDFLEET, "fleet", "mqtt", "--broker-port", str(fleet.broker.port)),
        *("--password-file", str(tmp_path / "broker" / "fleet.pass")),
        *("--database-url", f"sqlite:///{tmp_path / 'fleet.db'}", "--drift-every-s", "0.5"),
    ]
    with open(log, "wb") as out:
        service = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        # Execute: let it run several drift checks.
        wait_for(
            lambda: "drift event" in log.read_text() or service.poll() is not None,
            timeout_s=60,
            what="a drift check",
        )
        time.sleep(2.0)

        # Assert: alive; the good model's event raised; each bad row reported once.
        text = log.read_text()
        assert service.poll() is None, text[-3000:]
        assert f"model {good} PSI" in text and "1 of 1 devices agreed" in text, text[-3000:]
        assert text.count(f"drift reference of model version {one_bin}") == 1, text[-3000:]
        assert text.count("telemetry row") == 1, text[-3000:]
    finally:
        if service.poll() is None:
            service.terminate()
            service.wait(timeout=15)
        fleet.close()
