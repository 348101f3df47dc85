"""Federated runs: creation, idempotent round reports, status transitions, result."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

Headers = dict[str, str]


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def create_run(client: TestClient, headers: Headers, **body: Any) -> dict[str, Any]:
    payload = {"task": "digits-cnn", "strategy": "fedavg", "config": {"rounds": 3}, **body}
    response = client.post("/api/v1/runs", json=payload, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


def report(client: TestClient, headers: Headers, run_id: int, number: int, **body: Any) -> Any:
    return client.put(f"/api/v1/runs/{run_id}/rounds/{number}", json=body, headers=headers)


def test_a_run_from_start_to_final_model(client: TestClient, admin: Headers) -> None:
    # Prepare
    run = create_run(client, admin, name="nightly", config={"rounds": 3, "dp": {"epsilon": 2}})
    assert run["status"] == "created" and run["started_at"] is None
    # Execute: the coordinator reports three rounds, registers the model, finishes.
    for number, accuracy in ((1, 0.52), (2, 0.71), (3, 0.83)):
        response = report(
            client,
            admin,
            run["id"],
            number,
            accuracy=accuracy,
            loss=1.0 - accuracy,
            duration_s=2.5,
            epsilon=0.4 * number,
            metrics={"clients": 10},
            participants=[
                {"kind": "site", "id": "st-marys"},
                {"kind": "device", "id": f"pi-{number}"},
            ],
        )
        assert response.status_code == 200, response.text
    model = client.post(
        "/api/v1/models",
        json={"task": "digits-cnn", "source_run_id": run["id"], "source_round": 3},
        headers=admin,
    ).json()
    done = client.patch(
        f"/api/v1/runs/{run['id']}",
        json={"status": "completed", "final_model_version_id": model["id"]},
        headers=admin,
    )
    # Assert
    assert done.status_code == 200, done.text
    detail = client.get(f"/api/v1/runs/{run['id']}", headers=admin).json()
    assert detail["status"] == "completed"
    assert detail["started_at"] is not None and detail["finished_at"] is not None
    assert detail["final_model_version_id"] == model["id"]
    assert detail["rounds_completed"] == 3 and detail["last_accuracy"] == 0.83
    assert [r["accuracy"] for r in detail["rounds"]] == [0.52, 0.71, 0.83]
    assert detail["rounds"][2]["epsilon"] == pytest.approx(1.2)
    assert detail["config"] == {"rounds": 3, "dp": {"epsilon": 2}}
    assert {(p["kind"], p["id"]) for p in detail["participants"]} == {
        ("site", "st-marys"),
        ("device", "pi-1"),
        ("device", "pi-2"),
        ("device", "pi-3"),
    }


def test_reporting_a_round_again_replaces_it(client: TestClient, admin: Headers) -> None:
    run = create_run(client, admin)
    report(client, admin, run["id"], 1, accuracy=0.5)
    again = report(client, admin, run["id"], 1, accuracy=0.55)
    assert again.status_code == 200
    detail = client.get(f"/api/v1/runs/{run['id']}", headers=admin).json()
    assert [(r["round"], r["accuracy"]) for r in detail["rounds"]] == [(1, 0.55)]
    assert detail["rounds_completed"] == 1


def test_terminal_runs_refuse_rounds_and_transitions(client: TestClient, admin: Headers) -> None:
    run = create_run(client, admin)
    cancelled = client.patch(
        f"/api/v1/runs/{run['id']}", json={"status": "cancelled"}, headers=admin
    )
    assert cancelled.status_code == 200 and cancelled.json()["finished_at"] is not None
    late = report(client, admin, run["id"], 1, accuracy=0.5)
    assert late.status_code == 409 and "no more rounds" in late.json()["detail"]
    revive = client.patch(f"/api/v1/runs/{run['id']}", json={"status": "running"}, headers=admin)
    assert revive.status_code == 409 and "cannot become running" in revive.json()["detail"]
    same = client.patch(f"/api/v1/runs/{run['id']}", json={"status": "cancelled"}, headers=admin)
    assert same.status_code == 200


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"accuracy": 1.5}, "less than or equal to 1"),
        ({"accuracy": -0.1}, "greater than or equal to 0"),
        ({"duration_s": -1}, "greater than or equal to 0"),
        ({"participants": [{"kind": "robot", "id": "x"}]}, "kind"),
        ({"participants": [{"kind": "site", "id": "has space"}]}, "not a valid name"),
        ({"metrics": {"ok": "text"}}, "metrics.ok"),
    ],
)
def test_bad_round_reports_are_refused(
    client: TestClient, admin: Headers, body: dict[str, Any], fragment: str
) -> None:
    run = create_run(client, admin)
    response = report(client, admin, run["id"], 1, **body)
    assert response.status_code == 422 and fragment in response.text
    assert client.get(f"/api/v1/runs/{run['id']}", headers=admin).json()["rounds"] == []


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"deep": _nested(40)}, "nested deeper"),
    ],
)
def test_run_config_must_be_storable_json(
    client: TestClient, admin: Headers, config: dict[str, Any], fragment: str
) -> None:
    response = client.post("/api/v1/runs", json={"task": "t", "config": config}, headers=admin)
    assert response.status_code == 422 and fragment in response.text


def test_lone_surrogates_in_config_are_refused(client: TestClient, admin: Headers) -> None:
    response = client.post(
        "/api/v1/runs",
        content=b'{"task": "t", "config": {"a": "lone \\ud800 half"}}',
        headers={**admin, "Content-Type": "application/json"},
    )
    assert response.status_code == 422 and "surrogate" in response.json()["detail"]


def test_any_other_json_config_round_trips(client: TestClient, admin: Headers) -> None:
    # Control characters, NUL, big integers and astral characters are all storable.
    config = {
        "nul\u0000key": "bell\u0007 tab\t nul\u0000",
        "big": 2**70,
        "emoji": "\U0001f600",
        "nested": [{"x": [1.5e-300, -0.0, True, None]}],
    }
    created = client.post("/api/v1/runs", json={"task": "t", "config": config}, headers=admin)
    assert created.status_code == 201, created.text
    fetched = client.get(f"/api/v1/runs/{created.json()['id']}", headers=admin).json()
    assert fetched["config"] == config


def test_unknown_final_model_and_run_are_refused(client: TestClient, admin: Headers) -> None:
    run = create_run(client, admin)
    response = client.patch(
        f"/api/v1/runs/{run['id']}", json={"final_model_version_id": 77}, headers=admin
    )
    assert response.status_code == 422 and "register it first" in response.json()["detail"]
    assert client.get("/api/v1/runs/999", headers=admin).status_code == 404
    assert report(client, admin, 999, 1, accuracy=0.1).status_code == 404


def test_list_runs_filters_by_status_and_task(client: TestClient, admin: Headers) -> None:
    a = create_run(client, admin)
    create_run(client, admin, task="breast-cancer-mlp")
    report(client, admin, a["id"], 1, accuracy=0.4)
    running = client.get("/api/v1/runs?status=running", headers=admin).json()
    assert [r["id"] for r in running["items"]] == [a["id"]]
    assert running["items"][0]["last_accuracy"] == 0.4
    by_task = client.get("/api/v1/runs?task=breast-cancer-mlp", headers=admin).json()
    assert by_task["total"] == 1


def test_a_failed_runs_reason_shows_on_the_timeline(client: TestClient, admin: Headers) -> None:
    # Prepare: a retraining run that started, and the group whose timeline shows it.
    assert client.post("/api/v1/groups", json={"name": "wards"}, headers=admin).status_code == 201
    run = create_run(client, admin)
    model = client.post(
        "/api/v1/models", json={"task": "digits-cnn", "source_run_id": run["id"]}, headers=admin
    ).json()
    client.patch(f"/api/v1/runs/{run['id']}", json={"status": "running"}, headers=admin)
    reason = "held by the budget pre-flight: 1 of 3 sites have privacy budget; a round needs 2"

    # Execute: the coordinator says it failed, and why.
    failed = client.patch(
        f"/api/v1/runs/{run['id']}", json={"status": "failed", "reason": reason}, headers=admin
    )
    bad = client.patch(f"/api/v1/runs/{run['id']}", json={"reason": "x\x00"}, headers=admin)
    items = client.get(
        "/api/v1/timeline", params={"group": "wards", "model_version": model["id"]}, headers=admin
    ).json()

    # Assert: the run is failed (the reason is not a field of the run) and the timeline
    # item of that change carries the reason; a control character is refused.
    assert failed.status_code == 200 and failed.json()["status"] == "failed"
    assert "reason" not in failed.json()
    (item,) = [i for i in items if i["subject"] == f"run {run['id']}" and "failed" in i["summary"]]
    assert item["reason"] == reason
    assert bad.status_code == 422


def test_a_held_retraining_run_is_marked_failed_with_its_reason_through_the_client(
    client: TestClient, admin: Headers, tmp_path: Any
) -> None:
    # `run submit --retrain` after the ServerApp recorded the pre-flight's failure: the
    # real FleetClient against the app (its transport), the reason made one line.
    from coordinator.retrain import RetrainPlan, mark_failed
    from fleet.client import FleetClient, FleetConnection

    run = create_run(client, admin)
    client.patch(f"/api/v1/runs/{run['id']}", json={"status": "running"}, headers=admin)
    plan = RetrainPlan(
        fleet_run_id=run["id"], task="digits-cnn", parent_version=1, checkpoint=tmp_path
    )
    token = admin["Authorization"].removeprefix("Bearer ")
    connection = FleetConnection(url=str(client.base_url), token=token)

    # Execute
    with FleetClient(connection, transport=client._transport) as fleet:
        mark_failed(fleet, plan, "BudgetHeld: held by the budget pre-flight:\n 1 of 3 sites")

    # Assert
    assert client.get(f"/api/v1/runs/{run['id']}", headers=admin).json()["status"] == "failed"
    events = client.get("/api/v1/audit", params={"entity_type": "run"}, headers=admin)
    assert events.status_code == 200, events.text
    reasons = [e["after"].get("reason") for e in events.json()["items"] if e["after"]]
    assert "BudgetHeld: held by the budget pre-flight: 1 of 3 sites" in reasons
