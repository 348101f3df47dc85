"""Downgrades and forged commands, end to end: real Mosquitto, the real fleet bridge and
rollout controller, a real device agent; the attacker publishes *as the fleet* (a leaked
fleet broker credential) on the device's command topic.

Issue 15, "Downgrades are accepted": before, the device installed an older validly
signed bundle and a signed bundle of another task, obeyed unsigned rollbacks, and
reported the command's (unsigned) version id while running the old model.
"""

from __future__ import annotations

import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from sqlmodel import Session, select

sys.path.insert(0, str(Path(__file__).parent))

from ota_testkit import SIM_ACTOR, TARGET, OtaFleet, register_bundle, wait_for

from edge_client.device_agent import DeviceAgent
from edge_client.protocol import mqtt as proto
from firmware_images.demo import build_demo_bundle
from fleet.crud.rollouts import create_rollout
from fleet.db import session_scope
from fleet.models.devices import Device
from fleet.models.ota import Rollout, RolloutCreate, RolloutStatus
from fleet.ota.broker_config import FLEET_USER
from fleet.ota.command_signing import CommandSigner

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TASK = "synthetic-logreg"


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[OtaFleet]:
    ota = OtaFleet(tmp_path, devices=1)
    try:
        yield ota
    finally:
        ota.close()


class FleetImpostor:
    """A broker session with the fleet's credentials (not the bridge's client id)."""

    def __init__(self, fleet: OtaFleet) -> None:
        connected = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"impostor-{uuid.uuid4().hex[:6]}"
        )
        self.client.username_pw_set(FLEET_USER, fleet.fleet_password)
        self.client.on_connect = lambda *_: connected.set()
        self.client.connect("127.0.0.1", fleet.broker.port)
        self.client.loop_start()
        assert connected.wait(10), "the impostor could not connect"

    def send(self, device_id: str, command: proto.Command) -> None:
        info = self.client.publish(proto.topic(device_id, "cmd"), proto.encode(command), qos=1)
        info.wait_for_publish(timeout=10)

    def close(self) -> None:
        self.client.disconnect()  # before loop_stop(): no wait for the loop's 1 s select
        self.client.loop_stop()


def _roll_out(fleet: OtaFleet, model_id: int) -> None:
    with session_scope(fleet.engine, write=True) as session:
        rollout = create_rollout(
            session,
            RolloutCreate(model_version_id=model_id, group=fleet.group, waves=[100]),
            actor=SIM_ACTOR,
        )
        rollout_id = rollout.id

    def done() -> bool:
        with Session(fleet.engine) as session:
            row = session.get(Rollout, rollout_id)
            return row is not None and row.status is RolloutStatus.succeeded

    wait_for(done, timeout_s=60, what=f"the rollout of model {model_id}")


def _ack_of(agent: DeviceAgent, command_id: str) -> proto.Ack:
    wait_for(
        lambda: any(a.command_id == command_id for a in agent.acks),
        timeout_s=30,
        what=f"the device's ack of {command_id}",
    )
    return next(a for a in agent.acks if a.command_id == command_id)


def _reported(fleet: OtaFleet, device_id: str) -> int | None:
    with Session(fleet.engine) as session:
        device = session.get(Device, device_id)
        assert device is not None
        return device.model_version_id


def test_a_fleet_impostor_cannot_downgrade_switch_task_or_roll_back(fleet: OtaFleet) -> None:
    # Prepare: v1 (release 100) then v2 (release 200) rolled out by the real fleet (signed
    # commands); an other-task bundle with a newer release is registered too; a signed
    # rollback was captured early (an old fleet command, replayed later).
    fleet.start()
    assert fleet.sim is not None and fleet.bridge is not None
    agent = fleet.sim.agents[0]
    device = agent.config.device_id
    bundles = {
        "v1": build_demo_bundle(private_key=fleet.key, version="v1", seed=1, release=100),
        "v2": build_demo_bundle(private_key=fleet.key, version="v2", seed=2, release=200),
        "other": build_demo_bundle(
            private_key=fleet.key, version="x9", seed=3, release=900, task="other-task"
        ),
    }
    ids = {
        name: register_bundle(
            fleet.engine, fleet.store, bundle=b.data, task=b.manifest.task, target=TARGET
        )
        for name, b in bundles.items()
    }
    signer = CommandSigner(fleet.key)
    captured = signer.sign(device, proto.Command(command_id="old-back", action="rollback"))
    _roll_out(fleet, ids["v1"])
    _roll_out(fleet, ids["v2"])
    running = agent.model
    assert running is not None and running.meta.version == "v2"
    wait_for(lambda: _reported(fleet, device) == ids["v2"], timeout_s=10, what="v2 reported")
    impostor = FleetImpostor(fleet)
    try:

        def install(name: str, *, claimed: int) -> proto.Ack:
            command = proto.Command(
                command_id=f"evil-{name}",
                action="install",
                model_version_id=claimed,
                artifact=fleet.bridge.artifact_ref(bundles[name].sha256),  # type: ignore[union-attr]
            )
            impostor.send(device, command)
            return _ack_of(agent, command.command_id)

        # Execute + Assert: a replayed older bundle (claiming to be v2) is refused.
        ack = install("v1", claimed=ids["v2"])
        assert (ack.ok, ack.stage) == (False, "floor")
        assert "release 100 is not newer than this device's floor 200" in ack.error
        # ... and a newer-release bundle of another task.
        ack = install("other", claimed=ids["other"])
        assert (ack.ok, ack.stage) == (False, "floor")
        assert "'other-task' model but this device runs 'synthetic-logreg'" in ack.error

        # Execute + Assert: an unsigned rollback is refused with its reason.
        impostor.send(device, proto.Command(command_id="evil-back", action="rollback"))
        ack = _ack_of(agent, "evil-back")
        assert (ack.ok, ack.stage) == (False, "auth")
        assert "unsigned rollback is refused" in ack.error
        # ... and so is a replayed signed one (issued before the last install command).
        impostor.send(device, captured)
        ack = _ack_of(agent, "old-back")
        assert (ack.ok, ack.stage) == (False, "auth")
        assert "replayed command is refused" in ack.error
        # ... and a signed one addressed to another device.
        other = signer.sign("dev-somebody-else", proto.Command(command_id="x", action="rollback"))
        impostor.send(device, other)
        assert "does not verify" in _ack_of(agent, "x").error

        # Through all of it: v2 still runs, and the device (and fleet) report v2.
        running = agent.model
        assert running is not None and running.meta.version == "v2"
        assert running.meta.sha256 == bundles["v2"].sha256
        assert _reported(fleet, device) == ids["v2"]

        # Execute + Assert: a fresh rollback signed by the fleet's key is obeyed (back to
        # the device's own previous slot, v1); replaying that very command does nothing.
        fresh = signer.sign(device, proto.Command(command_id="real-back", action="rollback"))
        impostor.send(device, fresh)
        ack = _ack_of(agent, "real-back")
        assert (ack.ok, ack.stage) == (True, "rolled-back")
        assert agent.model is not None and agent.model.meta.version == "v1"
        impostor.send(device, fresh)
        impostor.send(device, proto.Command(command_id="ping-after", action="ping"))
        _ack_of(agent, "ping-after")
        assert [a.command_id for a in agent.acks].count("real-back") == 1
        assert agent.model is not None and agent.model.meta.version == "v1"
    finally:
        impostor.close()


def test_the_reported_version_comes_from_the_signed_manifest(fleet: OtaFleet) -> None:
    # Prepare: a newer bundle built for registry version N (`image build --model N`).
    fleet.start()
    assert fleet.sim is not None and fleet.bridge is not None
    agent = fleet.sim.agents[0]
    device = agent.config.device_id
    first = build_demo_bundle(private_key=fleet.key, version="v1", seed=1)
    first_id = register_bundle(
        fleet.engine, fleet.store, bundle=first.data, task=TASK, target=TARGET
    )
    # The next id the registry hands out is first_id + 1 (SQLite, one writer: this test).
    bound = build_demo_bundle(
        private_key=fleet.key, version="v2", seed=2, model_version=str(first_id + 1)
    )
    bound_id = register_bundle(
        fleet.engine, fleet.store, bundle=bound.data, task=TASK, target=TARGET
    )
    assert bound_id == first_id + 1
    impostor = FleetImpostor(fleet)
    try:
        # Execute: an unsigned install of it that lies about the version id.
        impostor.send(
            device,
            proto.Command(
                command_id="lying-install",
                action="install",
                model_version_id=first_id,
                artifact=fleet.bridge.artifact_ref(bound.sha256),
            ),
        )
        ack = _ack_of(agent, "lying-install")
    finally:
        impostor.close()
    # Assert: installed (newer, same task), and the id reported is the manifest's.
    assert (ack.ok, ack.model_version_id) == (True, bound_id)
    wait_for(lambda: _reported(fleet, device) == bound_id, timeout_s=10, what="the bound id")
    with Session(fleet.engine) as session:
        assert session.exec(select(Device.model_version_id)).all() == [bound_id]
