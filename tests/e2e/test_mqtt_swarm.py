"""The light load generator (bench/mqtt_swarm.py) speaks the device protocol: 200 swarm
connections with real broker credentials against a real Mosquitto and the fleet's bridge;
their heartbeats and statuses land in the fleet's device rows and one rollout's install
command reaches every connection."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session, col, func, select

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from mqtt_swarm import Swarm
from ota_testkit import SIM_ACTOR, OtaFleet, register_demo_bundle, wait_for

from fleet.crud.rollouts import create_rollout
from fleet.db import session_scope
from fleet.models.devices import Device, ReportedStatus
from fleet.models.ota import DeviceRolloutState, RolloutCreate, RolloutDevice

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DEVICES = 200


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[OtaFleet]:
    ota = OtaFleet(tmp_path, devices=DEVICES)
    try:
        yield ota.start(agents=False)
    finally:
        ota.close()


def _devices_seen(fleet: OtaFleet) -> int:
    with Session(fleet.engine) as session:
        return session.exec(
            select(func.count())
            .select_from(Device)
            .where(
                col(Device.last_seen_at).is_not(None),
                Device.reported_status == ReportedStatus.online,
            )
        ).one()


def test_200_swarm_connections_are_ingested_and_each_gets_the_install_command(
    fleet: OtaFleet,
) -> None:
    # Prepare: the swarm logs in with the devices' own broker credentials, two workers.
    creds = [(d.device_id, d.password) for d in fleet.devices]
    swarm = Swarm(creds, ports=[fleet.broker.port], processes=2, source_ips=2, heartbeat_s=1.0)
    swarm.start()
    try:
        up = swarm.wait(
            lambda s: s.connected == DEVICES and s.subscribed == DEVICES,
            timeout_s=20,
            what="200 connections subscribed",
        )
        assert up.refused == 0 and up.failed == 0, up.errors

        # Execute (1): heartbeats flow; the bridge stores every device as seen and online.
        wait_for(lambda: _devices_seen(fleet) == DEVICES, timeout_s=20, what="200 devices seen")
        bridge = fleet.bridge
        assert bridge is not None
        wait_for(lambda: bridge.stats.heartbeats >= DEVICES, timeout_s=20, what="heartbeats")
        assert bridge.stats.ignored == 0  # nothing the swarm sent was refused as malformed

        # Execute (2): one rollout to the group.
        model_id, _sha = register_demo_bundle(fleet)
        with session_scope(fleet.engine, write=True) as session:
            rollout_id = create_rollout(
                session,
                RolloutCreate(model_version_id=model_id, group=fleet.group, waves=[100]),
                actor=SIM_ACTOR,
            ).id
        got = swarm.wait(
            lambda s: s.devices_with_install == DEVICES,
            timeout_s=20,
            what="the install command at every connection",
        )
    finally:
        final = swarm.stop()

    # Assert: each connection got a well-formed install command, and the fleet recorded a
    # sent command for each device of the rollout.
    assert got.bad_commands == 0 and got.installs >= DEVICES
    assert final.heartbeats >= DEVICES and final.pubacks >= final.heartbeats
    with Session(fleet.engine) as session:
        rows = session.exec(
            select(RolloutDevice).where(RolloutDevice.rollout_id == rollout_id)
        ).all()
    assert len(rows) == DEVICES
    assert all(r.state is DeviceRolloutState.sent and r.command_id for r in rows)
