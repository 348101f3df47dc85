"""What the canary comparison believes from the database (fleet/ota/canary_signals.py):
reports naming a version the device does not run are ignored, one lying device cannot
abort a rollout alone, and a feedback message delivered twice counts once — each on
SQLite and PostgreSQL (the ``database`` fixture), which must read the same numbers."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine
from sqlmodel import Session, select

sys.path.insert(0, str(Path(__file__).parents[1] / "e2e"))

from ota_testkit import SIM_ACTOR, TARGET, enroll_devices, register_bundle

from edge_client.protocol import mqtt as proto
from firmware_images.demo import build_demo_bundle
from fleet import audit
from fleet.artifacts import ArtifactStore
from fleet.crud.rollouts import create_rollout
from fleet.db import session_scope
from fleet.models.common import utcnow
from fleet.models.devices import Device
from fleet.models.ota import (
    DeviceRolloutState,
    FeedbackRecord,
    Rollout,
    RolloutCreate,
    RolloutDevice,
    TelemetryRecord,
)
from fleet.models.registry import ModelVersion
from fleet.ota.canary_signals import wave_quality
from fleet.ota.telemetry_rows import feedback_row, insert_feedback

GATES = {"max_accuracy_drop_points": 2.0, "max_latency_ratio": 1.5, "max_error_rate": 0.01}


@pytest.fixture
def world(tmp_path: Path, database: Any) -> Iterator[tuple[Engine, int, int, int]]:
    """6 devices on v1; a rollout of v2 whose first wave (3 devices) installed it."""
    engine = database.engine()
    store, key = ArtifactStore(tmp_path / "artifacts"), Ed25519PrivateKey.generate()
    enroll_devices(engine, count=6, group="wards", target=TARGET)
    v1, v2 = (
        register_bundle(
            engine,
            store,
            bundle=build_demo_bundle(private_key=key, version=v, seed=i).data,
            task="t",
            target=TARGET,
        )
        for i, v in enumerate(("v1", "v2"))
    )
    with session_scope(engine, write=True) as session:
        rollout = create_rollout(
            session,
            RolloutCreate(model_version_id=v2, group="wards", waves=[50, 100], **GATES),  # type: ignore[arg-type]
            actor=SIM_ACTOR,
        )
        rollout_id = rollout.id or 0
    with (
        session_scope(engine, write=True) as session,
        audit.exempt(session, reason="test setup: devices report running v1, wave 1 installed"),
    ):
        for device in session.exec(select(Device)).all():
            device.model_version_id = v1
            session.add(device)
        for row in session.exec(select(RolloutDevice)).all():
            if row.wave == 0:
                row.state, row.sent_at = DeviceRolloutState.installed, utcnow()
                row.acked_at = utcnow()
                session.get(Device, row.device_id).model_version_id = v2  # type: ignore[union-attr]
                session.add(row)
        session.flush()
    yield engine, rollout_id, v1, v2
    engine.dispose()


def _sides(engine: Engine, rollout_id: int) -> tuple[list[str], list[str]]:
    with Session(engine) as session:
        rows = session.exec(
            select(RolloutDevice).where(RolloutDevice.rollout_id == rollout_id)
        ).all()
    return [r.device_id for r in rows if r.wave == 0], [r.device_id for r in rows if r.wave == 1]


def _report(
    engine: Engine, device: str, version: int, *, correct: int, wrong: int, at_s: float = 1.0
) -> None:
    at = utcnow() + timedelta(seconds=at_s)
    with (
        session_scope(engine, write=True) as session,
        audit.exempt(session, reason="device reports, as the bridge writes them"),
    ):
        session.add(
            FeedbackRecord(
                device_id=device,
                received_at=at,
                model_version_id=version,
                seq=0,
                window_s=1.0,
                labelled=correct + wrong,
                correct=correct,
                labels={"0": [correct, wrong]},
            )
        )
        session.add(
            TelemetryRecord(
                device_id=device,
                received_at=at,
                model_version_id=version,
                seq=0,
                window_s=1.0,
                count=correct + wrong,
                latency_p50_ms=1.0,
                latency_p95_ms=2.0,
                errors=0,
            )
        )
        session.flush()


def _verdict(engine: Engine, rollout_id: int):  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        rollout = session.get(Rollout, rollout_id)
        assert rollout is not None
        rows = list(
            session.exec(select(RolloutDevice).where(RolloutDevice.rollout_id == rollout_id))
        )
        return wave_quality(session, rollout, rows, since=utcnow() - timedelta(minutes=5))


def test_a_worse_canary_regresses(world: tuple[Engine, int, int, int]) -> None:
    engine, rollout_id, v1, v2 = world
    canary, baseline = _sides(engine, rollout_id)
    for d in canary:
        _report(engine, d, v2, correct=9200, wrong=800)
    for d in baseline:
        _report(engine, d, v1, correct=9500, wrong=500)

    verdict = _verdict(engine, rollout_id)

    assert verdict.regressed and "accuracy" in verdict.reason


def test_reports_naming_a_version_the_device_does_not_run_are_ignored(
    world: tuple[Engine, int, int, int],
) -> None:
    # Prepare: honest, equal sides; then forgeries: a baseline device claims terrible
    # accuracy for the new version it does not run, a canary device claims the old one,
    # and a canary device's report from before its install was acknowledged.
    engine, rollout_id, v1, v2 = world
    canary, baseline = _sides(engine, rollout_id)
    for d in canary:
        _report(engine, d, v2, correct=950, wrong=50)
    for d in baseline:
        _report(engine, d, v1, correct=950, wrong=50)
    _report(engine, baseline[0], v2, correct=0, wrong=10**6)
    _report(engine, canary[0], v1, correct=10**6, wrong=0)
    _report(engine, canary[1], v2, correct=0, wrong=10**6, at_s=-60.0)

    # Execute
    verdict = _verdict(engine, rollout_id)

    # Assert: measured on the honest reports only
    accuracy = next(f for f in verdict.findings if f.signal == "accuracy")
    assert accuracy.value == pytest.approx(0.0) and not verdict.regressed
    assert "3000 vs 3000 labelled samples" in accuracy.detail


def test_one_lying_device_cannot_abort_a_rollout(world: tuple[Engine, int, int, int]) -> None:
    # Prepare: one canary device reports a million wrong answers; the rest are honest.
    engine, rollout_id, v1, v2 = world
    canary, baseline = _sides(engine, rollout_id)
    for d in canary:
        _report(engine, d, v2, correct=950, wrong=50)
    for d in baseline:
        _report(engine, d, v1, correct=950, wrong=50)
    _report(engine, canary[0], v2, correct=0, wrong=10**6)

    # Execute
    verdict = _verdict(engine, rollout_id)

    # Assert: pooled, the lie shows; left out, it does not: no abort.
    accuracy = next(f for f in verdict.findings if f.signal == "accuracy")
    assert accuracy.value is not None and accuracy.value > 50
    assert not verdict.regressed


def _feedback(version: int, *, seq: int, correct: int, wrong: int) -> proto.Feedback:
    return proto.Feedback(
        seq=seq,
        window_s=1.0,
        model_version_id=version,
        labels={"0": proto.LabelCount(correct=correct, wrong=wrong)},
    )


def test_feedback_delivered_twice_counts_once(world: tuple[Engine, int, int, int]) -> None:
    # Prepare: the bridge's rows of honest, equal sides (as replicas write them, with
    # their digests); a canary device's bad window arrives twice (a second replica or a
    # redelivery after a kill), once in its own batch and once in a later one.
    engine, rollout_id, v1, v2 = world
    canary, baseline = _sides(engine, rollout_id)
    at = utcnow() + timedelta(seconds=1)
    honest = [
        feedback_row(d, _feedback(v, seq=0, correct=950, wrong=50), at, dedupe=True)
        for sides, v in ((canary, v2), (baseline, v1))
        for d in sides
    ]
    bad = feedback_row(canary[0], _feedback(v2, seq=1, correct=100, wrong=900), at, dedupe=True)
    for d, v in [*((d, v2) for d in canary), *((d, v1) for d in baseline)]:
        _report(engine, d, v, correct=0, wrong=0)  # telemetry rows only (no labels)

    # Execute
    for batch in (honest, [bad, bad], [bad]):
        with (
            session_scope(engine, write=True) as session,
            audit.exempt(session, reason="device reports, as the bridge writes them"),
        ):
            insert_feedback(session, batch)
    verdict = _verdict(engine, rollout_id)

    # Assert: stored once; the comparison counts its 1000 labels once.
    with Session(engine) as session:
        stored = session.exec(select(FeedbackRecord).where(FeedbackRecord.seq == 1)).all()
    assert len(stored) == 1
    accuracy = next(f for f in verdict.findings if f.signal == "accuracy")
    assert "4000 vs 3000 labelled samples" in accuracy.detail
    assert accuracy.value == pytest.approx(95.0 - 100.0 * 2950 / 4000)


def test_predictions_are_compared_with_the_versions_stored_reference(
    world: tuple[Engine, int, int, int],
) -> None:
    # Prepare: canary and baseline devices predict alike (class 1); the rollout checks
    # predictions. First without a stored reference, then v2's held-out reference says
    # v2 predicts class 0.
    engine, rollout_id, v1, v2 = world
    canary, baseline = _sides(engine, rollout_id)
    at = utcnow() + timedelta(seconds=1)
    with (
        session_scope(engine, write=True) as session,
        audit.exempt(session, reason="device reports, as the bridge writes them"),
    ):
        rollout = session.get(Rollout, rollout_id)
        assert rollout is not None
        rollout.max_prediction_shift = 0.25
        session.add(rollout)
        for device, version in [*((d, v2) for d in canary), *((d, v1) for d in baseline)]:
            session.add(
                TelemetryRecord(
                    device_id=device,
                    received_at=at,
                    model_version_id=version,
                    seq=0,
                    window_s=1.0,
                    count=300,
                    latency_p50_ms=1.0,
                    latency_p95_ms=2.0,
                    predictions={"1": 300},
                )
            )
        session.flush()
    live = _verdict(engine, rollout_id)
    with (
        session_scope(engine, write=True) as session,
        audit.exempt(session, reason="test setup: the version's stored reference"),
    ):
        model = session.get(ModelVersion, v2)
        assert model is not None
        model.reference_predictions = {"0": 350, "1": 10}
        session.add(model)
        session.flush()

    # Execute
    stored = _verdict(engine, rollout_id)

    # Assert: against live traffic no shift (and the detail says so); against the
    # reference the canary shifted, and the reason names the reference.
    (shift,) = [f for f in live.findings if f.signal == "predictions"]
    assert shift.value == pytest.approx(0.0) and "live traffic" in shift.detail
    assert stored.regressed
    assert "from the version's reference (360 held-out samples" in stored.reason
