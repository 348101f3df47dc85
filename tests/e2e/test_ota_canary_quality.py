"""Model-aware canaries end to end: a private Mosquitto, the real bridge and controller,
200 real device agents publishing quality signals for the version each runs.

A model 3 points less accurate is halted in its first wave (1 % of the group: 2 of 200
devices) although every install succeeded, and those devices roll back; a model as good
as the one it replaces reaches 100 % with nobody touching anything.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session, select

sys.path.insert(0, str(Path(__file__).parent))

from ota_testkit import SIM_ACTOR, TARGET, OtaFleet, register_bundle, wait_for

from firmware_images.demo import build_demo_bundle
from fleet.crud.rollouts import create_rollout, public_view
from fleet.db import session_scope
from fleet.models.audit import AuditEvent
from fleet.models.ota import Rollout, RolloutCreate, RolloutStatus
from simulation.device_quality import TrafficModel, VersionQuality

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DEVICES = 200
BASE = VersionQuality(accuracy=0.95, latency_ms=2.0)


@pytest.fixture
def traffic() -> TrafficModel:
    return TrafficModel(by_version={}, default=BASE, samples=400, labelled=400, window_s=1.0)


@pytest.fixture
def fleet(tmp_path: Path, traffic: TrafficModel) -> Iterator[OtaFleet]:
    ota = OtaFleet(tmp_path, devices=DEVICES)
    try:
        yield ota.start(traffic=traffic, heartbeat_s=5.0, telemetry_s=3600.0)
    finally:
        ota.close()


def _model(fleet: OtaFleet, version: str, seed: int) -> int:
    bundle = build_demo_bundle(private_key=fleet.key, version=version, seed=seed)
    return register_bundle(fleet.engine, fleet.store, bundle=bundle.data, task="t", target=TARGET)


def _rollout(fleet: OtaFleet, model_id: int, waves: list[int], **quality: float) -> int:
    with session_scope(fleet.engine, write=True) as session:
        rollout = create_rollout(
            session,
            RolloutCreate(
                model_version_id=model_id,
                group=fleet.group,
                waves=waves,
                ack_timeout_s=30,
                **quality,  # type: ignore[arg-type]
            ),
            actor=SIM_ACTOR,
        )
        return rollout.id or 0


def _finished(fleet: OtaFleet, rollout_id: int) -> Rollout:
    def done() -> bool:
        with Session(fleet.engine) as session:
            r = session.get(Rollout, rollout_id)
            return r is not None and r.status not in (RolloutStatus.running, RolloutStatus.paused)

    wait_for(done, timeout_s=45, what=f"rollout {rollout_id} to finish")
    with Session(fleet.engine) as session:
        rollout = session.get(Rollout, rollout_id)
        assert rollout is not None
        return rollout


GATES = {
    "max_accuracy_drop_points": 2.0,
    "max_latency_ratio": 1.5,
    "max_error_rate": 0.01,
    "max_prediction_shift": 0.25,
}


def test_a_worse_model_is_halted_in_the_first_wave_and_a_good_one_goes_to_100(
    fleet: OtaFleet, traffic: TrafficModel
) -> None:
    # Prepare: every device on v1; v2 is 3 points less accurate, v3 as good as v1.
    assert fleet.sim is not None
    v1, v2, v3 = _model(fleet, "v1", 1), _model(fleet, "v2", 2), _model(fleet, "v3", 3)
    traffic.by_version = {v1: BASE, v2: BASE.worse(3.0), v3: BASE}  # type: ignore[misc]
    assert _finished(fleet, _rollout(fleet, v1, [100])).status is RolloutStatus.succeeded

    # Execute: roll v2 out in waves of 1 % and 100 %, watching quality for up to 30 s.
    began = time.monotonic()
    bad = _finished(fleet, _rollout(fleet, v2, [1, 100], soak_s=30.0, **GATES))
    bad_s = time.monotonic() - began

    # Assert: aborted in wave 1 on accuracy, 2 of 200 devices exposed, both back on v1.
    assert bad.status is RolloutStatus.aborted, bad.reason
    assert bad.reason.startswith("wave 1: quality regression on 2 of 200 devices"), bad.reason
    assert "accuracy" in bad.reason and "points lower" in bad.reason
    with Session(fleet.engine) as session:
        view = public_view(session, bad)
        audit = session.exec(
            select(AuditEvent).where(
                AuditEvent.action == "rollout.abort", AuditEvent.entity_id == str(bad.id)
            )
        ).all()
    assert view.progress[0].devices == 2 and view.progress[0].failed == 0
    assert view.progress[1].not_sent == DEVICES - 2 and view.progress[1].installed == 0
    assert len(audit) == 1 and "quality regression" in str(audit[0].after)
    wait_for(
        lambda: set(fleet.sim.versions().values()) == {"v1"},  # type: ignore[union-attr]
        timeout_s=15,
        what="the canary devices to roll back to v1",
    )

    # Execute: the good model, same gates, a 3 s soak per wave.
    good = _finished(fleet, _rollout(fleet, v3, [1, 100], soak_s=3.0, **GATES))

    # Assert: it reached everyone with no command.
    assert good.status is RolloutStatus.succeeded, good.reason
    wait_for(
        lambda: set(fleet.sim.versions().values()) == {"v3"},  # type: ignore[union-attr]
        timeout_s=15,
        what="every device to run v3",
    )
    print(f"worse model halted after {bad_s:.1f} s with 2 of {DEVICES} devices exposed")
