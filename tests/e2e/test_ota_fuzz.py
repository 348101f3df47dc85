"""Fuzzing the real bridge over the real Mosquitto (issue 15, "Isolation").

Hypothesis draws payloads (tests/edge_client/poison_payloads.py: bytes, JSON of any
shape, valid messages with hostile values, overflowing literals, deep nesting, non-UTF-8)
and publishes them from one enrolled device on a device->fleet topic; after each example
another device's telemetry must be stored and its chunk request served, and every bridge
thread must still run. One fleet for the module (Mosquitto, bridge, controller); about
30 s. The attacker's rate limits are wide open here so every payload reaches the decoder
(the limits have their own test in test_ota_isolation.py).
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "edge_client"))

import poison_payloads
from ota_testkit import (
    DeviceClient,
    OtaFleet,
    register_demo_bundle,
    stored_seqs,
    threads_alive,
    wait_for,
)

from edge_client.protocol import mqtt as proto
from fleet.ota.guard import Limits, Rate

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

OPEN = Rate(per_s=10_000.0, burst=100_000)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    limits = Limits(rates={c: OPEN for c in proto.UPLINK})
    fleet = OtaFleet(tmp_path_factory.mktemp("fuzz"), devices=2, limits=limits)
    fleet.start(agents=False)
    attacker, victim = (DeviceClient(fleet, d) for d in fleet.devices)
    try:
        _model, sha = register_demo_bundle(fleet)
        victim.subscribe_chunks()
        yield {
            "fleet": fleet,
            "attacker": attacker,
            "victim": victim,
            "request": proto.encode(proto.ChunkRequest(transfer_id=sha, indices=(0,))),
            "seq": itertools.count(),
        }
    finally:
        attacker.close()
        victim.close()
        fleet.close()


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    channel=st.sampled_from(poison_payloads.CHANNELS),
    payloads=st.lists(poison_payloads.payloads(), min_size=1, max_size=4),
)
def test_fuzzed_payloads_on_any_uplink_topic_never_cost_another_device_a_message(
    world: dict[str, Any], channel: proto.Channel, payloads: list[bytes]
) -> None:
    fleet: OtaFleet = world["fleet"]
    attacker: DeviceClient = world["attacker"]
    victim: DeviceClient = world["victim"]
    bridge = fleet.bridge
    assert bridge is not None

    # Execute: the attacker's payloads reach the broker first, then the victim's messages.
    for payload in payloads:
        attacker.client.publish(
            proto.topic(attacker.device_id, channel), payload, qos=1
        ).wait_for_publish(10)
    seq = next(world["seq"])
    frames = len(victim.frames)
    victim.telemetry(seq)
    victim.send("chunk-req", world["request"])

    # Assert: the victim's telemetry stored, its chunk served; every thread alive.
    wait_for(
        lambda: seq in stored_seqs(fleet, victim.device_id),
        timeout_s=10,
        what=f"the victim's telemetry {seq}",
    )
    wait_for(lambda: len(victim.frames) > frames, timeout_s=10, what="the victim's chunk")
    assert threads_alive(bridge)
    assert bridge.stats.thread_errors == 0
    assert victim.device_id not in bridge.stats.guard.poison
