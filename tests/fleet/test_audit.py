"""The audit log: every change recorded with who/what/when/before/after; append-only."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from fleet import audit
from fleet.db import session_scope
from fleet.models.auth import Role
from fleet.models.common import utcnow
from fleet.models.devices import Group

Headers = dict[str, str]


def test_every_change_is_recorded_with_its_actor(
    client: TestClient, headers: dict[Role, Headers], admin: Headers
) -> None:
    operator = headers[Role.operator]
    # Execute: one change of each kind, by the operator.
    client.post("/api/v1/groups", json={"name": "wards"}, headers=operator)
    device = client.post(
        "/api/v1/devices", json={"name": "pi-1", "hardware_target": "rpi5"}, headers=operator
    ).json()["device"]["id"]
    client.patch(f"/api/v1/devices/{device}", json={"group": "wards"}, headers=operator)
    client.post(f"/api/v1/devices/{device}/credentials", headers=operator)
    model = client.post("/api/v1/models", json={"task": "t"}, headers=operator).json()["id"]
    client.post(f"/api/v1/models/{model}/promote", headers=operator)
    run = client.post("/api/v1/runs", json={"task": "t"}, headers=operator).json()["id"]
    client.put(f"/api/v1/runs/{run}/rounds/1", json={"accuracy": 0.5}, headers=operator)
    client.post(f"/api/v1/devices/{device}/retire", headers=operator)
    client.post("/api/v1/tags", json={"name": "spare"}, headers=operator)
    client.delete("/api/v1/tags/spare", headers=operator)
    # Assert
    events = client.get("/api/v1/audit?limit=100", headers=admin).json()["items"]
    mine = [e for e in events if e["actor"].startswith("token:operator#")]
    assert [e["action"] for e in reversed(mine)] == [
        "group.create",
        "device.enroll",
        "device.update",
        "device.credentials.rotate",
        "model.register",
        "model.promote",
        "run.create",
        "run.round",
        "device.retire",
        "tag.create",
        "tag.delete",
    ]
    assert all(e["actor_role"] == "operator" and e["source"] == "api" for e in mine)
    update = next(e for e in mine if e["action"] == "device.update")
    assert update["entity_id"] == device
    assert (update["before"]["group"], update["after"]["group"]) == (None, "wards")
    retire = next(e for e in mine if e["action"] == "device.retire")
    assert retire["before"]["status"] == "never_seen" and retire["after"]["status"] == "retired"


def test_filters_by_actor_action_prefix_entity_and_time(
    client: TestClient, headers: dict[Role, Headers], admin: Headers
) -> None:
    client.post("/api/v1/groups", json={"name": "a"}, headers=admin)
    client.post("/api/v1/groups", json={"name": "b"}, headers=headers[Role.operator])
    client.post("/api/v1/tags", json={"name": "t"}, headers=admin)

    def actions(query: str) -> list[str]:
        response = client.get(f"/api/v1/audit?{query}", headers=admin)
        assert response.status_code == 200, response.text
        return [e["action"] for e in response.json()["items"]]

    admin_actor = client.get("/api/v1/me", headers=admin).json()
    assert actions(f"actor=token:admin%23{admin_actor['token_id']}&action=group.") == [
        "group.create"
    ]
    assert actions("action=group.") == ["group.create", "group.create"]
    assert actions("entity_type=tag") == ["tag.create"]
    assert actions("action=group.create&entity_id=2") == ["group.create"]
    future = (utcnow() + timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
    assert actions(f"since={future}") == []
    # The fixture's three tokens were created (and audited) first.
    assert (
        actions(f"until={future}")
        == ["tag.create", "group.create", "group.create"] + ["token.create"] * 3
    )


def test_there_is_no_way_to_change_or_delete_audit_events(
    client: TestClient, admin: Headers
) -> None:
    client.post("/api/v1/groups", json={"name": "a"}, headers=admin)
    total = client.get("/api/v1/audit", headers=admin).json()["total"]
    event_id = client.get("/api/v1/audit", headers=admin).json()["items"][0]["id"]
    for method in ("PUT", "PATCH", "DELETE", "POST"):
        response = client.request(method, "/api/v1/audit", headers=admin)
        assert response.status_code == 405
        response = client.request(method, f"/api/v1/audit/{event_id}", headers=admin)
        assert response.status_code in (404, 405)
    assert client.get("/api/v1/audit", headers=admin).json()["total"] == total


def test_an_unaudited_change_cannot_be_committed(database: Any) -> None:
    engine = database.engine()
    try:
        with (
            pytest.raises(audit.UnauditedChange, match="without an audit event"),
            session_scope(engine, write=True) as session,
        ):
            session.add(Group(name="sneaky"))
        with session_scope(engine, write=False) as session:
            assert session.get(Group, 1) is None
        # The same change with an audit record goes through.
        with session_scope(engine, write=True) as session:
            session.add(Group(name="fine"))
            audit.record(
                session,
                actor=audit.Actor("cli:test", "admin", "cli"),
                action="group.create",
                entity_type="group",
                entity_id="fine",
            )
    finally:
        engine.dispose()


def test_a_bulk_statement_without_audit_is_refused(database: Any) -> None:
    from sqlalchemy import update

    engine = database.engine()
    try:
        with session_scope(engine, write=True) as session:
            session.add(Group(name="g"))
            audit.record(
                session,
                actor=audit.Actor("cli:test", "admin", "cli"),
                action="group.create",
                entity_type="group",
                entity_id="g",
            )
        with pytest.raises(audit.UnauditedChange), session_scope(engine, write=True) as session:
            assert isinstance(session, Session)
            session.execute(update(Group).values(description="changed quietly"))
        with session_scope(engine, write=False) as session:
            assert session.get(Group, 1).description == ""  # type: ignore[union-attr]
    finally:
        engine.dispose()
