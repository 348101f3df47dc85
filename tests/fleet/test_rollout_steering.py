"""Steering a rollout (issue 22 item 3): pause, resume, abort with or without rollback;
devices released from a wave (retired, or silent past the bound); late acks counted; the
per-rollout view in the API and the dashboard.

The controller and the bridge's ingestion run without a broker (a recording sender; device
answers fed to ``FleetBridge.ingest_batch`` as the bytes a device publishes); the API runs on
SQLite and PostgreSQL. The broker path is tests/e2e/test_ota_rollout.py.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlmodel import Session

from edge_client.protocol import mqtt as proto
from firmware_images.demo import build_demo_bundle
from fleet.artifacts import ArtifactStore
from fleet.models.auth import Role
from fleet.models.common import utcnow
from fleet.models.devices import Device
from fleet.ota.bridge import BridgeSettings, FleetBridge
from fleet.ota.controller import RolloutController

Headers = dict[str, str]


@pytest.fixture(scope="module")
def bundle() -> bytes:
    return build_demo_bundle(private_key=Ed25519PrivateKey.generate(), version="v1").data


def _rollout(
    client: TestClient, admin: Headers, bundle: bytes, *, devices: int, **options: Any
) -> tuple[int, int]:
    """``devices`` devices in group wards, a model with a bundle, a rollout: (model, rollout)."""
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
    body = {"model_version_id": model["id"], "group": "wards", **options}
    created = client.post("/api/v1/rollouts", json=body, headers=admin)
    assert created.status_code == 201, created.text
    return int(model["id"]), int(created.json()["id"])


@dataclass
class RecordingSender:
    sent: list[tuple[str, proto.Command]] = field(default_factory=list)

    def send_command(self, device_id: str, command: proto.Command) -> None:
        self.sent.append((device_id, command))

    def send_commands(self, commands: Sequence[tuple[str, proto.Command]]) -> None:
        self.sent.extend(commands)

    def artifact_ref(self, sha256: str) -> proto.ArtifactRef:
        return proto.ArtifactRef(sha256=sha256, size=1, chunk_size=1, chunk_sha256=("0" * 64,))

    def of(self, action: str) -> list[tuple[str, proto.Command]]:
        return [(d, c) for d, c in self.sent if c.action == action]


def _ack(device_id: str, command: proto.Command, *, ok: bool, version: int | None) -> Any:
    ack = proto.Ack(
        command_id=command.command_id,
        ok=ok,
        action=command.action,
        rollout_id=command.rollout_id,
        model_version_id=version,
        stage="installed" if ok else "self-test",
    )
    return ("msg", proto.topic(device_id, "ack"), proto.encode(ack))


def _bridge(client: TestClient) -> FleetBridge:
    return FleetBridge(
        engine=client.app.state.engine,  # type: ignore[attr-defined]
        store=ArtifactStore(client.app.state.settings.artifact_dir),  # type: ignore[attr-defined]
        settings=BridgeSettings(),
    )


def _view(client: TestClient, admin: Headers, rollout_id: int) -> dict[str, Any]:
    response = client.get(f"/api/v1/rollouts/{rollout_id}", headers=admin)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def _phases(view: dict[str, Any]) -> dict[str, str]:
    return {d["device_id"]: d["phase"] for d in view["devices"]}


# --- API: transitions, roles, audit ------------------------------------------------------


def test_pause_resume_abort_over_the_api_are_validated_authorized_and_audited(
    client: TestClient, admin: Headers, headers: dict[Role, Headers], bundle: bytes
) -> None:
    # Prepare: a rollout of 4 devices in two waves.
    _, rollout_id = _rollout(client, admin, bundle, devices=4, waves=[50, 100])
    operator, viewer = headers[Role.operator], headers[Role.viewer]
    url = f"/api/v1/rollouts/{rollout_id}"

    # A viewer may read but not steer.
    assert client.post(f"{url}/pause", headers=viewer).status_code == 403
    assert client.post(f"{url}/abort", json={"rollback": True}, headers=viewer).status_code == 403

    # Pause, then pausing again is refused; resume, then resuming again is refused.
    paused = client.post(f"{url}/pause", headers=operator)
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    again = client.post(f"{url}/pause", headers=operator)
    assert again.status_code == 409 and "is paused" in again.json()["detail"]
    # A paused rollout still holds its group.
    body = {"model_version_id": paused.json()["model_version_id"], "group": "wards"}
    busy = client.post("/api/v1/rollouts", json=body, headers=admin)
    assert busy.status_code == 409 and f"rollout abort {rollout_id}" in busy.json()["detail"]
    resumed = client.post(f"{url}/resume", headers=operator)
    assert resumed.status_code == 200 and resumed.json()["status"] == "running"
    assert client.post(f"{url}/resume", headers=operator).status_code == 409

    # Abort needs the operator's choice; then it is final.
    assert client.post(f"{url}/abort", json={}, headers=operator).status_code == 422
    aborted = client.post(f"{url}/abort", json={"rollback": False}, headers=operator)
    assert aborted.status_code == 200, aborted.text
    view = aborted.json()
    assert view["status"] == "aborted" and "kept on the new model" in view["reason"]
    assert view["finished_at"] is not None and view["waiting"] == 0
    assert {d["phase"] for d in view["devices"]} == {"not_sent"}
    for verb in ("pause", "resume"):
        refused = client.post(f"{url}/{verb}", headers=operator)
        assert refused.status_code == 409
        assert f"finished rollout cannot be {verb}d" in refused.json()["detail"]
    refused = client.post(f"{url}/abort", json={"rollback": True}, headers=operator)
    assert refused.status_code == 409 and "is aborted" in refused.json()["detail"]
    assert client.post("/api/v1/rollouts/999/pause", headers=operator).status_code == 404
    # The group is free again.
    assert client.post("/api/v1/rollouts", json=body, headers=admin).status_code == 201

    # Each change is in the audit log with who made it.
    events = client.get("/api/v1/audit", params={"entity_type": "rollout"}, headers=admin).json()[
        "items"
    ]
    mine = [e for e in events if str(e["entity_id"]) == str(rollout_id)]
    actions = [e["action"] for e in mine]
    for action in ("rollout.pause", "rollout.resume", "rollout.abort"):
        assert actions.count(action) == 1, actions
    assert all(
        e["actor"].startswith("token:operator") for e in mine if e["action"] != "rollout.create"
    )
    assert all(e["source"] == "api" for e in mine)


# --- controller: each transition --------------------------------------------------------


def test_a_paused_rollout_sends_nothing_records_answers_and_resumes(
    client: TestClient, admin: Headers, headers: dict[Role, Headers], bundle: bytes
) -> None:
    engine = client.app.state.engine  # type: ignore[attr-defined]
    model_id, rollout_id = _rollout(client, admin, bundle, devices=4, waves=[50, 100])
    operator = headers[Role.operator]
    url = f"/api/v1/rollouts/{rollout_id}"
    sender = RecordingSender()
    controller = RolloutController(engine=engine, sender=sender)
    bridge = _bridge(client)

    # Paused before the first pass: nothing goes out.
    assert client.post(f"{url}/pause", headers=operator).status_code == 200
    controller.step()
    assert sender.sent == []
    # Resumed: wave 1 goes out; paused again while it installs.
    assert client.post(f"{url}/resume", headers=operator).status_code == 200
    controller.step()
    assert len(sender.sent) == 2
    assert client.post(f"{url}/pause", headers=operator).status_code == 200
    # In-flight installs finish and are recorded; no advance, no resend, no new wave.
    bridge.ingest_batch([_ack(d, c, ok=True, version=model_id) for d, c in sender.sent])
    controller.step(now=utcnow() + timedelta(hours=2))  # well past any ack timeout
    view = _view(client, admin, rollout_id)
    assert view["status"] == "paused" and view["current_wave"] == 0
    assert view["progress"][0]["installed"] == 2 and len(sender.sent) == 2
    assert view["progress"][1]["not_sent"] == 2 and view["progress"][1]["sent"] is False
    # Resumed: the next wave goes out and the rollout completes.
    assert client.post(f"{url}/resume", headers=operator).status_code == 200
    controller.step()  # advance
    controller.step()  # send wave 2
    assert len(sender.sent) == 4
    bridge.ingest_batch([_ack(d, c, ok=True, version=model_id) for d, c in sender.sent[2:]])
    controller.step()
    assert _view(client, admin, rollout_id)["status"] == "succeeded"


def test_abort_with_rollback_sends_back_only_the_current_wave_and_late_installs_too(
    client: TestClient, admin: Headers, headers: dict[Role, Headers], bundle: bytes
) -> None:
    # Prepare: 6 devices, waves of 2 and 4; wave 1 installed, wave 2 half answered.
    engine = client.app.state.engine  # type: ignore[attr-defined]
    model_id, rollout_id = _rollout(
        client, admin, bundle, devices=6, waves=[33, 100], max_failure_rate=0.5
    )
    sender = RecordingSender()
    controller = RolloutController(engine=engine, sender=sender)
    bridge = _bridge(client)
    controller.step()
    wave1 = list(sender.sent)
    bridge.ingest_batch([_ack(d, c, ok=True, version=model_id) for d, c in wave1])
    controller.step()
    controller.step()
    wave2 = sender.sent[len(wave1) :]
    assert len(wave1) == 2 and len(wave2) == 4
    bridge.ingest_batch([_ack(d, c, ok=True, version=model_id) for d, c in wave2[:2]])
    view = _view(client, admin, rollout_id)
    waiting = {d for d, c in wave2[2:]}
    assert view["waiting"] == 2
    assert {d for d, p in _phases(view).items() if p == "waiting"} == waiting

    # Execute: the operator aborts with rollback.
    aborted = client.post(
        f"/api/v1/rollouts/{rollout_id}/abort",
        json={"rollback": True},
        headers=headers[Role.operator],
    )
    assert aborted.status_code == 200 and "rolled back" in aborted.json()["reason"]
    controller.step()

    # Assert: the current wave's installed devices are sent back; wave 1 keeps the model.
    assert {d for d, _ in sender.of("rollback")} == {d for d, _ in wave2[:2]}
    assert {p for d, p in _phases(_view(client, admin, rollout_id)).items() if d in waiting} == {
        "unanswered"
    }
    # A device of the wave that installs after the abort is sent back too (once).
    late_device, late_command = wave2[2]
    bridge.ingest_batch([_ack(late_device, late_command, ok=True, version=model_id)])
    controller.step()
    controller.step()
    assert [d for d, _ in sender.of("rollback")].count(late_device) == 1
    bridge.ingest_batch([_ack(d, c, ok=True, version=None) for d, c in sender.of("rollback")])
    view = _view(client, admin, rollout_id)
    assert view["progress"][1]["rolled_back"] == 3 and view["progress"][0]["installed"] == 2


def test_abort_without_rollback_leaves_devices_on_the_new_model(
    client: TestClient, admin: Headers, headers: dict[Role, Headers], bundle: bytes
) -> None:
    engine = client.app.state.engine  # type: ignore[attr-defined]
    model_id, rollout_id = _rollout(client, admin, bundle, devices=4, waves=[50, 100])
    sender = RecordingSender()
    controller = RolloutController(engine=engine, sender=sender)
    controller.step()
    _bridge(client).ingest_batch([_ack(d, c, ok=True, version=model_id) for d, c in sender.sent])
    body = {"rollback": False}
    url = f"/api/v1/rollouts/{rollout_id}/abort"
    assert client.post(url, json=body, headers=headers[Role.operator]).status_code == 200
    controller.step()
    controller.step()
    assert sender.of("rollback") == [] and len(sender.sent) == 2
    view = _view(client, admin, rollout_id)
    assert view["progress"][0]["installed"] == 2
    assert view["progress"][1]["not_sent"] == 2 and view["progress"][1]["waiting"] == 0


def _set_last_seen(engine: Any, device_id: str, when: datetime) -> None:
    with Session(engine) as session:
        session.execute(update(Device).where(Device.id == device_id).values(last_seen_at=when))  # type: ignore[arg-type]
        session.commit()


def test_a_silent_device_is_released_past_the_bound_and_the_verdict_is_over_the_rest(
    client: TestClient, admin: Headers, bundle: bytes
) -> None:
    # Prepare: 3 devices in one wave; two answer, one is never seen; a heartbeating one.
    engine = client.app.state.engine  # type: ignore[attr-defined]
    model_id, rollout_id = _rollout(
        client, admin, bundle, devices=4, waves=[100], ack_timeout_s=600
    )
    sender = RecordingSender()
    controller = RolloutController(engine=engine, sender=sender, release_after_s=60)
    now = utcnow()
    controller.step(now=now)
    (silent, _), (alive, _) = sender.sent[2], sender.sent[3]
    _bridge(client).ingest_batch(
        [_ack(d, c, ok=True, version=model_id) for d, c in sender.sent[:2]]
    )
    _set_last_seen(engine, alive, now + timedelta(seconds=50))  # it keeps heartbeating

    # Not yet past the bound: waits for both.
    controller.step(now=now + timedelta(seconds=59))
    assert _view(client, admin, rollout_id)["waiting"] == 2

    # Past it: the silent one is released, the heartbeating one still waited for.
    controller.step(now=now + timedelta(seconds=61))
    view = _view(client, admin, rollout_id)
    phases = _phases(view)
    assert phases[silent] == "released" and phases[alive] == "waiting"
    assert view["status"] == "running" and view["progress"][0]["released"] == 1
    row = next(d for d in view["devices"] if d["device_id"] == silent)
    assert row["error"].startswith("released: silent for over 60")

    # The alive one goes silent too: both released, the verdict is over the two that answered.
    controller.step(now=now + timedelta(seconds=111))
    view = _view(client, admin, rollout_id)
    assert view["status"] == "succeeded", view
    assert (view["progress"][0]["installed"], view["progress"][0]["released"]) == (2, 2)
    assert view["progress"][0]["failed"] == 0


def test_a_retired_device_is_released_at_once_and_a_late_success_is_counted(
    client: TestClient, admin: Headers, bundle: bytes
) -> None:
    engine = client.app.state.engine  # type: ignore[attr-defined]
    model_id, rollout_id = _rollout(
        client, admin, bundle, devices=3, waves=[100], ack_timeout_s=10, max_failure_rate=0.5
    )
    sender = RecordingSender()
    controller = RolloutController(engine=engine, sender=sender, max_attempts=1)
    bridge = _bridge(client)
    now = utcnow()
    controller.step(now=now)
    (first, c1), (retired, _), (slow, c3) = sender.sent
    bridge.ingest_batch([_ack(first, c1, ok=True, version=model_id)])
    assert client.post(f"/api/v1/devices/{retired}/retire", headers=admin).status_code in (200, 204)
    _set_last_seen(engine, slow, now + timedelta(seconds=11))
    # The retired device is released; the slow one times out and counts failed (1 of 2).
    controller.step(now=now + timedelta(seconds=11))
    view = _view(client, admin, rollout_id)
    assert _phases(view)[retired] == "released" and _phases(view)[slow] == "failed"
    assert view["status"] == "succeeded" and view["progress"][0]["failed"] == 1

    # Its success arrives late: the row and the progress say installed (issue 15).
    bridge.ingest_batch([_ack(slow, c3, ok=True, version=model_id)])
    view = _view(client, admin, rollout_id)
    assert _phases(view)[slow] == "installed"
    assert (view["progress"][0]["installed"], view["progress"][0]["failed"]) == (2, 0)
    # A late failure does not undo anything, and a duplicate success changes nothing.
    bridge.ingest_batch([_ack(first, c1, ok=False, version=None)])
    assert _phases(_view(client, admin, rollout_id))[first] == "installed"


def test_release_bound_must_be_positive() -> None:
    with pytest.raises(ValueError, match="release_after_s must be positive"):
        RolloutController(engine=None, sender=RecordingSender(), release_after_s=0)  # type: ignore[arg-type]


# --- dashboard ----------------------------------------------------------------------------


def _login(client: TestClient, token: str) -> TestClient:
    browser = TestClient(client.app, base_url="http://testserver")
    response = browser.post(
        "/login", data={"token": token, "next": "/rollouts"}, follow_redirects=False
    )
    assert response.status_code == 303, response.text
    return browser


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]{64})"', html)
    assert match, "page has no CSRF field"
    return match.group(1)


def test_the_rollout_page_shows_who_is_waiting_and_operators_steer_it(
    client: TestClient, admin: Headers, tokens: dict[Role, str], bundle: bytes
) -> None:
    engine = client.app.state.engine  # type: ignore[attr-defined]
    _, rollout_id = _rollout(client, admin, bundle, devices=4, waves=[50, 100])
    sender = RecordingSender()
    RolloutController(engine=engine, sender=sender).step()
    waiting = sorted(d for d, _ in sender.sent)

    # A viewer sees each wave's devices and who is waited for, the list links there.
    viewer = _login(client, tokens[Role.viewer])
    listing = viewer.get("/rollouts").text
    assert f'href="/rollouts/{rollout_id}"' in listing and 'data-waiting="2"' in listing
    page = viewer.get(f"/rollouts/{rollout_id}").text
    for device in waiting:
        assert f'data-waiting-device="{device}"' in page
    assert page.count('data-phase="waiting"') == 2 and page.count('data-phase="not_sent"') == 2
    assert f"/rollouts/{rollout_id}/pause" not in page
    refused = viewer.post(
        f"/rollouts/{rollout_id}/pause", data={"csrf": _csrf(page)}, headers={"Accept": "text/html"}
    )
    assert refused.status_code == 403
    assert viewer.get("/rollouts/999").status_code == 404

    # An operator: a forged form is refused; Pause, Resume and Abort (no rollback) work.
    operator = _login(client, tokens[Role.operator])
    page = operator.get(f"/rollouts/{rollout_id}").text
    assert f'action="/rollouts/{rollout_id}/pause"' in page
    forged = operator.post(f"/rollouts/{rollout_id}/pause", data={"csrf": "0" * 64})
    assert forged.status_code == 403
    for action, data, status in (
        ("pause", {}, "paused"),
        ("resume", {}, "running"),
        ("abort", {"rollback": "false"}, "aborted"),
    ):
        clicked = operator.post(
            f"/rollouts/{rollout_id}/{action}",
            data={"csrf": _csrf(page), **data},
            follow_redirects=False,
        )
        assert clicked.status_code == 303, clicked.text
        page = operator.get(clicked.headers["location"]).text
        assert f'data-testid="status">{status}<' in page
    assert 'data-phase="not_sent"' in page and "nobody" in page
    events = client.get("/api/v1/audit", params={"entity_type": "rollout"}, headers=admin).json()[
        "items"
    ]
    steered = [
        e for e in events if e["action"] in ("rollout.pause", "rollout.resume", "rollout.abort")
    ]
    assert len(steered) == 3 and {e["source"] for e in steered} == {"dashboard"}
