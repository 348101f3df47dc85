"""Drift one device cannot forge, and references that reach the devices (real Mosquitto,
real bridge): issue 15's finding "one device's telemetry (all counts in one bin, any
model version) raises a drift event for the whole group"."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlmodel import Session, func, select

sys.path.insert(0, str(Path(__file__).parent))

from ota_testkit import SIM_ACTOR, TARGET, DeviceClient, OtaFleet, register_bundle, wait_for

from edge_client.protocol import mqtt as proto
from firmware_images.demo import build_demo_bundle
from fleet.crud.rollouts import create_rollout
from fleet.crud.telemetry import event_public, set_reference
from fleet.db import session_scope
from fleet.models.devices import Device
from fleet.models.ota import (
    DriftEvent,
    DriftReference,
    Reference,
    Rollout,
    RolloutCreate,
    RolloutStatus,
    TelemetryRecord,
)
from fleet.ota.drift import reference_from_data
from fleet.ota.telemetry import check_all

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

QUARTERS = Reference(
    edges=((-1.0, 0.0, 1.0), (-1.0, 0.0, 1.0)),
    proportions=((0.25,) * 4, (0.25,) * 4),
    samples=1000,
)
STABLE = ((50, 50, 50, 50), (50, 50, 50, 50))
ONE_BIN = ((0, 0, 0, 200), (200, 0, 0, 0))  # the finding's forged window


@pytest.fixture
def raw(tmp_path: Path) -> Iterator[tuple[OtaFleet, list[DeviceClient], int, int]]:
    """Five devices of group ``wards`` driven as raw broker sessions, all on record as
    running model version A; versions A and B both have the QUARTERS reference."""
    fleet = OtaFleet(tmp_path, devices=5).start(agents=False)
    clients: list[DeviceClient] = []
    try:
        bundle = build_demo_bundle(private_key=fleet.key, version="v1", features=2).data
        a, b = (
            register_bundle(fleet.engine, fleet.store, bundle=bundle, task="t", target=TARGET)
            for _ in range(2)
        )
        with session_scope(fleet.engine, write=True) as session:
            for model in (a, b):
                set_reference(session, model_version_id=model, reference=QUARTERS, actor=SIM_ACTOR)
        clients = [DeviceClient(fleet, d) for d in fleet.devices]
        for c in clients:
            c.send("status", proto.encode(proto.Status(online=True, model_version_id=a)))
        wait_for(lambda: _running(fleet, a) == 5, timeout_s=20, what="5 devices on version A")
        yield fleet, clients, a, b
    finally:
        for c in clients:
            c.close()
        fleet.close()


def _running(fleet: OtaFleet, model: int) -> int:
    with Session(fleet.engine) as session:
        return int(
            session.exec(
                select(func.count()).select_from(Device).where(Device.model_version_id == model)
            ).one()
        )


def _rows(fleet: OtaFleet) -> int:
    with Session(fleet.engine) as session:
        return int(session.exec(select(func.count()).select_from(TelemetryRecord)).one())


def _send(client: DeviceClient, seq: int, model: int, counts: tuple[tuple[int, ...], ...]) -> None:
    message = proto.Telemetry(
        seq=seq,
        window_s=60.0,
        count=200,
        latency_p50_ms=1.0,
        latency_p95_ms=2.0,
        model_version_id=model,
        features=tuple(proto.FeatureSummary(counts=c) for c in counts),
    )
    client.send("telemetry", proto.encode(message))


def test_one_device_forging_one_bin_telemetry_raises_no_event(
    raw: tuple[OtaFleet, list[DeviceClient], int, int],
) -> None:
    # Prepare
    fleet, clients, a, b = raw
    forger, honest = clients[0], clients[1:]

    # Execute: the forger floods all-in-one-bin windows for its own version and for
    # version B (which no device runs); the others report what the reference expects.
    for seq in range(10):
        _send(forger, seq, a, ONE_BIN)
        _send(forger, 100 + seq, b, ONE_BIN)
    for c in honest:
        _send(c, 0, a, STABLE)
    wait_for(lambda: _rows(fleet) == 24, timeout_s=20, what="24 telemetry rows stored")
    events = check_all(fleet.engine)

    # Assert: stored, but no event for either version.
    assert events == []
    with Session(fleet.engine) as session:
        assert session.exec(select(func.count()).select_from(DriftEvent)).one() == 0


def test_telemetry_claiming_a_version_the_devices_do_not_run_is_ignored(
    raw: tuple[OtaFleet, list[DeviceClient], int, int],
) -> None:
    # Prepare
    fleet, clients, _a, b = raw

    # Execute: every device sends drifted windows, but names version B (they run A).
    for c in clients:
        _send(c, 0, b, ONE_BIN)
    wait_for(lambda: _rows(fleet) == 5, timeout_s=20, what="5 telemetry rows stored")

    # Assert: B has no devices on record, so nothing is scored; A saw nothing.
    assert check_all(fleet.engine) == []


def test_enough_devices_drifting_raise_one_event_naming_them(
    raw: tuple[OtaFleet, list[DeviceClient], int, int],
) -> None:
    # Prepare
    fleet, clients, a, _b = raw
    drifting = clients[:3]

    # Execute: 3 of 5 devices (60 % >= 20 %, 3 >= 3) drift; the other two do not.
    for c in drifting:
        _send(c, 0, a, ONE_BIN)
    for c in clients[3:]:
        _send(c, 0, a, STABLE)
    wait_for(lambda: _rows(fleet) == 5, timeout_s=20, what="5 telemetry rows stored")
    first = check_all(fleet.engine)
    again = check_all(fleet.engine)  # no new telemetry since the event: no repeat

    # Assert: one event, listing the 3 drifted devices among the 5 scored.
    assert len(first) == 1 and again == []
    with Session(fleet.engine) as session:
        event = session.exec(select(DriftEvent)).one()
        view = event_public(session, event)
    assert view.agreeing == 3 and view.population == 5
    assert sorted(d.device_id for d in view.devices if d.drifted) == sorted(
        c.device_id for c in drifting
    )
    assert all(d.score > 1.0 for d in view.devices if d.drifted)
    assert all(d.score < 0.2 for d in view.devices if not d.drifted)


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[OtaFleet]:
    fleet = OtaFleet(tmp_path, devices=2)
    try:
        yield fleet.start(telemetry_s=0.5)
    finally:
        fleet.close()


def test_a_reference_update_reaches_the_devices_running_the_version(agents: OtaFleet) -> None:
    # Prepare: version with a 10-bin reference, rolled out to both agents.
    fleet = agents
    assert fleet.sim is not None
    rng = np.random.default_rng(0)
    bundle = build_demo_bundle(private_key=fleet.key, version="v1", features=8)
    model = register_bundle(fleet.engine, fleet.store, bundle=bundle.data, task="t", target=TARGET)
    with session_scope(fleet.engine, write=True) as session:
        set_reference(
            session,
            model_version_id=model,
            reference=reference_from_data(rng.normal(size=(2000, 8))),
            actor=SIM_ACTOR,
        )
        rollout_id = create_rollout(
            session,
            RolloutCreate(model_version_id=model, group=fleet.group, waves=[100]),
            actor=SIM_ACTOR,
        ).id

    def finished() -> bool:
        with Session(fleet.engine) as session:
            rollout = session.get(Rollout, rollout_id)
            return rollout is not None and rollout.status is RolloutStatus.succeeded

    wait_for(finished, timeout_s=60, what="the rollout")
    x = rng.normal(size=(50, 8)).astype(np.float32)

    def bins_seen(n: int) -> bool:  # every agent's latest non-empty window has n bins
        for agent in fleet.sim.agents:  # type: ignore[union-attr]
            agent.predict(x)
        with Session(fleet.engine) as session:
            rows = session.exec(
                select(TelemetryRecord)
                .where(TelemetryRecord.count > 0)
                .order_by(TelemetryRecord.id.desc())  # type: ignore[union-attr]
            ).all()
        latest = {}
        for r in rows:
            latest.setdefault(r.device_id, r)
        return len(latest) == 2 and all(len(r.features[0]) == n for r in latest.values())

    wait_for(lambda: bins_seen(10), timeout_s=20, what="10-bin telemetry (install command)")

    # Execute: the operator sets a 4-bin reference (as PUT .../drift-reference does).
    with session_scope(fleet.engine, write=True) as session:
        set_reference(session, model_version_id=model, reference=_quarters(8), actor=SIM_ACTOR)

    # Assert: the fleet sent it (pushed_at set), each agent acknowledged and counts in
    # the new bins.
    wait_for(lambda: bins_seen(4), timeout_s=20, what="4-bin telemetry after the update")
    with Session(fleet.engine) as session:
        stored = session.get(DriftReference, model)
        assert stored is not None and stored.pushed_at is not None
    for agent in fleet.sim.agents:
        assert [a.stage for a in agent.acks if a.action == "ping"] == ["bins-updated"]


def _quarters(features: int) -> Reference:
    return Reference(
        edges=((-0.67, 0.0, 0.67),) * features,
        proportions=((0.25,) * 4,) * features,
        samples=1000,
    )
