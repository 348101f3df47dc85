"""End to end with the real Mosquitto and simulated devices: a rollout is not held by a
device that never shows up (released once retired or silent past the bound), and an
operator's abort with rollback returns the first wave's devices to their old model."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session, select

sys.path.insert(0, str(Path(__file__).parent))

from ota_testkit import SIM_ACTOR, TARGET, OtaFleet, enroll_devices, register_bundle, wait_for

from firmware_images.demo import build_demo_bundle
from fleet.crud.devices import retire_device
from fleet.crud.rollouts import abort_rollout, create_rollout, detail_view
from fleet.db import session_scope
from fleet.models.devices import Device
from fleet.models.ota import (
    DevicePhase,
    DeviceRolloutState,
    Rollout,
    RolloutCreate,
    RolloutDetail,
    RolloutDevice,
    RolloutStatus,
)
from fleet.ota.controller import RolloutController

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[OtaFleet]:
    ota = OtaFleet(tmp_path, devices=4)
    try:
        yield ota
    finally:
        ota.close()


def _rollout(fleet: OtaFleet, model_id: int, waves: list[int]) -> int:
    with session_scope(fleet.engine, write=True) as session:
        rollout = create_rollout(
            session,
            RolloutCreate(
                model_version_id=model_id,
                group=fleet.group,
                waves=waves,
                max_failure_rate=0.1,
                ack_timeout_s=600,  # 3 × this is what a never-seen device used to cost
            ),
            actor=SIM_ACTOR,
        )
        return rollout.id or 0


def _view(fleet: OtaFleet, rollout_id: int) -> RolloutDetail:
    with Session(fleet.engine) as session:
        rollout = session.get(Rollout, rollout_id)
        assert rollout is not None
        return detail_view(session, rollout)


def test_a_never_seen_device_no_longer_holds_the_rollout(fleet: OtaFleet) -> None:
    # Prepare: 4 running devices and 2 enrolled in the group that never connect.
    ghosts = [
        d.device_id
        for d in enroll_devices(
            fleet.engine, count=2, group=fleet.group, target=TARGET, prefix="ghost"
        )
    ]
    fleet.start()
    assert fleet.controller is not None and fleet.sim is not None
    model = build_demo_bundle(private_key=fleet.key, version="v1", seed=1)
    model_id = register_bundle(
        fleet.engine, fleet.store, bundle=model.data, task="t", target=TARGET
    )

    # Execute: roll it out to everyone at once; the real devices install.
    rollout_id = _rollout(fleet, model_id, [100])
    wait_for(
        lambda: _view(fleet, rollout_id).progress[0].installed == 4,
        timeout_s=60,
        what="the 4 running devices to install",
    )
    # Assert: it waits for exactly the two ghosts, and says so.
    view = _view(fleet, rollout_id)
    assert view.status is RolloutStatus.running and view.waiting == 2
    assert sorted(d.device_id for d in view.devices if d.phase is DevicePhase.waiting) == sorted(
        ghosts
    )

    # Execute: retire one ghost: it is released at once; the other still holds the wave.
    with session_scope(fleet.engine, write=True) as session:
        device = session.get(Device, ghosts[0])
        assert device is not None
        retire_device(session, device, actor=SIM_ACTOR, offline_after_s=90)
    wait_for(
        lambda: _view(fleet, rollout_id).progress[0].released == 1,
        timeout_s=10,
        what="the retired device to be released",
    )
    assert _view(fleet, rollout_id).status is RolloutStatus.running

    # Execute: lower the silence bound (as `fleet mqtt --release-after-s` does): the other
    # ghost, silent since its install went out, is released and the rollout succeeds.
    fleet.controller.release_after_s = 1.0
    wait_for(
        lambda: _view(fleet, rollout_id).status is not RolloutStatus.running,
        timeout_s=15,
        what="the rollout to finish without the ghosts",
    )
    view = _view(fleet, rollout_id)
    assert view.status is RolloutStatus.succeeded
    assert (view.progress[0].installed, view.progress[0].released, view.progress[0].failed) == (
        4,
        2,
        0,
    )
    errors = {d.device_id: d.error for d in view.devices}
    assert "retired" in errors[ghosts[0]] and "silent" in errors[ghosts[1]]
    assert set(fleet.sim.versions().values()) == {"v1"}


def test_an_abort_with_rollback_returns_the_first_wave_to_the_old_model(fleet: OtaFleet) -> None:
    # Prepare: every device on v1 (the test's controller thread rolls it out).
    fleet.start()
    assert fleet.sim is not None and fleet.bridge is not None
    v1 = build_demo_bundle(private_key=fleet.key, version="v1", seed=1)
    v2 = build_demo_bundle(private_key=fleet.key, version="v2", seed=2)
    v1_id = register_bundle(fleet.engine, fleet.store, bundle=v1.data, task="t", target=TARGET)
    v2_id = register_bundle(fleet.engine, fleet.store, bundle=v2.data, task="t", target=TARGET)
    first = _rollout(fleet, v1_id, [100])
    wait_for(
        lambda: _view(fleet, first).status is RolloutStatus.succeeded,
        timeout_s=60,
        what="v1 on every device",
    )
    # From here this test steps the controller itself, so wave 1 is still current when
    # the operator aborts.
    fleet.controller = None
    controller = RolloutController(engine=fleet.engine, sender=fleet.bridge)

    # Execute: wave 1 of v2 (2 of 4 devices) installs; the operator aborts with rollback.
    second = _rollout(fleet, v2_id, [50, 100])
    controller.step()
    view = _view(fleet, second)
    wave1 = sorted(d.device_id for d in view.devices if d.wave == 0)
    wait_for(
        lambda: _view(fleet, second).progress[0].installed == 2,
        timeout_s=60,
        what="wave 1 to install v2",
    )
    assert {fleet.sim.versions()[d] for d in wave1} == {"v2"}
    with session_scope(fleet.engine, write=True) as session:
        abort_rollout(session, second, rollback=True, actor=SIM_ACTOR)
    controller.step()

    # Assert: wave 1 is back on v1 (device and fleet rows agree); wave 2 was never sent.
    wait_for(
        lambda: _view(fleet, second).progress[0].rolled_back == 2,
        timeout_s=60,
        what="wave 1's rollback acknowledgements",
    )
    assert set(fleet.sim.versions().values()) == {"v1"}
    view = _view(fleet, second)
    assert view.status is RolloutStatus.aborted and view.waiting == 0
    assert view.progress[1].not_sent == 2 and not view.progress[1].sent
    with Session(fleet.engine) as session:
        rows = session.exec(select(RolloutDevice).where(RolloutDevice.rollout_id == second)).all()
        assert {r.state for r in rows if r.wave == 1} == {DeviceRolloutState.pending}
    wait_for(
        lambda: _models(fleet) == {v1_id},
        timeout_s=10,
        what="device rows to show v1",
    )


def _models(fleet: OtaFleet) -> set[int | None]:
    with Session(fleet.engine) as session:
        return set(session.exec(select(Device.model_version_id)).all())
