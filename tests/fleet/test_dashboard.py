"""The dashboard over HTTP (no browser): login, cookies, CSRF, roles, pages, actions."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fleet.models.auth import Role

Headers = dict[str, str]


def login(client: TestClient, token: str) -> TestClient:
    """A browser-like client (own cookie jar) logged in with ``token``."""
    browser = TestClient(client.app, base_url="http://testserver")
    response = browser.post(
        "/login", data={"token": token, "next": "/devices"}, follow_redirects=False
    )
    assert response.status_code == 303, response.text
    return browser


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]{64})"', html)
    assert match, "page has no CSRF field"
    return match.group(1)


@pytest.fixture
def pages_client(sqlite_app: Any) -> TestClient:
    """The dashboard is rendered from the same CRUD code on both backends; test on one."""
    sqlite_app.reset()
    return sqlite_app.client  # type: ignore[no-any-return]


@pytest.fixture
def role_tokens(pages_client: TestClient, new_token: Any) -> dict[Role, str]:
    engine = pages_client.app.state.engine  # type: ignore[attr-defined]
    return {role: new_token(engine, role, name=f"{role.value}-person") for role in Role}


def test_login_sets_a_strict_http_only_cookie(
    pages_client: TestClient, role_tokens: dict[Role, str]
) -> None:
    browser = TestClient(pages_client.app)
    response = browser.post(
        "/login", data={"token": role_tokens[Role.viewer], "next": "/runs"}, follow_redirects=False
    )
    assert response.status_code == 303 and response.headers["location"] == "/runs"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("fleet_session=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert role_tokens[Role.viewer] not in cookie  # the cookie is a session id, not the token


def test_wrong_token_shows_the_form_again(pages_client: TestClient) -> None:
    browser = TestClient(pages_client.app)
    response = browser.post("/login", data={"token": "ffk_guess"}, follow_redirects=False)
    assert response.status_code == 401
    assert "unknown, revoked or expired" in response.text and "set-cookie" not in response.headers


def test_login_never_redirects_off_site(
    pages_client: TestClient, role_tokens: dict[Role, str]
) -> None:
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil"):
        browser = TestClient(pages_client.app)
        response = browser.post(
            "/login",
            data={"token": role_tokens[Role.viewer], "next": target},
            follow_redirects=False,
        )
        assert response.headers["location"] == "/devices"


def test_pages_show_what_the_api_holds(
    pages_client: TestClient, role_tokens: dict[Role, str]
) -> None:
    admin = {"Authorization": f"Bearer {role_tokens[Role.admin]}"}
    api = pages_client
    api.post("/api/v1/groups", json={"name": "wards"}, headers=admin)
    device = api.post(
        "/api/v1/devices",
        json={"name": "pi-ward3-01", "hardware_target": "rpi5", "group": "wards", "tags": ["icu"]},
        headers=admin,
    ).json()["device"]["id"]
    model = api.post(
        "/api/v1/models", json={"task": "digits-cnn", "metrics": {"accuracy": 0.912}}, headers=admin
    ).json()["id"]
    api.post(f"/api/v1/devices/{device}/heartbeat", json={"model_version_id": model}, headers=admin)
    run = api.post(
        "/api/v1/runs", json={"task": "digits-cnn", "name": "nightly"}, headers=admin
    ).json()["id"]
    for number, accuracy in ((1, 0.4), (2, 0.7)):
        api.put(
            f"/api/v1/runs/{run}/rounds/{number}",
            json={"accuracy": accuracy, "loss": 1 - accuracy},
            headers=admin,
        )

    browser = login(pages_client, role_tokens[Role.viewer])
    devices = browser.get("/devices").text
    assert "pi-ward3-01" in devices and "online" in devices and f"v{model}" in devices
    assert 'data-testid="count-online">1<' in devices
    assert "Enroll a device" not in devices  # viewers get no write forms
    models = browser.get("/models").text
    assert f"v{model}" in models and "0.912" in models and "Promote" not in models
    runs = browser.get("/runs").text
    assert "nightly" in runs and "running" in runs
    detail = browser.get(f"/runs/{run}").text
    accuracy_chart = detail.split('id="accuracy-chart"')[1].split("</figure>")[0]
    assert accuracy_chart.count('class="point"') == 2 and "Accuracy per round" in accuracy_chart
    assert 'id="loss-chart"' in detail
    audit = browser.get("/audit?action=device.").text
    assert "device.enroll" in audit and "token:admin-person#" in audit
    filtered = browser.get("/devices?group=wards&status=online").text
    assert "pi-ward3-01" in filtered
    empty = browser.get("/devices?status=offline").text
    assert "pi-ward3-01" not in empty.split("<tbody>")[1]


def test_pages_carry_security_headers(
    pages_client: TestClient, role_tokens: dict[Role, str]
) -> None:
    browser = login(pages_client, role_tokens[Role.viewer])
    response = browser.get("/devices")
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src" not in policy
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["cache-control"] == "no-store"


def test_operator_enrolls_from_the_dashboard_and_sees_the_password_once(
    pages_client: TestClient, role_tokens: dict[Role, str]
) -> None:
    browser = login(pages_client, role_tokens[Role.operator])
    csrf = csrf_of(browser.get("/devices").text)
    response = browser.post(
        "/devices/enroll",
        data={"csrf": csrf, "name": "pi-9", "hardware_target": "rpi4", "tags": "a, b"},
    )
    assert response.status_code == 201
    password = re.search(r'data-testid="mqtt-password">([^<]+)<', response.text)
    assert password and len(password.group(1)) >= 24
    listing = browser.get("/devices").text
    assert "pi-9" in listing and password.group(1) not in listing
    audit = pages_client.get(
        "/api/v1/audit?action=device.enroll",
        headers={"Authorization": f"Bearer {role_tokens[Role.admin]}"},
    ).json()["items"][0]
    assert audit["source"] == "dashboard" and audit["actor"].startswith("token:operator-person#")


def test_dashboard_enrollment_errors_are_shown_in_the_page(
    pages_client: TestClient, role_tokens: dict[Role, str]
) -> None:
    browser = login(pages_client, role_tokens[Role.operator])
    csrf = csrf_of(browser.get("/devices").text)
    bad = browser.post(
        "/devices/enroll", data={"csrf": csrf, "name": "bad name", "hardware_target": "rpi5"}
    )
    assert bad.status_code == 422 and "not a valid name" in bad.text
    missing_group = browser.post(
        "/devices/enroll",
        data={"csrf": csrf, "name": "ok", "hardware_target": "rpi5", "group": "nope"},
    )
    assert missing_group.status_code == 422 and "does not exist" in missing_group.text


def test_forms_need_the_csrf_token_and_a_same_site_origin(
    pages_client: TestClient, role_tokens: dict[Role, str]
) -> None:
    browser = login(pages_client, role_tokens[Role.admin])
    csrf = csrf_of(browser.get("/devices").text)
    data = {"name": "pi-x", "hardware_target": "rpi5"}
    assert browser.post("/devices/enroll", data=data).status_code == 403
    assert browser.post("/devices/enroll", data={**data, "csrf": "0" * 64}).status_code == 403
    cross = browser.post(
        "/devices/enroll", data={**data, "csrf": csrf}, headers={"Origin": "https://evil.example"}
    )
    assert cross.status_code == 403 and "another site" in cross.text
    ok = browser.post(
        "/devices/enroll", data={**data, "csrf": csrf}, headers={"Origin": "http://testserver"}
    )
    assert ok.status_code == 201


def test_viewer_cannot_change_anything_from_the_dashboard(
    pages_client: TestClient, role_tokens: dict[Role, str]
) -> None:
    admin = {"Authorization": f"Bearer {role_tokens[Role.admin]}"}
    device = pages_client.post(
        "/api/v1/devices", json={"name": "pi-1", "hardware_target": "rpi5"}, headers=admin
    ).json()["device"]["id"]
    model = pages_client.post("/api/v1/models", json={"task": "t"}, headers=admin).json()["id"]
    browser = login(pages_client, role_tokens[Role.viewer])
    csrf = csrf_of(browser.get("/devices").text)
    for url, data in (
        ("/devices/enroll", {"name": "x", "hardware_target": "rpi5"}),
        (f"/devices/{device}/retire", {}),
        (f"/models/{model}/promote", {}),
    ):
        response = browser.post(url, data={**data, "csrf": csrf}, headers={"Accept": "text/html"})
        assert response.status_code == 403, url
        assert "operator" in response.text
    state = pages_client.get(f"/api/v1/devices/{device}", headers=admin).json()
    assert state["status"] != "retired"


def test_operator_promotes_deprecates_and_retires(
    pages_client: TestClient, role_tokens: dict[Role, str]
) -> None:
    admin = {"Authorization": f"Bearer {role_tokens[Role.admin]}"}
    device = pages_client.post(
        "/api/v1/devices", json={"name": "pi-1", "hardware_target": "rpi5"}, headers=admin
    ).json()["device"]["id"]
    model = pages_client.post("/api/v1/models", json={"task": "t"}, headers=admin).json()["id"]
    browser = login(pages_client, role_tokens[Role.operator])
    csrf = csrf_of(browser.get("/models").text)
    assert browser.post(f"/models/{model}/promote", data={"csrf": csrf}).status_code == 200
    assert pages_client.get(f"/api/v1/models/{model}", headers=admin).json()["stage"] == "promoted"
    assert browser.post(f"/models/{model}/deprecate", data={"csrf": csrf}).status_code == 200
    assert (
        pages_client.get(f"/api/v1/models/{model}", headers=admin).json()["stage"] == "deprecated"
    )
    assert browser.post(f"/devices/{device}/retire", data={"csrf": csrf}).status_code == 200
    assert (
        pages_client.get(f"/api/v1/devices/{device}", headers=admin).json()["status"] == "retired"
    )
    unknown = browser.post(
        f"/models/{model}/explode", data={"csrf": csrf}, headers={"Accept": "text/html"}
    )
    assert unknown.status_code == 404


def test_logout_and_token_revocation_end_the_session(
    pages_client: TestClient, role_tokens: dict[Role, str], new_token: Any
) -> None:
    engine = pages_client.app.state.engine  # type: ignore[attr-defined]
    browser = login(pages_client, role_tokens[Role.viewer])
    stolen_cookie = browser.cookies.get("fleet_session")
    csrf = csrf_of(browser.get("/devices").text)
    assert browser.post("/logout", data={"csrf": csrf}, follow_redirects=False).status_code == 303
    replay = TestClient(pages_client.app, cookies={"fleet_session": stolen_cookie or ""})
    assert replay.get("/devices", follow_redirects=False).status_code == 303

    doomed = new_token(engine, Role.viewer, name="doomed")
    second = login(pages_client, doomed)
    assert second.get("/devices").status_code == 200
    token_id = next(
        t["id"]
        for t in pages_client.get(
            "/api/v1/tokens", headers={"Authorization": f"Bearer {role_tokens[Role.admin]}"}
        ).json()
        if t["name"] == "doomed"
    )
    pages_client.delete(
        f"/api/v1/tokens/{token_id}", headers={"Authorization": f"Bearer {role_tokens[Role.admin]}"}
    )
    assert second.get("/devices", follow_redirects=False).status_code == 303


def test_unknown_pages_are_html_404s_for_browsers(
    pages_client: TestClient, role_tokens: dict[Role, str]
) -> None:
    browser = login(pages_client, role_tokens[Role.viewer])
    for url in ("/runs/4242", "/runs/not-a-number", "/nowhere"):
        response = browser.get(url, headers={"Accept": "text/html"})
        assert response.status_code == 404, url
        assert response.headers["content-type"].startswith("text/html")
    api = pages_client.get("/api/v1/nowhere", headers={"Accept": "text/html"})
    assert api.headers["content-type"].startswith("application/json")


def test_bad_filters_are_reported_not_fatal(
    pages_client: TestClient, role_tokens: dict[Role, str]
) -> None:
    browser = login(pages_client, role_tokens[Role.viewer])
    response = browser.get("/devices?group=%00bad&status=lost&page=zz")
    assert response.status_code == 200
    assert (
        "ignored the group filter" in response.text and "ignored the status filter" in response.text
    )


def test_pagination_over_many_devices(
    pages_client: TestClient, role_tokens: dict[Role, str]
) -> None:
    admin = {"Authorization": f"Bearer {role_tokens[Role.admin]}"}
    for i in range(55):
        pages_client.post(
            "/api/v1/devices",
            json={"name": f"pi-{i:03d}", "hardware_target": "rpi5"},
            headers=admin,
        )
    browser = login(pages_client, role_tokens[Role.viewer])
    first = browser.get("/devices").text
    assert "page 1 of 2" in first and "pi-049" in first and "pi-050" not in first
    second = browser.get("/devices?page=2").text
    assert "pi-050" in second and "pi-054" in second and "showing 51–55" in second


def test_operator_starts_a_retraining_run_from_a_drift_event_in_one_click(
    pages_client: TestClient, role_tokens: dict[Role, str], drift_event: Any
) -> None:
    admin = {"Authorization": f"Bearer {role_tokens[Role.admin]}"}
    model = pages_client.post("/api/v1/models", json={"task": "digits-cnn"}, headers=admin).json()[
        "id"
    ]
    event = drift_event(pages_client.app.state.engine, model)  # type: ignore[attr-defined]

    # A viewer sees the event but no button, and cannot post the form.
    viewer = login(pages_client, role_tokens[Role.viewer])
    page = viewer.get("/rollouts").text
    assert f'data-drift="{event}"' in page and f"/drift-events/{event}/retrain" not in page
    assert "3 of 5" in page and "dev-0, dev-1, dev-2" in page  # who agreed, by name
    refused = viewer.post(
        f"/drift-events/{event}/retrain",
        data={"csrf": csrf_of(viewer.get("/devices").text)},
        headers={"Accept": "text/html"},
    )
    assert refused.status_code == 403

    # An operator clicks Retrain: a created run for the model's task, linked to the event.
    browser = login(pages_client, role_tokens[Role.operator])
    page = browser.get("/rollouts").text
    assert f'action="/drift-events/{event}/retrain"' in page
    assert (
        browser.post(f"/drift-events/{event}/retrain", data={"csrf": "0" * 64}).status_code == 403
    )
    clicked = browser.post(
        f"/drift-events/{event}/retrain", data={"csrf": csrf_of(page)}, follow_redirects=False
    )
    assert clicked.status_code == 303
    run_id = int(clicked.headers["location"].rsplit("/", 1)[-1])
    run = pages_client.get(f"/api/v1/runs/{run_id}", headers=admin).json()
    assert run["status"] == "created" and run["task"] == "digits-cnn"
    assert run["config"]["parent_model_version_id"] == model
    assert browser.get(f"/runs/{run_id}").status_code == 200
    events = pages_client.get("/api/v1/drift-events", headers=admin).json()["items"]
    assert next(e for e in events if e["id"] == event)["run_id"] == run_id
    audit = pages_client.get(
        "/api/v1/audit", params={"action": "drift.retrain"}, headers=admin
    ).json()["items"]
    assert audit and audit[0]["source"] == "dashboard"

    # The event now links its run; a second click is refused.
    assert f'href="/runs/{run_id}"' in browser.get("/rollouts").text
    again = browser.post(
        f"/drift-events/{event}/retrain",
        data={"csrf": csrf_of(page)},
        headers={"Accept": "text/html"},
    )
    assert again.status_code == 409 and "already started run" in again.text
    missing = browser.post(
        "/drift-events/99999/retrain", data={"csrf": csrf_of(page)}, headers={"Accept": "text/html"}
    )
    assert missing.status_code == 404


def test_models_page_shows_the_accuracy_and_metrics_the_api_serves(
    pages_client: TestClient, role_tokens: dict[Role, str]
) -> None:
    # Prepare: versions as `fedfleet model register` names their metrics, and as a client
    # sending a plain "accuracy".
    admin = {"Authorization": f"Bearer {role_tokens[Role.admin]}"}
    metrics = {"final_accuracy": 0.9556, "final_loss": 0.1234, "final_epsilon": 2.5, "rounds": 3}
    registered = pages_client.post(
        "/api/v1/models", json={"task": "digits-cnn", "metrics": metrics}, headers=admin
    ).json()["id"]
    plain = pages_client.post(
        "/api/v1/models", json={"task": "digits-cnn", "metrics": {"accuracy": 0.81}}, headers=admin
    ).json()["id"]
    served = pages_client.get(f"/api/v1/models/{registered}", headers=admin).json()["metrics"]
    assert served["final_accuracy"] == 0.9556

    # Execute
    page = login(pages_client, role_tokens[Role.viewer]).get("/models").text

    # Assert: each row's accuracy cell holds its number, the other metrics are listed.
    row = page.split(f'id="model-{registered}"')[1].split("</tr>")[0]
    assert '<td data-testid="accuracy">0.9556</td>' in row
    assert "final_loss 0.1234" in row and "final_epsilon 2.5" in row and "rounds 3" in row
    assert "final_accuracy" not in row  # shown once, as the accuracy
    other = page.split(f'id="model-{plain}"')[1].split("</tr>")[0]
    assert '<td data-testid="accuracy">0.81</td>' in other
