"""The promotion loop on real parts, with no command after ``policy apply``: a real
Mosquitto, the fleet's MQTT bridge and rollout controller, simulated devices, the
promotion controller building a real bundle (firmware_images, cpu-x86) from a registered
digits-cnn checkpoint and signing it with the key in the fleet's key folder.

A run that passes the gates ends ``promoted`` on every device; a run that fails one ends
``rejected`` with the reason on the timeline; nothing is built for it.
"""

from __future__ import annotations

import io
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from sqlmodel import Session, col, select

sys.path.insert(0, str(Path(__file__).parent))

from ota_testkit import SIM_ACTOR, OtaFleet, wait_for

from fleet.crud.policies import apply_policy
from fleet.crud.registry import add_artifact, register_model
from fleet.crud.runs import create_run
from fleet.crud.timeline import timeline
from fleet.db import session_scope
from fleet.models.devices import Device, Group
from fleet.models.policies import Promotion, PromotionState
from fleet.models.registry import ArtifactFormat, ModelVersionCreate
from fleet.models.runs import RunCreate
from fleet.promotion import PromotionController

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DEVICES = 4


def _policy(key: Path) -> str:
    return (
        'group = "wards"\ntask = "digits-cnn"\ntargets = ["cpu-x86"]\n'
        "[gates]\nmin_accuracy = 0.8\nmax_epsilon = 8.0\n"
        "max_bundle_accuracy_drop_points = 5.0\n"
        "[canary]\nwaves = [25, 100]\nsoak_s = 1.0\nmax_install_failure_rate = 0.0\n"
        f'[signing]\nkey = "{key}"\n'
    )


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[OtaFleet]:
    ota = OtaFleet(tmp_path, devices=DEVICES, group="wards")
    try:
        yield ota.start()
    finally:
        ota.close()


@pytest.fixture
def checkpoint(tmp_path: Path) -> bytes:
    """A digits-cnn state dict trained one epoch centrally (about 1 s)."""
    import torch

    from tasks import get_task, train_local

    torch.manual_seed(0)
    task = get_task("digits-cnn")
    data = task.load_data(0)
    model = task.build_model()
    train_local(
        model, data.x_train, data.y_train, epochs=1, batch_size=16, learning_rate=0.05, seed=0
    )
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


def _register(fleet: OtaFleet, checkpoint: bytes, metrics: dict[str, float]) -> int:
    """What ``run submit --register`` leaves in the fleet: a run, its version, model.pt."""
    stored = fleet.store.save(io.BytesIO(checkpoint), max_bytes=len(checkpoint) + 1)
    with session_scope(fleet.engine, write=True) as session:
        run = create_run(session, RunCreate(task="digits-cnn"), actor=SIM_ACTOR)
        model = register_model(
            session,
            ModelVersionCreate(task="digits-cnn", source_run_id=run.id, metrics=metrics),
            actor=SIM_ACTOR,
        )
        add_artifact(
            session,
            model,
            format=ArtifactFormat.torch,
            target="any",
            filename="model.pt",
            size_bytes=stored.size_bytes,
            sha256=stored.sha256,
            signature=None,
            actor=SIM_ACTOR,
        )
        return model.id or 0


def _promotion(fleet: OtaFleet, model_id: int) -> Promotion | None:
    with Session(fleet.engine) as session:
        return session.exec(
            select(Promotion).where(col(Promotion.model_version_id) == model_id)
        ).first()


def _state(fleet: OtaFleet, model_id: int) -> PromotionState | None:
    found = _promotion(fleet, model_id)
    return found.state if found is not None else None


def test_a_passing_run_is_promoted_to_every_device_and_a_failing_one_is_rejected(
    fleet: OtaFleet, checkpoint: bytes, tmp_path: Path
) -> None:
    # Prepare: the fleet's key in its key folder, the policy applied, the controller
    # stepping in the background as `fleet serve` does.
    keys = tmp_path / "signing-keys"
    keys.mkdir(mode=0o700)
    key = keys / "wards.key"
    key.write_bytes(
        fleet.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key.chmod(0o600)
    actor = SIM_ACTOR
    with session_scope(fleet.engine, write=True) as session:
        apply_policy(session, _policy(key), actor=actor, key_dir=keys)
    controller = PromotionController(engine=fleet.engine, store=fleet.store)
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(0.2):
            controller.step()

    stepping = threading.Thread(target=loop, daemon=True)
    stepping.start()
    try:
        # Execute: a run that passes the gates is registered; nobody types anything more.
        good = _register(fleet, checkpoint, {"final_accuracy": 0.95, "final_epsilon": 3.0})
        wait_for(
            lambda: _state(fleet, good) in (PromotionState.promoted, PromotionState.failed),
            timeout_s=120,
            what="the good model's promotion to finish",
        )
        promoted = _promotion(fleet, good)
        assert promoted is not None
        assert promoted.state is PromotionState.promoted, promoted.reason
        # Every device runs it (the fleet's rows, from the devices' answers).
        wait_for(
            lambda: _devices_on(fleet, good) == DEVICES,
            timeout_s=20,
            what="every device row to show the promoted model",
        )
        # Execute: a run failing the accuracy gate.
        bad = _register(fleet, checkpoint, {"final_accuracy": 0.5, "final_epsilon": 3.0})
        wait_for(
            lambda: _state(fleet, bad) is PromotionState.rejected,
            timeout_s=30,
            what="the bad model's promotion to be rejected",
        )
    finally:
        stop.set()
        stepping.join(timeout=120)
    # Assert: the timeline tells the chain, with each automatic decision's reason.
    with Session(fleet.engine) as session:
        group = session.exec(select(Group).where(col(Group.name) == "wards")).one()
        items = timeline(session, group)
        bundles = session.exec(
            select(Device.model_version_id).where(col(Device.group_id) == group.id)
        ).all()
    assert set(bundles) == {good}
    actions = [i.action for i in items]
    for step in ("model.register", "promotion.gates_pass", "promotion.bundle_built"):
        assert step in actions
    assert actions.index("promotion.bundle_built") < actions.index("rollout.create")
    assert actions.index("rollout.create") < actions.index("promotion.promote")
    rejected = [i for i in items if i.action == "promotion.reject"]
    assert len(rejected) == 1
    assert "accuracy 0.5 is below the gate 0.8" in rejected[0].reason
    assert rejected[0].actor == "system:promotions"
    for item in items:  # the closing note's timeline (pytest -s prints it)
        print(f"{item.at.isoformat()}  {item.actor:20}  {item.summary}  {item.reason}")


def test_a_bundle_failing_on_the_first_wave_is_rolled_back_with_the_reason_on_the_timeline(
    fleet: OtaFleet, checkpoint: bytes, tmp_path: Path
) -> None:
    """A model that passes the gates but whose bundle fails the devices' self-test: the
    first wave (25 %: one device) fails, the rollout aborts, the promotion is rolled back
    and nobody else ever got it."""
    from firmware_images.demo import build_demo_bundle

    keys = tmp_path / "signing-keys"
    keys.mkdir(mode=0o700)
    key = keys / "wards.key"
    key.write_bytes(
        fleet.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key.chmod(0o600)
    with session_scope(fleet.engine, write=True) as session:
        apply_policy(session, _policy(key), actor=SIM_ACTOR, key_dir=keys)

    def broken_build(**request: object) -> None:  # signed, but fails on the device
        bundle = build_demo_bundle(
            private_key=fleet.key, version="v-broken", seed=5, break_self_test=True
        )
        Path(str(request["out"])).write_bytes(bundle.data)

    controller = PromotionController(engine=fleet.engine, store=fleet.store, build=broken_build)
    model = _register(fleet, checkpoint, {"final_accuracy": 0.95, "final_epsilon": 3.0})

    def settled() -> bool:
        controller.step()
        return _state(fleet, model) in (PromotionState.rolled_back, PromotionState.promoted)

    wait_for(settled, timeout_s=60, what="the broken model's promotion to end")
    ended = _promotion(fleet, model)
    assert ended is not None and ended.state is PromotionState.rolled_back, ended
    assert ended.reason.startswith("the rollout aborted: ") and "wave 1" in ended.reason
    assert _devices_on(fleet, model) == 0  # nobody runs it
    with Session(fleet.engine) as session:
        group = session.exec(select(Group).where(col(Group.name) == "wards")).one()
        items = timeline(session, group, model_version_id=model)
    last = items[-1]
    assert last.action == "promotion.roll_back" and last.actor == "system:promotions"
    assert "wave 1" in last.reason
    for item in items:
        print(f"{item.at.isoformat()}  {item.actor:20}  {item.summary}  {item.reason}")


def _devices_on(fleet: OtaFleet, model_id: int) -> int:
    with Session(fleet.engine) as session:
        return len(
            session.exec(select(Device.id).where(col(Device.model_version_id) == model_id)).all()
        )
