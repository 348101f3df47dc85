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
