"""A drift event on a model version that its group has since replaced starts no retraining
run (found by tests/e2e/test_closed_loop.py: the drifted windows still arriving after the
first event made a second event on the old version, held by the cooldown, which would
have retrained the replaced model when the cooldown ended)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import col, select

from fleet import audit
from fleet.artifacts import ArtifactStore
from fleet.audit import Actor
from fleet.db import session_scope
from fleet.models.common import utcnow
from fleet.models.devices import Group
from fleet.models.ota import DriftEvent
from fleet.models.policies import Promotion, PromotionPolicy, PromotionState
from fleet.models.registry import ModelVersion
from fleet.models.runs import Run
from fleet.promotion import PromotionController
from fleet.settings import FleetSettings

ACTOR = Actor(name="test", role="admin", source="cli")
POLICY = (
    'group = "ward-9"\ntask = "digits-cnn"\ntargets = ["cpu-x86"]\n'
    '[gates]\nmin_accuracy = 0.9\n[signing]\napproval = "operator"\n'
    "[retrain]\nenabled = true\ncooldown_s = 0\nmax_runs_per_day = 24\n"
)


def _model(engine: Engine) -> int:
    """A version registered before the policy (the controller leaves it alone)."""
    with session_scope(engine, write=True) as session:
        model = ModelVersion(task="digits-cnn", created_by="test")
        session.add(model)
        session.flush()
        audit.record(
            session,
            actor=ACTOR,
            action="model.register",
            entity_type="model",
            entity_id=model.id or 0,
        )
        return model.id or 0


def _drift(engine: Engine, model_id: int) -> int:
    with session_scope(engine, write=True) as session:
        group = session.exec(select(Group).where(col(Group.name) == "ward-9")).one()
        event = DriftEvent(
            model_version_id=model_id,
            group_id=group.id,
            method="psi",
            score=0.6,
            threshold=0.2,
            per_feature=[0.6],
            samples=500,
        )
        session.add(event)
        session.flush()
        audit.record(
            session,
            actor=ACTOR,
            action="drift.detected",
            entity_type="drift_event",
            entity_id=event.id or 0,
        )
        return event.id or 0


def _promoted(engine: Engine, model_id: int) -> None:
    """``model_id`` promoted to the group now (what the controller's last step writes)."""
    with session_scope(engine, write=True) as session:
        group = session.exec(select(Group).where(col(Group.name) == "ward-9")).one()
        policy = session.exec(
            select(PromotionPolicy).where(col(PromotionPolicy.group_id) == group.id)
        ).one()
        session.add(
            Promotion(
                group_id=group.id or 0,
                policy_id=policy.id or 0,
                model_version_id=model_id,
                state=PromotionState.promoted,
                reason="the rollout reached every wave",
                updated_at=utcnow(),
                decided_at=utcnow() + timedelta(seconds=1),
            )
        )
        audit.record(
            session, actor=ACTOR, action="promotion.promote", entity_type="promotion", entity_id=0
        )


def test_a_drift_event_on_a_replaced_model_starts_no_run_and_says_why(
    client: TestClient, admin: dict[str, str], settings: FleetSettings, backend: Any
) -> None:
    # Prepare: group ward-9 with a retraining policy (no cooldown); v1 deployed drifts.
    assert client.post("/api/v1/groups", json={"name": "ward-9"}, headers=admin).status_code == 201
    body = {"name": "pc-9", "hardware_target": "cpu-x86", "group": "ward-9"}
    assert client.post("/api/v1/devices", json=body, headers=admin).status_code == 201
    assert (
        client.post("/api/v1/policies", json={"source": POLICY}, headers=admin).status_code == 201
    )
    engine = backend.engine
    controller = PromotionController(engine=engine, store=ArtifactStore(settings.artifact_dir))
    v1, v2 = _model(engine), _model(engine)
    first = _drift(engine, v1)
    controller.step()
    late = _drift(engine, v1)  # drifted windows still arriving on v1

    # Execute: v1's retrained successor v2 is promoted; the controller steps twice.
    _promoted(engine, v2)
    controller.step()
    controller.step()

    # Assert: the first event started a run; the late one none, noted once with why.
    with session_scope(engine, write=False) as session:
        started, skipped = session.get(DriftEvent, first), session.get(DriftEvent, late)
        assert started is not None and started.run_id is not None
        assert skipped is not None and skipped.run_id is None
        assert len(session.exec(select(Run)).all()) == 1
    items = client.get("/api/v1/timeline?group=ward-9", headers=admin).json()
    skips = [i for i in items if i["action"] == "promotion.retrain_skip"]
    assert len(skips) == 1 and skips[0]["actor"] == "system:promotions"
    assert skips[0]["summary"] == f"drift event {late}: no retraining run (its model was replaced)"
    assert skips[0]["reason"] == (
        f"superseded: model version {v2} was promoted to the group after this drift on "
        f"model version {v1}"
    )
