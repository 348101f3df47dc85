"""Staged rollouts: wave planning, the API, the controller's decisions, acks from MQTT.

The controller and the bridge's ingestion run here without a broker: commands go to a
recording sender, and device answers are fed to ``FleetBridge.ingest_batch`` as the
exact bytes a device would publish. The broker path is covered in tests/e2e.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from sqlmodel import Session, select

from edge_client.protocol import mqtt as proto
from firmware_images.demo import build_demo_bundle
from fleet.artifacts import ArtifactStore
from fleet.crud.rollouts import plan_waves
from fleet.models.devices import Device
from fleet.models.ota import DeviceRolloutState, RolloutDevice
from fleet.ota.bridge import BridgeSettings, FleetBridge
from fleet.ota.controller import RolloutController, wave_verdict

Headers = dict[str, str]


# --- pure decisions -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "waves", "expected"),
    [
        (20, [5, 25, 100], [1, 5, 20]),
        (1000, [5, 25, 100], [50, 250, 1000]),
        (2, [5, 25, 100], [1, 2]),
        (1, [5, 25, 100], [1]),
        (10, [100], [10]),
    ],
)
def test_plan_waves_examples(count: int, waves: list[int], expected: list[int]) -> None:
    assert plan_waves(count, waves) == expected


@given(
    st.integers(min_value=1, max_value=5000),
    st.lists(st.integers(min_value=1, max_value=99), max_size=6, unique=True).map(
        lambda w: [*sorted(w), 100]
    ),
)
def test_plan_waves_grows_strictly_and_covers_everyone(count: int, waves: list[int]) -> None:
    sizes = plan_waves(count, waves)
    assert sizes[0] >= 1 and sizes[-1] == count
    assert all(b > a for a, b in itertools.pairwise(sizes))
    for total, percent in zip(sizes, waves, strict=False):
        assert total >= count * percent / 100 - 1e-9 or total == count


@pytest.mark.parametrize(
    ("size", "installed", "failed", "rate", "verdict"),
    [
        (10, 0, 0, 0.1, "wait"),
        (10, 9, 1, 0.1, "advance"),
        (10, 5, 2, 0.1, "abort"),  # already over: no later answer can save the wave
        (1, 0, 1, 0.1, "abort"),
        (1, 1, 0, 0.0, "advance"),
        (20, 18, 2, 0.1, "advance"),
    ],
)
def test_wave_verdict(size: int, installed: int, failed: int, rate: float, verdict: str) -> None:
    assert (
        wave_verdict(size=size, installed=installed, failed=failed, max_failure_rate=rate)
        == verdict
    )


def test_bad_plans_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one device"):
        plan_waves(0, [100])
    with pytest.raises(ValueError, match="ending at 100"):
        plan_waves(5, [5, 50])


# --- API ------------------------------------------------------------------------------


def _setup(client: TestClient, admin: Headers, *, devices: int, bundle: bytes) -> int:
    assert client.post("/api/v1/groups", json={"name": "wards"}, headers=admin).status_code == 201
    for i in range(devices):
        body = {"name": f"pi-{i}", "hardware_target": "cpu-x86", "group": "wards"}
        assert client.post("/api/v1/devices", json=body, headers=admin).status_code == 201
    model = client.post("/api/v1/models", json={"task": "synthetic-logreg"}, headers=admin).json()
    upload = client.post(
        f"/api/v1/models/{model['id']}/artifacts",
        files={"file": ("model.ffb", bundle, "application/octet-stream")},
        data={"format": "bundle", "target": "cpu-x86"},
        headers=admin,
    )
    assert upload.status_code == 201, upload.text
    return int(model["id"])


@pytest.fixture(scope="module")
def bundle() -> bytes:
    return build_demo_bundle(private_key=Ed25519PrivateKey.generate(), version="v1").data


def test_create_list_and_get_a_rollout(
    client: TestClient, admin: Headers, headers: dict[Any, Headers], bundle: bytes
) -> None:
    model_id = _setup(client, admin, devices=20, bundle=bundle)
    body = {"model_version_id": model_id, "group": "wards", "waves": [5, 25, 100]}
    created = client.post("/api/v1/rollouts", json=body, headers=admin)
    assert created.status_code == 201, created.text
    view = created.json()
    assert view["status"] == "running" and [w["devices"] for w in view["progress"]] == [1, 4, 15]
    assert [w["percent"] for w in view["progress"]] == [5, 25, 100]
    viewer = next(h for r, h in headers.items() if r.value == "viewer")
    listed = client.get("/api/v1/rollouts", headers=viewer).json()
    assert listed["total"] == 1 and listed["items"][0]["id"] == view["id"]
    assert client.get(f"/api/v1/rollouts/{view['id']}", headers=viewer).json()["group"] == "wards"
    assert client.get("/api/v1/rollouts/999", headers=viewer).status_code == 404
    again = client.post("/api/v1/rollouts", json=body, headers=admin)
    assert again.status_code == 409 and "still running" in again.json()["detail"]
    audit = client.get("/api/v1/audit", headers=admin).json()
    assert any(e["action"] == "rollout.create" for e in audit["items"])


@pytest.mark.parametrize(
    ("change", "status", "words"),
    [
        ({"group": "nowhere"}, 422, "does not exist"),
        ({"model_version_id": 9999}, 422, "not registered"),
        ({"waves": [50, 25, 100]}, 422, "increase"),
        ({"waves": [5, 25]}, 422, "end at 100"),
        ({"max_failure_rate": 1.5}, 422, "max_failure_rate"),
    ],
)
def test_bad_rollouts_are_refused_with_a_reason(
    client: TestClient,
    admin: Headers,
    bundle: bytes,
    change: dict[str, Any],
    status: int,
    words: str,
) -> None:
    model_id = _setup(client, admin, devices=2, bundle=bundle)
    body = {"model_version_id": model_id, "group": "wards", **change}
    response = client.post("/api/v1/rollouts", json=body, headers=admin)
    assert response.status_code == status
    assert words in response.text
    assert client.get("/api/v1/rollouts", headers=admin).json()["total"] == 0


def test_a_target_without_a_bundle_is_refused(
    client: TestClient, admin: Headers, bundle: bytes
) -> None:
    model_id = _setup(client, admin, devices=1, bundle=bundle)
    body = {"name": "jetson-1", "hardware_target": "jetson-orin", "group": "wards"}
    assert client.post("/api/v1/devices", json=body, headers=admin).status_code == 201
    response = client.post(
        "/api/v1/rollouts", json={"model_version_id": model_id, "group": "wards"}, headers=admin
    )
    assert response.status_code == 409 and "jetson-orin" in response.json()["detail"]


# --- controller + ingestion ------------------------------------------------------------


@dataclass
class RecordingSender:
    sent: list[tuple[str, proto.Command]] = field(default_factory=list)
    store: ArtifactStore | None = None
    calls: int = 0  # send_commands calls: one per step that sends

    def send_command(self, device_id: str, command: proto.Command) -> None:
        self.sent.append((device_id, command))

    def send_commands(self, commands: Sequence[tuple[str, proto.Command]]) -> None:
        self.calls += 1
        self.sent.extend(commands)

    def artifact_ref(self, sha256: str) -> proto.ArtifactRef:
        return proto.ArtifactRef(sha256=sha256, size=1, chunk_size=1, chunk_sha256=("0" * 64,))


def _ack(
    device_id: str, command: proto.Command, *, ok: bool, version: int | None
) -> tuple[str, str, bytes]:
    ack = proto.Ack(
        command_id=command.command_id,
        ok=ok,
        action=command.action,
        rollout_id=command.rollout_id,
        model_version_id=version,
        stage="installed" if ok else "self-test",
    )
    return ("msg", proto.topic(device_id, "ack"), proto.encode(ack))


def test_controller_advances_waves_on_acks_and_aborts_and_rolls_back_on_failures(
    client: TestClient, admin: Headers, bundle: bytes
) -> None:
    # Prepare: 20 devices, a rollout with waves 10, 50, 100 % and at most 10 % failures.
    engine = client.app.state.engine  # type: ignore[attr-defined]
    model_id = _setup(client, admin, devices=20, bundle=bundle)
    body = {
        "model_version_id": model_id,
        "group": "wards",
        "waves": [10, 50, 100],
        "max_failure_rate": 0.1,
    }
    rollout_id = client.post("/api/v1/rollouts", json=body, headers=admin).json()["id"]
    sender = RecordingSender()
    controller = RolloutController(engine=engine, sender=sender)
    bridge = FleetBridge(
        engine=engine,
        store=ArtifactStore(client.app.state.settings.artifact_dir),
        settings=BridgeSettings(),
    )  # type: ignore[attr-defined]

    # Execute: wave 1 (2 devices) installs fine.
    controller.step()
    assert len(sender.sent) == 2 and all(c.action == "install" for _, c in sender.sent)
    bridge.ingest_batch([_ack(d, c, ok=True, version=model_id) for d, c in sender.sent])
    controller.step()  # -> wave 2
    wave2 = sender.sent[2:]
    assert len(wave2) == 0
    controller.step()  # sends wave 2 (8 devices)
    wave2 = sender.sent[2:]
    assert len(wave2) == 8
    # Two of eight fail: 25 % > 10 % -> abort.
    bridge.ingest_batch(
        [
            _ack(d, c, ok=(i >= 2), version=model_id if i >= 2 else None)
            for i, (d, c) in enumerate(wave2)
        ]
        + [("msg", proto.topic(wave2[0][0], "ack"), b"{garbage")]
    )
    controller.step()

    # Assert: aborted with a reason; every installed device got a rollback; wave 3 untouched.
    view = client.get(f"/api/v1/rollouts/{rollout_id}", headers=admin).json()
    assert view["status"] == "aborted" and "wave 2" in view["reason"]
    rollbacks = [(d, c) for d, c in sender.sent if c.action == "rollback"]
    assert len(rollbacks) == 2 + 6
    # Wave 3 was never sent: "not sent", not "waiting" (issue 15).
    assert view["progress"][2]["not_sent"] == view["progress"][2]["devices"] == 10
    assert view["progress"][2]["waiting"] == 0 and view["waiting"] == 0
    assert bridge.stats.ignored == 1
    bridge.ingest_batch([_ack(d, c, ok=True, version=None) for d, c in rollbacks])
    view = client.get(f"/api/v1/rollouts/{rollout_id}", headers=admin).json()
    assert sum(w["rolled_back"] for w in view["progress"]) == 8
    with Session(engine) as session:
        states = session.exec(
            select(RolloutDevice.state).where(RolloutDevice.rollout_id == rollout_id)
        ).all()
        assert states.count(DeviceRolloutState.failed) == 2
        on_new = session.exec(select(Device).where(Device.model_version_id == model_id)).all()
        assert on_new == []


def test_unanswered_installs_are_resent_then_count_as_failed(
    client: TestClient, admin: Headers, bundle: bytes
) -> None:
    from datetime import timedelta

    from fleet.models.common import utcnow

    engine = client.app.state.engine  # type: ignore[attr-defined]
    model_id = _setup(client, admin, devices=1, bundle=bundle)
    body = {"model_version_id": model_id, "group": "wards", "ack_timeout_s": 10}
    rollout_id = client.post("/api/v1/rollouts", json=body, headers=admin).json()["id"]
    sender = RecordingSender()
    controller = RolloutController(engine=engine, sender=sender, max_attempts=2)
    now = utcnow()
    controller.step(now=now)
    controller.step(now=now + timedelta(seconds=5))  # not yet timed out
    controller.step(now=now + timedelta(seconds=11))  # resend
    assert len(sender.sent) == 2 and sender.sent[0][1].command_id == sender.sent[1][1].command_id
    controller.step(now=now + timedelta(seconds=30))  # second timeout: failed -> abort
    view = client.get(f"/api/v1/rollouts/{rollout_id}", headers=admin).json()
    assert view["status"] == "aborted" and view["progress"][0]["failed"] == 1


def test_dashboard_shows_rollout_progress_per_wave(
    client: TestClient, admin: Headers, tokens: dict[Any, str], bundle: bytes
) -> None:
    model_id = _setup(client, admin, devices=20, bundle=bundle)
    body = {"model_version_id": model_id, "group": "wards", "waves": [5, 25, 100]}
    rollout_id = client.post("/api/v1/rollouts", json=body, headers=admin).json()["id"]
    assert client.get("/rollouts", follow_redirects=False).status_code in (303, 307)
    viewer = next(t for r, t in tokens.items() if r.value == "viewer")
    login = client.post("/login", data={"token": viewer, "next": "/rollouts"})
    try:
        assert login.status_code == 200, login.text
        page = client.get("/rollouts").text
    finally:
        client.cookies.clear()
    assert f'data-rollout="{rollout_id}"' in page
    assert "5%: 0/0/1 of 1" in page and "100%: not sent (15)" in page
    assert 'href="/rollouts"' in page and "No drift detected." in page


def test_a_device_that_goes_offline_after_installing_fails_the_wave(
    client: TestClient, admin: Headers, bundle: bytes
) -> None:
    from datetime import timedelta

    from fleet.models.common import utcnow

    engine = client.app.state.engine  # type: ignore[attr-defined]
    model_id = _setup(client, admin, devices=10, bundle=bundle)
    body = {"model_version_id": model_id, "group": "wards", "waves": [10, 100]}
    rollout_id = client.post("/api/v1/rollouts", json=body, headers=admin).json()["id"]
    sender = RecordingSender()
    controller = RolloutController(engine=engine, sender=sender, offline_grace_s=30)
    bridge = FleetBridge(
        engine=engine,
        store=ArtifactStore(client.app.state.settings.artifact_dir),
        settings=BridgeSettings(),
    )  # type: ignore[attr-defined]
    controller.step()
    ((device_id, command),) = sender.sent
    # It installs, then its Last Will says it is gone, before the controller looks again.
    will = ("msg", proto.topic(device_id, "status"), proto.encode(proto.Status(online=False)))
    bridge.ingest_batch([_ack(device_id, command, ok=True, version=model_id)])
    bridge.ingest_batch([will])
    controller.step()  # a reconnect may follow: not failed yet
    assert client.get(f"/api/v1/rollouts/{rollout_id}", headers=admin).json()["status"] == "running"
    controller.step(now=utcnow() + timedelta(seconds=31))
    view = client.get(f"/api/v1/rollouts/{rollout_id}", headers=admin).json()
    assert view["status"] == "aborted" and view["progress"][0]["failed"] == 1
    assert view["reason"].startswith("wave 1:")
    assert [d for d, c in sender.sent if c.action == "rollback"] == [device_id]


@dataclass
class CheckingSender(RecordingSender):
    """Records what the database says about each device at the moment its command goes out."""

    engine: Any = None
    unrecorded: list[str] = field(default_factory=list)

    def send_commands(self, commands: Sequence[tuple[str, proto.Command]]) -> None:
        with Session(self.engine) as session:  # a separate connection: committed state only
            rows = {r.device_id: r for r in session.exec(select(RolloutDevice)).all()}
        for device_id, command in commands:
            row = rows[device_id]
            if not (
                row.state is DeviceRolloutState.sent
                and row.command_id == command.command_id
                and row.sent_at is not None
                and row.attempts == 1
            ):
                self.unrecorded.append(device_id)
        super().send_commands(commands)


def test_a_wave_is_recorded_at_once_and_committed_before_its_commands_go_out_together(
    client: TestClient, admin: Headers, bundle: bytes
) -> None:
    # Prepare: 30 devices, waves of 20 % (6 devices) and 100 % (24 more).
    engine = client.app.state.engine  # type: ignore[attr-defined]
    model_id = _setup(client, admin, devices=30, bundle=bundle)
    body = {"model_version_id": model_id, "group": "wards", "waves": [20, 100]}
    rollout_id = client.post("/api/v1/rollouts", json=body, headers=admin).json()["id"]
    with Session(engine) as session:
        created = session.exec(select(RolloutDevice)).all()
    assert len(created) == 30 and {(r.state, r.attempts, r.command_id) for r in created} == {
        (DeviceRolloutState.pending, 0, None)
    }
    sender = CheckingSender(engine=engine)
    controller = RolloutController(engine=engine, sender=sender)
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    from sqlalchemy import event

    # Execute: wave 1, its acks, the advance, then wave 2 under a statement counter.
    controller.step()
    bridge = FleetBridge(
        engine=engine,
        store=ArtifactStore(client.app.state.settings.artifact_dir),  # type: ignore[attr-defined]
        settings=BridgeSettings(),
    )
    bridge.ingest_batch([_ack(d, c, ok=True, version=model_id) for d, c in sender.sent])
    controller.step()  # -> wave 2
    event.listen(engine, "before_cursor_execute", count)
    try:
        controller.step()  # sends wave 2
    finally:
        event.remove(engine, "before_cursor_execute", count)

    # Assert: one send per wave, each device's own command, every state committed first;
    # wave 2's 24 sends are one UPDATE and one artifact lookup, not one per device.
    assert sender.calls == 2 and len(sender.sent) == 30
    assert len({d for d, _ in sender.sent}) == 30
    assert len({c.command_id for _, c in sender.sent}) == 30
    assert sender.unrecorded == []
    updates = [s for s in statements if s.lstrip().upper().startswith("UPDATE ROLLOUT_DEVICES")]
    lookups = [s for s in statements if "FROM artifacts" in s]
    assert len(updates) == 1 and len(lookups) == 1, statements
    assert len(statements) < 24, statements
    view = client.get(f"/api/v1/rollouts/{rollout_id}", headers=admin).json()
    assert [(w["devices"], w["installed"], w["waiting"]) for w in view["progress"]] == [
        (6, 6, 0),
        (24, 0, 24),
    ]

    # Execute: a pass while wave 2 downloads (nothing to send, nothing timed out).
    statements.clear()
    event.listen(engine, "before_cursor_execute", count)
    try:
        controller.step()
    finally:
        event.remove(engine, "before_cursor_execute", count)

    # Assert: waiting costs aggregate queries only, no device's row is loaded or written.
    assert statements and len(sender.sent) == 30
    loads = [s for s in statements if "previous_model_version_id" in s and "NOT LIKE" not in s]
    assert not loads and not [s for s in statements if "UPDATE" in s], statements

    # Execute: wave 2's 24 acks arrive in one batch (with a duplicate and a stranger's).
    statements.clear()
    acks = [_ack(d, c, ok=True, version=model_id) for d, c in sender.sent[6:]]
    event.listen(engine, "before_cursor_execute", count)
    try:
        bridge.ingest_batch(
            [*acks, acks[0], _ack("nobody", sender.sent[7][1], ok=False, version=None)]
        )
    finally:
        event.remove(engine, "before_cursor_execute", count)

    # Assert: the rows of the batch's acks are read in one query, not one per ack.
    reads = [s for s in statements if "FROM rollout_devices" in s]
    assert len(reads) == 1, statements
    view = client.get(f"/api/v1/rollouts/{rollout_id}", headers=admin).json()
    assert [(w["installed"], w["failed"]) for w in view["progress"]] == [(6, 0), (24, 0)]
