"""Promotion policies and promotions through the HTTP API, on SQLite and PostgreSQL:
versioning, audit, roles, and the fleet-side refusals (422 with one line)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from firmware_images.keys import generate_keypair
from fleet.audit import Actor
from fleet.crud import policies as crud
from fleet.crud.groups import group_by_name
from fleet.crud.registry import add_artifact
from fleet.db import session_scope
from fleet.errors import InvalidInput
from fleet.models.auth import Role
from fleet.models.registry import ArtifactFormat, ModelVersion
from fleet.settings import FleetSettings

Headers = dict[str, str]
ACTOR = Actor(name="controller", role="admin", source="cli")


def policy_text(*, group: str = "ward-3", targets: str = '["rpi5"]', signing: str = "") -> str:
    return (
        f'group = "{group}"\ntargets = {targets}\n[gates]\nmin_accuracy = 0.9\n'
        f"[canary]\nwaves = [1, 10, 50, 100]\n[signing]\n"
        + (signing or 'approval = "operator"')
        + "\n"
    )


@pytest.fixture
def fleet_group(client: TestClient, admin: Headers) -> str:
    """Group ward-3 with one rpi5 and one cpu-x86 device."""
    assert client.post("/api/v1/groups", json={"name": "ward-3"}, headers=admin).status_code == 201
    for name, target in (("pi-1", "rpi5"), ("pc-1", "cpu-x86")):
        body = {"name": name, "hardware_target": target, "group": "ward-3"}
        assert client.post("/api/v1/devices", json=body, headers=admin).status_code == 201
    return "ward-3"


def apply(client: TestClient, headers: Headers, text: str) -> Any:
    return client.post("/api/v1/policies", json={"source": text}, headers=headers)


def test_every_apply_is_a_new_version_and_old_versions_stay_readable(
    client: TestClient, admin: Headers, fleet_group: str
) -> None:
    # Execute
    first = apply(client, admin, policy_text())
    second = apply(client, admin, policy_text(targets='["rpi5", "cpu-x86"]'))
    # Assert
    assert first.status_code == 201 and second.status_code == 201, second.text
    assert (first.json()["version"], second.json()["version"]) == (1, 2)
    current = client.get("/api/v1/policies/ward-3", headers=admin).json()
    assert current["version"] == 2 and current["document"]["targets"] == ["rpi5", "cpu-x86"]
    old = client.get("/api/v1/policies/ward-3?version=1", headers=admin).json()
    assert old["version"] == 1 and old["document"]["targets"] == ["rpi5"]
    assert old["current"] is False and old["source"] == policy_text()
    versions = client.get("/api/v1/policies/ward-3/versions", headers=admin).json()
    assert [v["version"] for v in versions] == [2, 1]
    listed = client.get("/api/v1/policies", headers=admin).json()
    assert [(p["group"], p["version"]) for p in listed] == [("ward-3", 2)]
    engine = client.app.state.engine  # type: ignore[attr-defined]
    with session_scope(engine, write=False) as session:  # what the controller reads
        policy = crud.current_policy(session, "ward-3")
        assert policy is not None and policy.targets == ("rpi5", "cpu-x86")
        assert crud.current_policy(session, "nowhere") is None
    missing = client.get("/api/v1/policies/ward-3?version=9", headers=admin)
    assert missing.status_code == 404 and "no policy version 9" in missing.json()["detail"]


def test_each_apply_is_audited_with_who_applied_what(
    client: TestClient, admin: Headers, fleet_group: str
) -> None:
    apply(client, admin, policy_text())
    apply(client, admin, policy_text())
    events = client.get("/api/v1/audit?action=policy.apply", headers=admin).json()["items"]
    assert [e["entity_id"] for e in events] == ["ward-3@2", "ward-3@1"]
    assert all(e["actor_role"] == "admin" and e["actor"] for e in events)
    assert events[0]["after"]["document"]["gates"]["min_accuracy"] == 0.9
    assert events[0]["before"] == {"version": 1} and events[1]["before"] is None


def test_only_an_admin_applies_and_approves_and_a_viewer_reads(
    client: TestClient, headers: dict[Role, Headers], fleet_group: str
) -> None:
    refused = apply(client, headers[Role.operator], policy_text())
    assert refused.status_code == 403 and "'admin'" in refused.json()["detail"]
    assert apply(client, headers[Role.admin], policy_text()).status_code == 201
    assert client.get("/api/v1/policies/ward-3", headers=headers[Role.viewer]).status_code == 200
    approve = client.post("/api/v1/promotions/1/approve", headers=headers[Role.operator])
    assert approve.status_code == 403


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (policy_text(group="no-such"), "group 'no-such' does not exist"),
        (policy_text(targets='["pdp-11"]'), "unknown target 'pdp-11': not a build recipe"),
        (policy_text(targets='["jetson-orin"]'), "target 'jetson-orin' is not present in group"),
        (policy_text().replace("0.9", "1.5"), "min_accuracy = 1.5 is out of range"),
        (policy_text().replace("[1, 10, 50, 100]", "[50, 10]"), "must increase and end at 100"),
        (
            policy_text(signing='key = "/nonexistent/k.key"'),
            "is outside the fleet's signing-key folder",
        ),
    ],
)
def test_bad_policies_are_refused_with_422_and_one_line(
    client: TestClient, admin: Headers, fleet_group: str, text: str, expected: str
) -> None:
    response = apply(client, admin, text)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert expected in detail and "\n" not in detail
    assert client.get("/api/v1/policies", headers=admin).json() == []


def test_a_signing_key_must_be_a_private_key_the_fleet_can_read(
    client: TestClient, admin: Headers, fleet_group: str, settings: FleetSettings
) -> None:
    assert settings.signing_key_dir is not None
    pair = generate_keypair(prefix=settings.signing_key_dir / "ward")
    public = apply(client, admin, policy_text(signing=f'key = "{pair.public}"'))
    assert public.status_code == 422 and "holds a public key" in public.json()["detail"]
    os.chmod(pair.private, 0o644)
    shared = apply(client, admin, policy_text(signing=f'key = "{pair.private}"'))
    assert shared.status_code == 422 and "accessible by other users" in shared.json()["detail"]
    os.chmod(pair.private, 0o600)
    ok = apply(client, admin, policy_text(signing=f'key = "{pair.private}"'))
    assert ok.status_code == 201 and ok.json()["signing"] == "key"
    # Only the path is stored, never the key's bytes.
    assert pair.private.read_text() not in ok.text
    assert ok.json()["document"]["signing"] == {"key": str(pair.private)}


def test_a_signing_key_outside_the_key_folder_is_refused_before_it_is_read(
    client: TestClient, admin: Headers, fleet_group: str, settings: FleetSettings, tmp_path: Path
) -> None:
    assert settings.signing_key_dir is not None
    outside = generate_keypair(prefix=tmp_path / "elsewhere")
    refused = apply(client, admin, policy_text(signing=f'key = "{outside.private}"'))
    assert refused.status_code == 422
    assert "outside the fleet's signing-key folder" in refused.json()["detail"]
    # A link from inside the folder to a key outside it is resolved, and refused too.
    link = settings.signing_key_dir / "link.key"
    link.unlink(missing_ok=True)
    link.symlink_to(outside.private)
    via_link = apply(client, admin, policy_text(signing=f'key = "{link}"'))
    assert via_link.status_code == 422 and "outside" in via_link.json()["detail"]
    link.unlink()


def test_a_fleet_without_a_key_folder_accepts_only_approval_policies(tmp_path: Path) -> None:
    pair = generate_keypair(prefix=tmp_path / "ward")
    with pytest.raises(InvalidInput, match="this fleet holds no signing keys") as err:
        crud.check_key_folder(str(pair.private), None)
    assert "\n" not in str(err.value)
    crud.check_key_folder(str(pair.private), tmp_path)  # inside: accepted


def test_an_operator_approval_is_recorded_once_and_audited(
    client: TestClient, admin: Headers, fleet_group: str
) -> None:
    # Prepare
    assert apply(client, admin, policy_text()).status_code == 201
    model = client.post("/api/v1/models", json={"task": "digits-cnn"}, headers=admin).json()
    engine = client.app.state.engine  # type: ignore[attr-defined]
    with session_scope(engine, write=True) as session:
        group = group_by_name(session, "ward-3")
        assert group is not None
        promotion = crud.create_promotion(
            session, group=group, model_version_id=model["id"], actor=ACTOR
        )
        promotion_id = promotion.id
    # Approving before the offline-signed bundles are uploaded is refused.
    early = client.post(f"/api/v1/promotions/{promotion_id}/approve", headers=admin)
    assert early.status_code == 409 and "no signed bundle for rpi5" in early.json()["detail"]
    with session_scope(engine, write=True) as session:
        stored = session.get(ModelVersion, model["id"])
        assert stored is not None
        add_artifact(
            session,
            stored,
            format=ArtifactFormat.bundle,
            target="rpi5",
            filename="b.bundle",
            size_bytes=3,
            sha256="ab" * 32,
            signature=None,
            actor=ACTOR,
        )
    pending = client.get("/api/v1/promotions", headers=admin).json()
    assert [(p["id"], p["state"], p["policy_version"]) for p in pending] == [
        (promotion_id, "pending_approval", 1)
    ]
    # Execute
    approved = client.post(f"/api/v1/promotions/{promotion_id}/approve", headers=admin)
    again = client.post(f"/api/v1/promotions/{promotion_id}/approve", headers=admin)
    # Assert
    assert approved.status_code == 200 and approved.json()["state"] == "approved"
    assert approved.json()["decided_by"]
    assert again.status_code == 409 and "not pending_approval" in again.json()["detail"]
    events = client.get("/api/v1/audit?action=promotion.", headers=admin).json()["items"]
    assert [e["action"] for e in events] == ["promotion.approve", "promotion.create"]
    assert client.post("/api/v1/promotions/999/approve", headers=admin).status_code == 404


def test_deleting_a_group_removes_its_policies_and_promotions(
    client: TestClient, admin: Headers, fleet_group: str
) -> None:
    # Prepare: a policy and a promotion, then the group's devices retired
    assert apply(client, admin, policy_text()).status_code == 201
    model = client.post("/api/v1/models", json={"task": "digits-cnn"}, headers=admin).json()
    engine = client.app.state.engine  # type: ignore[attr-defined]
    with session_scope(engine, write=True) as session:
        group = group_by_name(session, "ward-3")
        assert group is not None
        crud.create_promotion(session, group=group, model_version_id=model["id"], actor=ACTOR)
    devices = client.get("/api/v1/devices?group=ward-3", headers=admin).json()["items"]
    for device in devices:
        retired = client.post(f"/api/v1/devices/{device['id']}/retire", headers=admin)
        assert retired.status_code == 200, retired.text
    # Execute
    deleted = client.delete("/api/v1/groups/ward-3", headers=admin)
    # Assert
    assert deleted.status_code == 204, deleted.text
    assert client.get("/api/v1/policies", headers=admin).json() == []
    assert client.get("/api/v1/promotions", headers=admin).json() == []
    events = client.get("/api/v1/audit?action=policy.apply", headers=admin).json()["items"]
    assert len(events) == 1  # the history stays in the audit log
