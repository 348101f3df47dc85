"""End to end with a real broker (Mosquitto, and NATS, the clustered one): 20 devices, a
staged rollout, and a bad model."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session, select

sys.path.insert(0, str(Path(__file__).parent))

from ota_testkit import SIM_ACTOR, TARGET, OtaFleet, register_bundle, wait_for

from firmware_images.demo import build_demo_bundle
from fleet.crud.rollouts import create_rollout, public_view
from fleet.db import session_scope
from fleet.models.devices import Device
from fleet.models.ota import Rollout, RolloutCreate, RolloutStatus

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(params=["mosquitto", "nats"])
def fleet(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[OtaFleet]:
    ota = OtaFleet(tmp_path, devices=20, broker=request.param)
    try:
        yield ota.start()
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
                ack_timeout_s=30,
            ),
            actor=SIM_ACTOR,
        )
        return rollout.id or 0


def _status(fleet: OtaFleet, rollout_id: int) -> RolloutStatus:
    with Session(fleet.engine) as session:
        rollout = session.get(Rollout, rollout_id)
        assert rollout is not None
        return rollout.status


def test_staged_rollout_then_a_bad_model_aborts_and_devices_keep_the_good_one(
    fleet: OtaFleet,
) -> None:
    # Prepare: a good signed int8 bundle (v1) and one that fails its self-test (v2).
    assert fleet.sim is not None
    good = build_demo_bundle(private_key=fleet.key, version="v1-int8", seed=1)
    bad = build_demo_bundle(
        private_key=fleet.key, version="v2-broken", seed=2, break_self_test=True
    )
    good_id = register_bundle(fleet.engine, fleet.store, bundle=good.data, task="t", target=TARGET)
    bad_id = register_bundle(fleet.engine, fleet.store, bundle=bad.data, task="t", target=TARGET)

    # Execute: roll v1 out in waves 5, 25, 100 %.
    first = _rollout(fleet, good_id, [5, 25, 100])
    wait_for(
        lambda: _status(fleet, first) is not RolloutStatus.running,
        timeout_s=90,
        what="the first rollout to finish",
    )

    # Assert: it succeeded in three waves, every agent runs v1 and the fleet knows it.
    assert _status(fleet, first) is RolloutStatus.succeeded
    assert set(fleet.sim.versions().values()) == {"v1-int8"}
    with Session(fleet.engine) as session:
        view = public_view(session, session.get(Rollout, first))  # type: ignore[arg-type]
        assert [w.devices for w in view.progress] == [1, 4, 15]
        assert all(w.installed == w.devices for w in view.progress)
    wait_for(lambda: _all_on(fleet, good_id), timeout_s=10, what="device rows to show model v1")

    # Execute: roll out the broken model.
    second = _rollout(fleet, bad_id, [5, 25, 100])
    wait_for(
        lambda: _status(fleet, second) is not RolloutStatus.running,
        timeout_s=60,
        what="the second rollout to stop",
    )

    # Assert: aborted at the first wave; nobody left v1; later waves were never sent.
    assert _status(fleet, second) is RolloutStatus.aborted
    with Session(fleet.engine) as session:
        view = public_view(session, session.get(Rollout, second))  # type: ignore[arg-type]
    assert view.progress[0].failed == view.progress[0].devices == 1
    assert "wave 1" in view.reason
    assert all(w.not_sent == w.devices and w.waiting == 0 for w in view.progress[1:])
    assert set(fleet.sim.versions().values()) == {"v1-int8"}
    failed = [a for agent in fleet.sim.agents for a in agent.acks if not a.ok]
    assert len(failed) == 1 and failed[0].stage == "self-test"
    assert _all_on(fleet, good_id)


def _all_on(fleet: OtaFleet, model_id: int) -> bool:
    with Session(fleet.engine) as session:
        versions = session.exec(select(Device.model_version_id)).all()
    return len(versions) == 20 and set(versions) == {model_id}
