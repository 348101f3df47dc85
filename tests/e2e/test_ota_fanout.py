"""Shared-topic fan-out of a bundle's chunks to a wave of devices (real Mosquitto).

The fleet publishes each chunk once on ``fedfleet/v1/artifacts/<sha256>/chunk`` for all
devices fetching it; a device that was offline during that publication still gets every
chunk when it comes back (a later gather, or its own repair requests).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session

sys.path.insert(0, str(Path(__file__).parent))

from ota_testkit import SIM_ACTOR, TARGET, OtaFleet, register_bundle, wait_for

from firmware_images.demo import build_demo_bundle
from fleet.crud.rollouts import create_rollout
from fleet.db import session_scope
from fleet.models.ota import Rollout, RolloutCreate, RolloutStatus

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DEVICES = 20


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[OtaFleet]:
    ota = OtaFleet(tmp_path, devices=DEVICES)
    try:
        yield ota.start()
    finally:
        ota.close()


def test_a_wave_gets_each_chunk_published_once_and_a_late_device_still_gets_all(
    fleet: OtaFleet,
) -> None:
    # Prepare: a 100 KB bundle (7 chunks of 16 KiB); one device is offline.
    assert fleet.sim is not None and fleet.bridge is not None
    bundle = build_demo_bundle(private_key=fleet.key, version="v-fan", seed=4, pad_to=100_000)
    model_id = register_bundle(
        fleet.engine, fleet.store, bundle=bundle.data, task="t", target=TARGET
    )
    chunks = fleet.bridge.artifact_ref(bundle.sha256).chunks
    late = fleet.sim.agents[0]
    fleet.sim.network.remove(late.client)
    late.client.disconnect()
    wait_for(lambda: not late.connected, timeout_s=10, what="the late device offline")

    # Execute: roll out to everyone in one wave; the offline device returns afterwards.
    with session_scope(fleet.engine, write=True) as session:
        rollout_id = create_rollout(
            session,
            RolloutCreate(model_version_id=model_id, group=fleet.group, waves=[100]),
            actor=SIM_ACTOR,
        ).id
    others = fleet.sim.agents[1:]
    wait_for(
        lambda: all(a.model is not None and a.model.meta.version == "v-fan" for a in others),
        timeout_s=60,
        what="the online devices to install",
    )
    served_before_late = fleet.bridge.stats.chunks_served
    fleet.sim.network.add(late.client, host="127.0.0.1", port=fleet.broker.port, keepalive=60)

    def finished() -> bool:
        with Session(fleet.engine) as session:
            row = session.get(Rollout, rollout_id)
            return row is not None and row.status is not RolloutStatus.running

    wait_for(finished, timeout_s=60, what="the rollout")

    # Assert: every device runs the signed bundle; the online ones cost about one copy
    # of each chunk (not 19), and the late one was served too.
    with Session(fleet.engine) as session:
        row = session.get(Rollout, rollout_id)
        assert row is not None and row.status is RolloutStatus.succeeded
    assert all(
        a.model is not None and a.model.meta.sha256 == bundle.sha256 for a in fleet.sim.agents
    )
    assert fleet.bridge.stats.chunks_shared >= chunks
    assert served_before_late <= 3 * chunks < (DEVICES - 1) * chunks
    assert fleet.bridge.stats.chunks_served > served_before_late
    assert sum(a.rejected_chunks for a in fleet.sim.agents) == 0
