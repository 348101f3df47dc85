"""The promotion controller (fleet/promotion.py): its pure decisions, and its state machine
stepped by hand on SQLite and PostgreSQL (the bundle build replaced by a writer of bytes:
the real build runs in tests/e2e/test_promotion_loop.py)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import col, select

from firmware_images.keys import generate_keypair
from fleet import audit
from fleet.artifacts import ArtifactStore
from fleet.audit import Actor
from fleet.crud import policies as policy_crud
from fleet.crud.registry import add_artifact, public_view
from fleet.db import session_scope
from fleet.models.audit import AuditEvent
from fleet.models.ota import Rollout, RolloutStatus
from fleet.models.policies import Promotion, PromotionState
from fleet.models.registry import ArtifactFormat, ModelStage, ModelVersion
from fleet.models.runs import Run
from fleet.policy import parse_policy
from fleet.promotion import PromotionController, RunFacts, gate_decision, in_scope, outcome
from fleet.settings import FleetSettings

Headers = dict[str, str]
ACTOR = Actor(name="test", role="admin", source="cli")


def policy_text(signing: str, *, gates: str = "min_accuracy = 0.9\nmax_epsilon = 8.0") -> str:
    return (
        'group = "ward-3"\ntask = "digits-cnn"\ntargets = ["cpu-x86"]\n'
        f"[gates]\n{gates}\n[canary]\nwaves = [50, 100]\nmax_install_failure_rate = 0.2\n"
        f"[signing]\n{signing}\n"
    )


# --- pure decisions -------------------------------------------------------------------


def test_gates_reject_with_every_reason_and_pass_with_what_passed() -> None:
    policy = parse_policy(policy_text('approval = "operator"'))
    state, reason = gate_decision(policy, RunFacts(accuracy=0.85, epsilon=9.5, fairness_gap=None))
    assert state is PromotionState.rejected
    assert "accuracy 0.85 is below the gate 0.9" in reason
    assert "epsilon 9.5 is above the gate 8" in reason
    state, reason = gate_decision(policy, RunFacts(accuracy=0.95, epsilon=3.0, fairness_gap=None))
    assert state is PromotionState.building
    assert reason == "gates passed: accuracy 0.95 >= 0.9; epsilon 3 <= 8"
    # A run without DP fails a privacy gate; one without accuracy fails the accuracy gate.
    assert (
        gate_decision(policy, RunFacts.of({"final_accuracy": 0.99}))[0] is PromotionState.rejected
    )
    assert gate_decision(policy, RunFacts.of({}))[0] is PromotionState.rejected


def test_scope_is_the_policy_task_else_the_tasks_the_group_runs() -> None:
    named = parse_policy(policy_text('approval = "operator"'))
    assert in_scope(named, task="digits-cnn", group_tasks=set())
    assert not in_scope(named, task="other", group_tasks={"other"})
    unnamed = parse_policy(
        policy_text('approval = "operator"').replace('task = "digits-cnn"\n', "")
    )
    assert in_scope(unnamed, task="har", group_tasks={"har"})
    assert not in_scope(unnamed, task="har", group_tasks=set())


def test_a_finished_rollout_decides_the_promotion() -> None:
    assert outcome(RolloutStatus.running, "") is None
    assert outcome(RolloutStatus.paused, "") is None
    assert outcome(RolloutStatus.succeeded, "")[0] is PromotionState.promoted  # type: ignore[index]
    state, reason = outcome(RolloutStatus.aborted, "wave 1: 2 of 2 failed")  # type: ignore[misc]
    assert state is PromotionState.rolled_back and "wave 1: 2 of 2 failed" in reason


# --- the state machine ----------------------------------------------------------------


class FakeBuild:
    """Writes a few bytes where the bundle goes; records what it was asked to build."""

    def __init__(self, *, fail: bool = False) -> None:
        self.calls: list[dict[str, Any]] = []
        self.fail = fail

    def __call__(self, **request: Any) -> dict[str, int]:
        self.calls.append(request)
        if self.fail:
            raise RuntimeError("accuracy gate: int8 costs 3.2 points, more than 1")
        Path(request["out"]).write_bytes(f"bundle {request['target']}".encode())
        return {"0": 7, "1": 3}  # the bundle's predicted classes on the held-out set


@pytest.fixture
def ward(client: TestClient, admin: Headers) -> str:
    assert client.post("/api/v1/groups", json={"name": "ward-3"}, headers=admin).status_code == 201
    for i in range(2):
        body = {"name": f"pc-{i}", "hardware_target": "cpu-x86", "group": "ward-3"}
        assert client.post("/api/v1/devices", json=body, headers=admin).status_code == 201
    return "ward-3"


def register(engine: Engine, store: ArtifactStore, metrics: dict[str, float]) -> int:
    """A model version registered from a run, with a torch checkpoint in the store."""
    with session_scope(engine, write=True) as session:
        run = Run(task="digits-cnn", created_by="test", config={"seed": 3})
        session.add(run)
        session.flush()
        audit.record(session, actor=ACTOR, action="run.create", entity_type="run", entity_id=1)
        model = ModelVersion(
            task="digits-cnn", source_run_id=run.id, metrics=metrics, created_by="test"
        )
        session.add(model)
        session.flush()
        # What fleet.crud.registry.register_model audits (without the drift reference).
        audit.record(
            session,
            actor=ACTOR,
            action="model.register",
            entity_type="model",
            entity_id=model.id or 0,
            after=public_view(session, model),
        )
        stored = store.save(io.BytesIO(b"weights %d" % (model.id or 0)), max_bytes=1 << 20)
        add_artifact(
            session,
            model,
            format=ArtifactFormat.torch,
            target="any",
            filename="model.pt",
            size_bytes=stored.size_bytes,
            sha256=stored.sha256,
            signature=None,
            actor=ACTOR,
        )
        return model.id or 0


def promotion_of(engine: Engine, model_id: int) -> Promotion:
    with session_scope(engine, write=False) as session:
        found = session.exec(
            select(Promotion).where(col(Promotion.model_version_id) == model_id)
        ).one()
        return found


def finish_rollout(engine: Engine, rollout_id: int, status: RolloutStatus, reason: str) -> None:
    with session_scope(engine, write=True) as session:
        rollout = session.get(Rollout, rollout_id)
        assert rollout is not None
        rollout.status, rollout.reason = status, reason
        session.add(rollout)
        audit.record(
            session, actor=ACTOR, action="rollout.end", entity_type="rollout", entity_id=rollout_id
        )


def actions(engine: Engine, promotion_id: int) -> list[str]:
    with session_scope(engine, write=False) as session:
        return list(
            session.exec(
                select(AuditEvent.action)
                .where(
                    col(AuditEvent.entity_type) == "promotion",
                    col(AuditEvent.entity_id) == str(promotion_id),
                )
                .order_by(col(AuditEvent.id))
            ).all()
        )


def test_a_run_passing_the_gates_is_built_signed_rolled_out_and_promoted(
    client: TestClient, admin: Headers, ward: str, settings: FleetSettings, backend: Any
) -> None:
    # Prepare: a policy whose key the fleet holds, then a good model registered.
    assert settings.signing_key_dir is not None
    key = generate_keypair(prefix=settings.signing_key_dir / "ward3", force=True).private
    body = {"source": policy_text(f'key = "{key}"')}
    assert client.post("/api/v1/policies", json=body, headers=admin).status_code == 201
    engine, store = backend.engine, ArtifactStore(settings.artifact_dir)
    model_id = register(engine, store, {"final_accuracy": 0.95, "final_epsilon": 4.0})
    build = FakeBuild()
    controller = PromotionController(engine=engine, store=store, build=build)
    # Act: one step gates, builds, signs and creates the rollout.
    controller.step()
    promotion = promotion_of(engine, model_id)
    # Assert
    assert promotion.state is PromotionState.rolling_out, promotion.reason
    assert promotion.rollout_id is not None
    assert [c["target"] for c in build.calls] == ["cpu-x86"]
    assert build.calls[0]["max_drop_points"] == 1.0 and build.calls[0]["data_seed"] == 3
    model = client.get(f"/api/v1/models/{model_id}", headers=admin).json()
    bundle = next(a for a in model["artifacts"] if a["format"] == "bundle")
    assert bundle["target"] == "cpu-x86" and bundle["signature"]
    rollout = client.get(f"/api/v1/rollouts/{promotion.rollout_id}", headers=admin).json()
    assert rollout["waves"] == [50, 100] and rollout["max_failure_rate"] == 0.2
    # A second step while the rollout runs changes nothing and builds nothing more.
    controller.step()
    assert promotion_of(engine, model_id).state is PromotionState.rolling_out
    assert len(build.calls) == 1
    # The rollout succeeds: promoted, and the version is its task's promoted one.
    finish_rollout(engine, promotion.rollout_id, RolloutStatus.succeeded, "")
    controller.step()
    done = promotion_of(engine, model_id)
    assert done.state is PromotionState.promoted and done.decided_by == "system:promotions"
    with session_scope(engine, write=False) as session:
        stored_model = session.get(ModelVersion, model_id)
        assert stored_model is not None and stored_model.stage is ModelStage.promoted
        # Stored with the version: its reference prediction distribution (canaries).
        assert stored_model.reference_predictions == {"0": 7, "1": 3}
    assert actions(engine, done.id or 0) == [
        "promotion.gates_pass",
        "promotion.bundle_built",
        "promotion.rollout",
        "promotion.promote",
    ]
    # The timeline serves the chain oldest first, each automatic decision with its reason.
    answer = client.get("/api/v1/timeline", params={"group": "ward-3"}, headers=admin)
    assert answer.status_code == 200, answer.text
    items = answer.json()
    chain = [i["action"] for i in items]
    assert chain.index("model.register") < chain.index("promotion.gates_pass")
    bundle_stored = len(chain) - 1 - chain[::-1].index("artifact.upload")  # the last upload
    assert chain.index("promotion.gates_pass") < bundle_stored < chain.index("rollout.create")
    assert "bundle artifact" in items[bundle_stored]["summary"]
    assert chain[-1] == "promotion.promote"
    gates = next(i for i in items if i["action"] == "promotion.gates_pass")
    assert gates["reason"] == "gates passed: accuracy 0.95 >= 0.9; epsilon 4 <= 8"
    assert gates["actor"] == "system:promotions" and gates["at"]
    assert items == sorted(items, key=lambda i: i["at"])
    only = client.get(
        "/api/v1/timeline", params={"group": "ward-3", "model_version": 999}, headers=admin
    )
    assert only.status_code == 200 and only.json() == []
    missing = client.get("/api/v1/timeline", params={"group": "nope"}, headers=admin)
    assert missing.status_code == 404


def test_a_run_failing_a_gate_is_rejected_with_its_reason_and_nothing_is_built(
    client: TestClient, admin: Headers, ward: str, settings: FleetSettings, backend: Any
) -> None:
    body = {"source": policy_text('approval = "operator"')}
    assert client.post("/api/v1/policies", json=body, headers=admin).status_code == 201
    engine, store = backend.engine, ArtifactStore(settings.artifact_dir)
    model_id = register(engine, store, {"final_accuracy": 0.80})
    build = FakeBuild()
    PromotionController(engine=engine, store=store, build=build).step()
    promotion = promotion_of(engine, model_id)
    assert promotion.state is PromotionState.rejected
    assert "accuracy 0.8 is below the gate 0.9" in promotion.reason
    assert "epsilon (not reported) is above the gate 8" in promotion.reason
    assert build.calls == [] and promotion.rollout_id is None
    assert actions(engine, promotion.id or 0) == ["promotion.reject"]
    items = client.get("/api/v1/timeline?group=ward-3", headers=admin).json()
    rejected = [i for i in items if i["action"] == "promotion.reject"]
    assert len(rejected) == 1 and "accuracy 0.8 is below the gate 0.9" in rejected[0]["reason"]


def test_an_offline_key_waits_for_bundles_and_approval_then_rolls_out_and_rolls_back(
    client: TestClient, admin: Headers, ward: str, settings: FleetSettings, backend: Any
) -> None:
    body = {"source": policy_text('approval = "operator"')}
    assert client.post("/api/v1/policies", json=body, headers=admin).status_code == 201
    engine, store = backend.engine, ArtifactStore(settings.artifact_dir)
    model_id = register(engine, store, {"final_accuracy": 0.95, "final_epsilon": 1.0})
    build = FakeBuild()
    controller = PromotionController(engine=engine, store=store, build=build)
    controller.step()
    promotion = promotion_of(engine, model_id)
    assert promotion.state is PromotionState.pending_approval
    assert f"fedfleet policy approve {promotion.id} --key" in promotion.reason
    assert build.calls == []  # the fleet never builds (nor signs) for an offline key
    # Approving before the operator uploaded the signed bundles is refused.
    approve = f"/api/v1/promotions/{promotion.id}/approve"
    early = client.post(approve, headers=admin)
    assert early.status_code == 409 and "cpu-x86" in early.json()["detail"]
    with session_scope(engine, write=True) as session:
        model = session.get(ModelVersion, model_id)
        assert model is not None
        stored = store.save(io.BytesIO(b"offline bundle"), max_bytes=1 << 20)
        add_artifact(
            session,
            model,
            format=ArtifactFormat.bundle,
            target="cpu-x86",
            filename="b.bundle",
            size_bytes=stored.size_bytes,
            sha256=stored.sha256,
            signature=None,
            actor=ACTOR,
        )
    assert client.post(approve, headers=admin).status_code == 200
    controller.step()
    rolling = promotion_of(engine, model_id)
    assert rolling.state is PromotionState.rolling_out and rolling.rollout_id is not None
    finish_rollout(engine, rolling.rollout_id, RolloutStatus.aborted, "wave 1: 1 of 1 failed")
    controller.step()
    back = promotion_of(engine, model_id)
    assert back.state is PromotionState.rolled_back
    assert back.reason == "the rollout aborted: wave 1: 1 of 1 failed"
    assert actions(engine, back.id or 0)[-1] == "promotion.roll_back"


def test_a_failed_build_ends_the_promotion_failed_with_the_builds_reason(
    client: TestClient, admin: Headers, ward: str, settings: FleetSettings, backend: Any
) -> None:
    assert settings.signing_key_dir is not None
    key = generate_keypair(prefix=settings.signing_key_dir / "ward3", force=True).private
    body = {"source": policy_text(f'key = "{key}"')}
    assert client.post("/api/v1/policies", json=body, headers=admin).status_code == 201
    engine, store = backend.engine, ArtifactStore(settings.artifact_dir)
    model_id = register(engine, store, {"final_accuracy": 0.95, "final_epsilon": 4.0})
    PromotionController(engine=engine, store=store, build=FakeBuild(fail=True)).step()
    promotion = promotion_of(engine, model_id)
    assert promotion.state is PromotionState.failed
    assert promotion.reason.startswith("bundle build failed: accuracy gate")


def test_models_registered_before_the_groups_first_policy_are_left_alone(
    client: TestClient, admin: Headers, ward: str, settings: FleetSettings, backend: Any
) -> None:
    engine, store = backend.engine, ArtifactStore(settings.artifact_dir)
    register(engine, store, {"final_accuracy": 0.99, "final_epsilon": 1.0})
    body = {"source": policy_text('approval = "operator"')}
    assert client.post("/api/v1/policies", json=body, headers=admin).status_code == 201
    PromotionController(engine=engine, store=store, build=FakeBuild()).step()
    assert policy_crud.list_promotions  # the listing exists; nothing in it
    assert client.get("/api/v1/promotions", headers=admin).json() == []


def test_a_restart_mid_build_resumes_without_building_a_stored_bundle_again(
    client: TestClient, admin: Headers, ward: str, settings: FleetSettings, backend: Any
) -> None:
    # Prepare: a promotion left in `building` with its bundle already stored (the process
    # stopped between storing the bundle and creating the rollout).
    assert settings.signing_key_dir is not None
    key = generate_keypair(prefix=settings.signing_key_dir / "ward3", force=True).private
    body = {"source": policy_text(f'key = "{key}"')}
    assert client.post("/api/v1/policies", json=body, headers=admin).status_code == 201
    engine, store = backend.engine, ArtifactStore(settings.artifact_dir)
    model_id = register(engine, store, {"final_accuracy": 0.95, "final_epsilon": 4.0})
    with session_scope(engine, write=True) as session:
        model = session.get(ModelVersion, model_id)
        assert model is not None
        stored = store.save(io.BytesIO(b"built before the restart"), max_bytes=1 << 20)
        add_artifact(
            session,
            model,
            format=ArtifactFormat.bundle,
            target="cpu-x86",
            filename="b.bundle",
            size_bytes=stored.size_bytes,
            sha256=stored.sha256,
            signature=None,
            actor=ACTOR,
        )
    first = PromotionController(engine=engine, store=store, build=FakeBuild(fail=True))
    first._enqueue()  # the old process got as far as the gates
    assert promotion_of(engine, model_id).state is PromotionState.building
    # Execute: a new process's controller (its builder would fail if it were called).
    restarted = PromotionController(engine=engine, store=store, build=FakeBuild(fail=True))
    restarted.step()
    # Assert
    resumed = promotion_of(engine, model_id)
    assert resumed.state is PromotionState.rolling_out, resumed.reason


def test_retraining_waits_for_the_cooldown_and_the_daily_cap() -> None:
    from datetime import UTC, datetime, timedelta

    from fleet.policy import Retrain
    from fleet.promotion import retrain_decision

    now = datetime(2026, 12, 4, 12, tzinfo=UTC)
    rule = Retrain(enabled=True, cooldown_s=3600, max_runs_per_day=2)
    assert retrain_decision(rule, now=now, recent=[])[0]
    ok, why = retrain_decision(rule, now=now, recent=[now - timedelta(minutes=10)])
    assert not ok and why.startswith("cooldown: the last drift-started run was 600 s ago")
    two = [now - timedelta(hours=3), now - timedelta(hours=2)]
    ok, why = retrain_decision(rule, now=now, recent=two)
    assert not ok and "2 drift-started run(s) in the last 24 h" in why
    old = [now - timedelta(hours=30), now - timedelta(hours=2)]
    assert retrain_decision(rule, now=now, recent=old)[0]  # one falls out of the day
    assert not retrain_decision(Retrain(enabled=False), now=now, recent=[])[0]


def test_an_agreed_drift_event_starts_one_retraining_run_then_the_cooldown_holds(
    client: TestClient, admin: Headers, ward: str, settings: FleetSettings, backend: Any
) -> None:
    from fleet.models.devices import Group
    from fleet.models.ota import DriftEvent

    source = policy_text('approval = "operator"') + (
        "[retrain]\nenabled = true\ncooldown_s = 3600\nmax_runs_per_day = 2\n"
    )
    assert (
        client.post("/api/v1/policies", json={"source": source}, headers=admin).status_code == 201
    )
    engine, store = backend.engine, ArtifactStore(settings.artifact_dir)
    deployed = register(engine, store, {"final_accuracy": 0.80})  # rejected: never mind

    def drift() -> int:
        with session_scope(engine, write=True) as session:
            group = session.exec(select(Group).where(col(Group.name) == "ward-3")).one()
            event = DriftEvent(
                model_version_id=deployed,
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

    controller = PromotionController(engine=engine, store=store, build=FakeBuild())
    first = drift()
    controller.step()
    second = drift()
    controller.step()
    controller.step()
    with session_scope(engine, write=False) as session:
        started = session.get(DriftEvent, first)
        waiting = session.get(DriftEvent, second)
        assert started is not None and waiting is not None
        run = session.get(Run, started.run_id) if started.run_id else None
        assert run is not None and run.config["parent_model_version_id"] == deployed
        assert waiting.run_id is None  # the cooldown holds it
    items = client.get("/api/v1/timeline?group=ward-3", headers=admin).json()
    auto = [i for i in items if i["action"] == "promotion.retrain"]
    assert len(auto) == 1 and auto[0]["actor"] == "system:promotions"
    assert auto[0]["reason"].startswith(f"retraining run {run.id} created: drift agreed")
    waits = [i for i in items if i["action"] == "promotion.retrain_wait"]
    assert len(waits) == 1 and waits[0]["reason"].startswith("cooldown:")  # noted once
