"""The dashboard's policies page shows each group's current policy and its history."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fleet.models.auth import Role

POLICY = (
    'group = "wards"\ntargets = ["rpi5"]\n[gates]\nmin_accuracy = {acc}\nmax_epsilon = 4.0\n'
    '[canary]\nwaves = [5, 50, 100]\n[signing]\napproval = "operator"\n'
)


@pytest.fixture
def pages_client(sqlite_app: Any) -> TestClient:
    sqlite_app.reset()
    return sqlite_app.client  # type: ignore[no-any-return]


def test_policies_page_shows_the_current_policy_and_every_version(
    pages_client: TestClient, new_token: Any
) -> None:
    # Prepare
    engine = pages_client.app.state.engine  # type: ignore[attr-defined]
    admin = {"Authorization": f"Bearer {new_token(engine, Role.admin, name='root')}"}
    viewer_token = new_token(engine, Role.viewer, name="watcher")
    api = pages_client
    api.post("/api/v1/groups", json={"name": "wards"}, headers=admin)
    body = {"name": "pi-1", "hardware_target": "rpi5", "group": "wards"}
    assert api.post("/api/v1/devices", json=body, headers=admin).status_code == 201
    for acc in ("0.8", "0.85"):
        applied = api.post(
            "/api/v1/policies", json={"source": POLICY.format(acc=acc)}, headers=admin
        )
        assert applied.status_code == 201, applied.text
    browser = TestClient(api.app, base_url="http://testserver")
    login = browser.post("/login", data={"token": viewer_token, "next": "/policies"})
    assert login.status_code == 200
    # Execute
    page = browser.get("/policies")
    # Assert
    assert page.status_code == 200
    html = page.text
    section = re.search(r'<section class="policy" id="policy-wards"[^>]*>', html)
    assert section and 'data-version="2"' in section.group(0)
    assert "accuracy ≥ 0.85" in html and "ε ≤ 4" in html and "waves 5/50/100%" in html
    assert "operator approval" in html and "min_accuracy = 0.85" in html
    versions = re.findall(r'<tr data-version="(\d+)">', html)
    assert versions == ["2", "1"]
    assert 'href="/policies" aria-current="page"' in html


def test_policies_page_shows_the_groups_timeline_with_each_decisions_reason(
    pages_client: TestClient, new_token: Any
) -> None:
    from fleet.artifacts import ArtifactStore
    from fleet.promotion import PromotionController

    # Prepare: a policy, then a version registered from a run that fails its gate.
    engine = pages_client.app.state.engine  # type: ignore[attr-defined]
    admin = {"Authorization": f"Bearer {new_token(engine, Role.admin, name='root')}"}
    viewer_token = new_token(engine, Role.viewer, name="watcher")
    api = pages_client
    api.post("/api/v1/groups", json={"name": "wards"}, headers=admin)
    body = {"name": "pi-1", "hardware_target": "rpi5", "group": "wards"}
    assert api.post("/api/v1/devices", json=body, headers=admin).status_code == 201
    source = POLICY.format(acc="0.85").replace('group = "wards"', 'group = "wards"\ntask = "t"')
    assert api.post("/api/v1/policies", json={"source": source}, headers=admin).status_code == 201
    run = api.post("/api/v1/runs", json={"task": "t"}, headers=admin).json()
    model = {"task": "t", "source_run_id": run["id"], "metrics": {"final_accuracy": 0.5}}
    assert api.post("/api/v1/models", json=model, headers=admin).status_code == 201
    store = ArtifactStore(pages_client.app.state.settings.artifact_dir)  # type: ignore[attr-defined]
    PromotionController(engine=engine, store=store).step()
    browser = TestClient(api.app, base_url="http://testserver")
    assert browser.post("/login", data={"token": viewer_token}).status_code == 200
    # Execute
    html = browser.get("/policies").text
    # Assert: the chain, oldest first, with the rejection's reason and who decided.
    rows = re.findall(r'<tr data-action="([a-z_.]+)">', html)
    assert rows.index("model.register") < rows.index("promotion.reject")
    rejected = re.search(r'<tr data-action="promotion.reject">(.*?)</tr>', html, re.S)
    assert rejected is not None
    assert "system:promotions" in rejected.group(1)
    assert "gates failed: accuracy 0.5 is below the gate 0.85" in rejected.group(1)
    assert "epsilon (not reported) is above the gate 4" in rejected.group(1)
