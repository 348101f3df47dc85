"""Devices, groups and tags through the HTTP API, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fleet.credentials import verify_mosquitto_hash
from fleet.models.auth import Role
from fleet.models.common import utcnow

Headers = dict[str, str]


def enroll(client: TestClient, headers: Headers, name: str, **fields: Any) -> dict[str, Any]:
    body = {"name": name, "hardware_target": fields.pop("hardware_target", "rpi5"), **fields}
    response = client.post("/api/v1/devices", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


def group(client: TestClient, headers: Headers, name: str) -> None:
    response = client.post("/api/v1/groups", json={"name": name}, headers=headers)
    assert response.status_code == 201, response.text


def test_enroll_returns_credentials_once_and_stores_only_a_hash(
    client: TestClient, admin: Headers, run_sql: Callable[..., Any]
) -> None:
    # Prepare
    group(client, admin, "wards")
    # Execute
    enrolled = enroll(client, admin, "pi-ward3-01", group="wards", tags=["icu", "floor-3"])
    # Assert: the response carries the password, nothing else ever does.
    device, mqtt = enrolled["device"], enrolled["mqtt"]
    assert device["id"].startswith("dev-") and mqtt["username"] == device["id"]
    assert device["group"] == "wards" and device["tags"] == ["floor-3", "icu"]
    assert device["status"] == "never_seen"
    password = mqtt["password"]
    assert len(password) >= 24
    fetched = client.get(f"/api/v1/devices/{device['id']}", headers=admin)
    assert password not in fetched.text and "password" not in fetched.text
    audit = client.get("/api/v1/audit", headers=admin)
    assert password not in audit.text and "hash" not in audit.text
    stored = run_sql(
        client.app.state.engine,  # type: ignore[attr-defined]
        "SELECT mqtt_password_hash FROM devices WHERE id = :id",
        id=device["id"],
    )[0][0]
    assert password not in stored
    assert verify_mosquitto_hash(password, stored)


def test_enroll_response_is_not_cacheable(client: TestClient, admin: Headers) -> None:
    response = client.post(
        "/api/v1/devices", json={"name": "pi-1", "hardware_target": "rpi5"}, headers=admin
    )
    assert response.headers["cache-control"] == "no-store"


def test_list_filters_combine_and_paginate(client: TestClient, admin: Headers) -> None:
    # Prepare: 7 devices over two groups, tags and targets.
    group(client, admin, "wards")
    group(client, admin, "labs")
    ids = {}
    for i in range(5):
        ids[f"w{i}"] = enroll(
            client,
            admin,
            f"ward-{i}",
            group="wards",
            tags=["icu"] if i % 2 == 0 else ["er"],
            hardware_target="rpi5" if i < 3 else "jetson-orin",
        )["device"]["id"]
    for i in range(2):
        enroll(client, admin, f"lab-{i}", group="labs", tags=["icu"])

    def names(query: str) -> list[str]:
        response = client.get(f"/api/v1/devices?{query}", headers=admin)
        assert response.status_code == 200, response.text
        return [d["name"] for d in response.json()["items"]]

    # Execute / Assert
    assert names("group=wards") == [f"ward-{i}" for i in range(5)]
    assert names("group=wards&tag=icu") == ["ward-0", "ward-2", "ward-4"]
    assert names("tag=icu&hardware_target=rpi5") == ["lab-0", "lab-1", "ward-0", "ward-2"]
    assert names("group=wards&hardware_target=jetson-orin") == ["ward-3", "ward-4"]
    assert names("tag=icu&tag=er") == []
    assert names("group=nowhere") == []
    page = client.get("/api/v1/devices?group=wards&limit=2&offset=2", headers=admin).json()
    assert [d["name"] for d in page["items"]] == ["ward-2", "ward-3"]
    assert (page["total"], page["limit"], page["offset"]) == (None, 2, 2)
    assert page["next_after"] == "ward-3"
    counted = client.get("/api/v1/devices?group=wards&limit=2&total=true", headers=admin).json()
    assert counted["total"] == 5
    after = client.get(
        "/api/v1/devices?group=wards&limit=2&after=ward-3&total=true", headers=admin
    ).json()
    assert [d["name"] for d in after["items"]] == ["ward-4"]
    assert (after["total"], after["next_after"]) == (5, None)


def test_status_follows_heartbeats_and_last_will(
    client: TestClient, admin: Headers, run_sql: Callable[..., Any]
) -> None:
    # Prepare
    engine = client.app.state.engine  # type: ignore[attr-defined]
    fresh = enroll(client, admin, "fresh")["device"]["id"]
    stale = enroll(client, admin, "stale")["device"]["id"]
    gone = enroll(client, admin, "gone")["device"]["id"]
    enroll(client, admin, "never")
    model = client.post("/api/v1/models", json={"task": "digits-cnn"}, headers=admin).json()
    # Execute
    ack = client.post(
        f"/api/v1/devices/{fresh}/heartbeat", json={"model_version_id": model["id"]}, headers=admin
    )
    assert ack.status_code == 200 and ack.json()["status"] == "online"
    assert ack.json()["model_version_id"] == model["id"]
    client.post(f"/api/v1/devices/{stale}/heartbeat", headers=admin)
    client.post(f"/api/v1/devices/{gone}/heartbeat", headers=admin)
    long_ago = utcnow() - timedelta(hours=1)
    run_sql(engine, "UPDATE devices SET last_seen_at = :t WHERE id = :id", t=long_ago, id=stale)
    run_sql(engine, "UPDATE devices SET reported_status = 'offline' WHERE id = :id", id=gone)

    # Assert: status per device, and the status filter agrees with it.
    def by_status(status: str) -> list[str]:
        items = client.get(f"/api/v1/devices?status={status}", headers=admin).json()["items"]
        assert all(d["status"] == status for d in items)
        return [d["name"] for d in items]

    assert by_status("online") == ["fresh"]
    assert by_status("offline") == ["gone", "stale"]
    assert by_status("never_seen") == ["never"]
    on_model = client.get(f"/api/v1/devices?model_version={model['id']}", headers=admin).json()
    assert [d["name"] for d in on_model["items"]] == ["fresh"]
    assert on_model["items"][0]["model_version_id"] == model["id"]
    assert on_model["items"][0]["last_seen_at"] is not None


def test_heartbeat_without_model_field_keeps_the_model(client: TestClient, admin: Headers) -> None:
    device = enroll(client, admin, "pi-1")["device"]["id"]
    model = client.post("/api/v1/models", json={"task": "t"}, headers=admin).json()["id"]
    client.post(
        f"/api/v1/devices/{device}/heartbeat", json={"model_version_id": model}, headers=admin
    )
    client.post(f"/api/v1/devices/{device}/heartbeat", json={}, headers=admin)
    assert (
        client.get(f"/api/v1/devices/{device}", headers=admin).json()["model_version_id"] == model
    )
    client.post(
        f"/api/v1/devices/{device}/heartbeat", json={"model_version_id": None}, headers=admin
    )
    assert client.get(f"/api/v1/devices/{device}", headers=admin).json()["model_version_id"] is None


def test_heartbeat_errors(client: TestClient, admin: Headers) -> None:
    device = enroll(client, admin, "pi-1")["device"]["id"]
    unknown = client.post("/api/v1/devices/dev-0000000000000000/heartbeat", headers=admin)
    assert unknown.status_code == 404 and "does not exist" in unknown.json()["detail"]
    bad_model = client.post(
        f"/api/v1/devices/{device}/heartbeat", json={"model_version_id": 4242}, headers=admin
    )
    assert bad_model.status_code == 422 and "register it first" in bad_model.json()["detail"]
    client.post(f"/api/v1/devices/{device}/retire", headers=admin)
    retired = client.post(f"/api/v1/devices/{device}/heartbeat", headers=admin)
    assert retired.status_code == 409 and "retired" in retired.json()["detail"]


def test_heartbeats_are_not_audited(client: TestClient, admin: Headers) -> None:
    device = enroll(client, admin, "pi-1")["device"]["id"]
    before = client.get("/api/v1/audit", headers=admin).json()["total"]
    for _ in range(3):
        client.post(f"/api/v1/devices/{device}/heartbeat", headers=admin)
    assert client.get("/api/v1/audit", headers=admin).json()["total"] == before


def test_update_moves_group_replaces_tags_and_renames(client: TestClient, admin: Headers) -> None:
    group(client, admin, "wards")
    group(client, admin, "labs")
    device = enroll(client, admin, "pi-1", group="wards", tags=["a", "b"])["device"]["id"]
    response = client.patch(
        f"/api/v1/devices/{device}",
        json={"group": "labs", "tags": ["c"], "name": "pi-renamed"},
        headers=admin,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["group"], body["tags"], body["name"]) == ("labs", ["c"], "pi-renamed")
    ungrouped = client.patch(f"/api/v1/devices/{device}", json={"group": None}, headers=admin)
    assert ungrouped.json()["group"] is None and ungrouped.json()["tags"] == ["c"]
    untouched = client.patch(f"/api/v1/devices/{device}", json={}, headers=admin).json()
    assert untouched["group"] is None and untouched["tags"] == ["c"]
    change = client.get("/api/v1/audit?action=device.update&limit=1", headers=admin).json()
    before, after = change["items"][0]["before"], change["items"][0]["after"]
    assert before["group"] == "labs" and after["group"] is None


def test_retire_keeps_history_revokes_broker_access_and_refuses_changes(
    client: TestClient, admin: Headers, run_sql: Callable[..., Any]
) -> None:
    device = enroll(client, admin, "pi-1")["device"]["id"]
    retired = client.post(f"/api/v1/devices/{device}/retire", headers=admin)
    assert retired.status_code == 200 and retired.json()["status"] == "retired"
    engine = client.app.state.engine  # type: ignore[attr-defined]
    stored = run_sql(engine, "SELECT mqtt_password_hash FROM devices WHERE id = :id", id=device)
    assert stored == [(None,)]
    assert client.get("/api/v1/devices?total=true", headers=admin).json()["total"] == 0
    listed = client.get("/api/v1/devices?status=retired", headers=admin).json()["items"]
    assert [d["id"] for d in listed] == [device]
    again = client.post(f"/api/v1/devices/{device}/retire", headers=admin)
    assert again.status_code == 409 and "already retired" in again.json()["detail"]
    patch = client.patch(f"/api/v1/devices/{device}", json={"tags": ["x"]}, headers=admin)
    assert patch.status_code == 409
    rotate = client.post(f"/api/v1/devices/{device}/credentials", headers=admin)
    assert rotate.status_code == 409


def test_rotate_credentials_replaces_the_password(
    client: TestClient, admin: Headers, run_sql: Callable[..., Any]
) -> None:
    enrolled = enroll(client, admin, "pi-1")
    device, old = enrolled["device"]["id"], enrolled["mqtt"]["password"]
    response = client.post(f"/api/v1/devices/{device}/credentials", headers=admin)
    assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
    new = response.json()["password"]
    engine = client.app.state.engine  # type: ignore[attr-defined]
    stored = run_sql(engine, "SELECT mqtt_password_hash FROM devices WHERE id = :id", id=device)[0][
        0
    ]
    assert new != old
    assert verify_mosquitto_hash(new, stored) and not verify_mosquitto_hash(old, stored)


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"name": "pi-1", "hardware_target": "rpi5", "group": "nope"}, 422, "does not exist"),
        ({"name": "pi 1", "hardware_target": "rpi5"}, 422, "not a valid name"),
        ({"name": "pi-1", "hardware_target": "RPI5"}, 422, "lowercase"),
        # A target `image build` does not know: no bundle could ever be built for it.
        (
            {"name": "pi-1", "hardware_target": "rpi9"},
            422,
            "unknown hardware target 'rpi9'; choose one of: cpu-x86, jetson-orin, rpi4, rpi5",
        ),
        ({"name": "pi-1"}, 422, "hardware_target"),
        ({"name": "pi-1", "hardware_target": "rpi5", "grup": "x"}, 422, "grup"),
        ({"name": "pi-1", "hardware_target": "rpi5", "tags": ["a"] * 33}, 422, "tags"),
        ({"name": "p\u0000i", "hardware_target": "rpi5"}, 422, "not a valid name"),
    ],
)
def test_bad_enrollment_is_refused_with_a_reason_and_changes_nothing(
    client: TestClient, admin: Headers, body: dict[str, Any], status: int, fragment: str
) -> None:
    response = client.post("/api/v1/devices", json=body, headers=admin)
    assert response.status_code == status
    assert fragment in response.text
    assert client.get("/api/v1/devices?total=true", headers=admin).json()["total"] == 0
    assert client.get("/api/v1/audit?action=device.enroll", headers=admin).json()["total"] == 0


def test_duplicate_device_name_is_a_conflict(client: TestClient, admin: Headers) -> None:
    enroll(client, admin, "pi-1")
    response = client.post(
        "/api/v1/devices", json={"name": "pi-1", "hardware_target": "rpi5"}, headers=admin
    )
    assert response.status_code == 409 and "already exists" in response.json()["detail"]


def test_groups_crud_counts_and_guarded_delete(client: TestClient, admin: Headers) -> None:
    group(client, admin, "wards")
    assert client.post("/api/v1/groups", json={"name": "wards"}, headers=admin).status_code == 409
    device = enroll(client, admin, "pi-1", group="wards")["device"]["id"]
    listed = client.get("/api/v1/groups", headers=admin).json()
    assert [(g["name"], g["device_count"]) for g in listed] == [("wards", 1)]
    blocked = client.delete("/api/v1/groups/wards", headers=admin)
    assert blocked.status_code == 409 and "still has 1 devices" in blocked.json()["detail"]
    renamed = client.patch("/api/v1/groups/wards", json={"name": "icu-wards"}, headers=admin)
    assert renamed.status_code == 200 and renamed.json()["name"] == "icu-wards"
    assert client.get(f"/api/v1/devices/{device}", headers=admin).json()["group"] == "icu-wards"
    client.post(f"/api/v1/devices/{device}/retire", headers=admin)
    assert client.delete("/api/v1/groups/icu-wards", headers=admin).status_code == 204
    assert client.get("/api/v1/groups/icu-wards", headers=admin).status_code == 404
    assert client.get(f"/api/v1/devices/{device}", headers=admin).json()["group"] is None


def test_tags_list_counts_and_delete_removes_from_devices(
    client: TestClient, admin: Headers
) -> None:
    device = enroll(client, admin, "pi-1", tags=["icu", "er"])["device"]["id"]
    enroll(client, admin, "pi-2", tags=["icu"])
    assert client.post("/api/v1/tags", json={"name": "spare"}, headers=admin).status_code == 201
    assert client.post("/api/v1/tags", json={"name": "spare"}, headers=admin).status_code == 409
    tags = {t["name"]: t["device_count"] for t in client.get("/api/v1/tags", headers=admin).json()}
    assert tags == {"er": 1, "icu": 2, "spare": 0}
    assert client.delete("/api/v1/tags/icu", headers=admin).status_code == 204
    assert client.get(f"/api/v1/devices/{device}", headers=admin).json()["tags"] == ["er"]
    assert client.delete("/api/v1/tags/icu", headers=admin).status_code == 404


def test_operator_can_write_devices_viewer_cannot(
    client: TestClient, headers: dict[Role, Headers]
) -> None:
    body = {"name": "pi-1", "hardware_target": "rpi5"}
    assert (
        client.post("/api/v1/devices", json=body, headers=headers[Role.viewer]).status_code == 403
    )
    created = client.post("/api/v1/devices", json=body, headers=headers[Role.operator])
    assert created.status_code == 201
    assert (
        client.get("/api/v1/devices?total=true", headers=headers[Role.viewer]).json()["total"] == 1
    )


def test_keyset_pages_return_every_device_once_while_devices_are_added(
    client: TestClient, admin: Headers
) -> None:
    # Prepare: 20 devices; between page reads, devices are enrolled before and after the cursor.
    original = {f"m-{i:02d}" for i in range(20)}
    for name in sorted(original):
        enroll(client, admin, name)
    seen: list[str] = []
    after: str | None = None
    # Execute
    for page_number in range(20):
        query = "limit=6" + (f"&after={after}" if after else "")
        page = client.get(f"/api/v1/devices?{query}", headers=admin).json()
        seen += [d["name"] for d in page["items"]]
        enroll(client, admin, f"a-{page_number:02d}")  # sorts before every cursor
        enroll(client, admin, f"z-{page_number:02d}")  # sorts after every cursor
        after = page["next_after"]
        if after is None:
            break
    # Assert: each original device exactly once, nothing twice, in name order.
    assert len(seen) == len(set(seen))
    assert original <= set(seen)
    assert seen == sorted(seen)


def test_heartbeat_marks_seen_now_online_and_keeps_other_fields(
    client: TestClient, admin: Headers, run_sql: Callable[..., Any]
) -> None:
    # Prepare: a device the broker reported offline, seen an hour ago.
    engine = client.app.state.engine  # type: ignore[attr-defined]
    device = enroll(client, admin, "pi-1", tags=["icu"])["device"]["id"]
    run_sql(
        engine,
        "UPDATE devices SET reported_status = 'offline', last_seen_at = :t WHERE id = :id",
        t=utcnow() - timedelta(hours=1),
        id=device,
    )
    before = utcnow()
    # Execute
    ack = client.post(f"/api/v1/devices/{device}/heartbeat", headers=admin)
    # Assert: the ack and the stored row agree, the device is online, the rest unchanged.
    assert ack.status_code == 200
    body = ack.json()
    assert set(body) == {"device_id", "status", "last_seen_at", "model_version_id"}
    assert (body["device_id"], body["status"], body["model_version_id"]) == (device, "online", None)
    stored = client.get(f"/api/v1/devices/{device}", headers=admin).json()
    assert stored["last_seen_at"] == body["last_seen_at"] and body["last_seen_at"].endswith("Z")
    assert stored["status"] == "online" and stored["tags"] == ["icu"]
    assert run_sql(engine, "SELECT reported_status FROM devices WHERE id = :id", id=device) == [
        ("online",)
    ]
    assert stored["last_seen_at"] >= before.isoformat().replace("+00:00", "Z")[:19]
    # The list (Core rows, serialized once) says exactly what the model-built view says.
    assert client.get("/api/v1/devices", headers=admin).json()["items"] == [stored]
