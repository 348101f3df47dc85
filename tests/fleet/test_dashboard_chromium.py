"""The dashboard in a real headless Chromium, against a real ``fleet serve`` process.

Seeds a fleet through the API, logs in through the form like a person would, and checks
what the pages show: devices with status and model version, the model registry, a run's
accuracy-per-round chart, the audit trail of a device enrolled from the browser.

Needs Debian's ``chromium`` (``apt-get install -y chromium``) and the ``playwright``
Python package; Playwright's own browser download is not used.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from fleet.audit import Actor
from fleet.crud.tokens import create_token
from fleet.db import make_engine, session_scope
from fleet.models.auth import Role
from fleet.models.common import utcnow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.e2e,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="Debian's chromium is not installed (/usr/bin/chromium): apt-get install -y chromium",
    ),
]


@pytest.fixture(scope="module")
def fleet_server(module_fleet_server: Any) -> Any:
    """One server for this module (starting one costs seconds)."""
    return module_fleet_server


@pytest.fixture(scope="module")
def seeded(fleet_server: Any) -> dict[str, Any]:
    """A small fleet: 6 devices in 2 groups, 2 model versions, a finished 5-round run."""

    def new_token(engine: Any, role: Role, *, name: str) -> str:
        with session_scope(engine, write=True) as session:
            secret, _ = create_token(
                session, name=name, role=role, actor=Actor("cli:tests", "admin", "cli")
            )
        return secret

    def run_sql(engine: Any, statement: str, **params: Any) -> None:
        with engine.begin() as connection:
            connection.execute(text(statement), params)

    engine = make_engine(fleet_server.database_url)
    tokens = {role: new_token(engine, role, name=f"{role.value}-ana") for role in Role}
    api = httpx.Client(
        base_url=fleet_server.base_url,
        headers={"Authorization": f"Bearer {tokens[Role.admin]}"},
        timeout=10,
    )
    for group in ("wards", "labs"):
        api.post("/api/v1/groups", json={"name": group}).raise_for_status()
    run = api.post(
        "/api/v1/runs", json={"task": "digits-cnn", "strategy": "fedavg", "name": "nightly"}
    ).json()
    accuracies = [0.42, 0.61, 0.74, 0.81, 0.86]
    for number, accuracy in enumerate(accuracies, start=1):
        api.put(
            f"/api/v1/runs/{run['id']}/rounds/{number}",
            json={
                "accuracy": accuracy,
                "loss": 1.2 - accuracy,
                "participants": [{"kind": "site", "id": "st-marys"}],
            },
        ).raise_for_status()
    base = api.post("/api/v1/models", json={"task": "digits-cnn", "name": "base"}).json()
    final = api.post(
        "/api/v1/models",
        json={
            "task": "digits-cnn",
            "name": "nightly-final",
            "source_run_id": run["id"],
            "source_round": 5,
            "parent_id": base["id"],
            "metrics": {"accuracy": 0.86},
        },
    ).json()
    api.post(f"/api/v1/models/{final['id']}/promote").raise_for_status()
    api.patch(
        f"/api/v1/runs/{run['id']}",
        json={"status": "completed", "final_model_version_id": final["id"]},
    ).raise_for_status()
    devices = {}
    for name, group, target in (
        ("pi-ward3-01", "wards", "rpi5"),
        ("pi-ward3-02", "wards", "rpi5"),
        ("orin-icu-01", "wards", "jetson-orin"),
        ("pi-lab-01", "labs", "rpi4"),
        ("pi-lab-02", "labs", "rpi4"),
        ("x86-spare", "labs", "cpu-x86"),
    ):
        body = {"name": name, "hardware_target": target, "group": group, "tags": ["floor-3"]}
        devices[name] = api.post("/api/v1/devices", json=body).json()["device"]["id"]
    for name in ("pi-ward3-01", "orin-icu-01", "pi-lab-01", "pi-ward3-02"):
        api.post(
            f"/api/v1/devices/{devices[name]}/heartbeat", json={"model_version_id": final["id"]}
        ).raise_for_status()
    stale = utcnow() - timedelta(minutes=20)
    run_sql(
        engine,
        "UPDATE devices SET last_seen_at = :t WHERE id = :id",
        t=stale,
        id=devices["pi-ward3-02"],
    )
    api.close()
    engine.dispose()
    return {
        "tokens": tokens,
        "run": run,
        "final": final,
        "devices": devices,
        "accuracies": accuracies,
    }


@pytest.fixture
def browser_page(tmp_path: Path) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        page = context.new_page()
        problems: list[str] = []
        page.on(
            "console",
            lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None,
        )
        page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
        page.problems = problems  # type: ignore[attr-defined]
        try:
            yield page
        finally:
            context.close()
            browser.close()


def _screenshot(page: Any, name: str, tmp_path: Path) -> None:
    folder = Path(os.environ.get("FLEET_SCREENSHOT_DIR", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def test_a_person_logs_in_and_reads_the_fleet(
    fleet_server: Any, seeded: dict[str, Any], browser_page: Any, tmp_path: Path
) -> None:
    page = browser_page
    base = fleet_server.base_url
    # Logged out: any page leads to the login form.
    page.goto(f"{base}/runs")
    assert page.url.startswith(f"{base}/login")
    page.fill("#token", "ffk_wrong")
    page.click("button[type=submit]")
    assert "unknown, revoked or expired" in page.inner_text("main")
    page.problems.clear()  # type: ignore[attr-defined]  # the 401 just provoked
    page.fill("#token", seeded["tokens"][Role.viewer])
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/runs")

    # The session cookie cannot be read by scripts and is not sent cross-site.
    cookie = next(c for c in page.context.cookies() if c["name"] == "fleet_session")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""

    # Devices: status, last seen, model version, per-status counts.
    page.goto(f"{base}/devices")
    rows = page.locator("#devices tbody tr")
    assert rows.count() == 6
    final = seeded["final"]["id"]

    def row(name: str) -> Any:
        return page.locator("#devices tbody tr", has_text=name)

    assert row("pi-ward3-01").locator(".badge").inner_text() == "online"
    assert row("pi-ward3-01").locator("td").nth(3).inner_text() == f"v{final}"
    assert row("pi-ward3-02").locator(".badge").inner_text() == "offline"
    assert "20 min ago" in row("pi-ward3-02").inner_text()
    assert row("x86-spare").locator(".badge").inner_text() == "never seen"
    assert page.inner_text("[data-testid=count-online]") == "3"
    assert page.inner_text("[data-testid=count-offline]") == "1"
    assert page.inner_text("[data-testid=count-never_seen]") == "2"
    assert page.locator("text=Enroll a device").count() == 0  # a viewer cannot enroll
    _screenshot(page, "devices", tmp_path)

    # Filter by group through the form.
    page.select_option("select[name=group]", "labs")
    page.click("form.filters button")
    assert page.locator("#devices tbody tr").count() == 3
    assert "3 devices matching" in page.inner_text("[data-testid=device-total]")

    # Models: the promoted version with its lineage.
    page.goto(f"{base}/models")
    model_row = page.locator(f"#model-{final}")
    assert model_row.locator(".badge").inner_text() == "promoted"
    assert f"run {seeded['run']['id']}" in model_row.inner_text()
    assert "0.86" in model_row.inner_text()

    # Runs: the list, then the accuracy-per-round chart.
    page.goto(f"{base}/runs")
    page.click(f"#runs a[href='/runs/{seeded['run']['id']}']")
    page.wait_for_url(re.compile(rf".*/runs/{seeded['run']['id']}$"))
    chart = page.locator("#accuracy-chart svg")
    assert chart.is_visible()
    points = chart.locator("circle.point")
    assert points.count() == len(seeded["accuracies"])
    ys = [float(points.nth(i).get_attribute("cy") or 0) for i in range(points.count())]
    assert ys == sorted(ys, reverse=True)  # accuracy rises: each point drawn higher up
    assert page.inner_text("[data-testid=rounds-completed]") == "5"
    assert "st-marys" in page.inner_text("main")
    _screenshot(page, "run", tmp_path)
    assert page.problems == []  # type: ignore[attr-defined]


def test_an_operator_enrolls_a_device_from_the_browser(
    fleet_server: Any, seeded: dict[str, Any], browser_page: Any, tmp_path: Path
) -> None:
    page = browser_page
    base = fleet_server.base_url
    page.goto(f"{base}/login")
    page.fill("#token", seeded["tokens"][Role.operator])
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/devices")
    page.fill("form.enroll input[name=name]", "pi-new-01")
    page.fill("form.enroll input[name=hardware_target]", "rpi5")
    page.select_option("form.enroll select[name=group]", "wards")
    page.fill("form.enroll input[name=tags]", "icu, floor-3")
    page.click("form.enroll button")
    password = page.inner_text("[data-testid=mqtt-password]")
    device_id = page.inner_text("[data-testid=device-id]")
    assert len(password) >= 24 and device_id.startswith("dev-")
    assert "shown only once" in page.inner_text("main")
    _screenshot(page, "enrolled", tmp_path)

    page.goto(f"{base}/devices?group=wards")
    new_row = page.locator("#devices tbody tr", has_text="pi-new-01")
    assert new_row.locator(".badge").inner_text() == "never seen"
    assert password not in page.content()

    page.goto(f"{base}/audit?action=device.enroll")
    first = page.locator("#audit tbody tr").first
    assert "token:operator-ana#" in first.inner_text() and "via dashboard" in first.inner_text()
    assert device_id in first.inner_text()
    assert page.problems == []  # type: ignore[attr-defined]


def test_api_reference_renders_offline_and_calls_the_api_with_a_token(
    fleet_server: Any, seeded: dict[str, Any], browser_page: Any
) -> None:
    """`/docs` works on a network without the internet: every request it makes goes to
    this server (anything else is aborted and would fail the test), and a person can
    authorize with a bearer token and call an operation from the page."""
    page = browser_page
    base = fleet_server.base_url
    elsewhere: list[str] = []

    def only_this_server(route: Any) -> None:
        if route.request.url.startswith(base):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    page.route("**/*", only_this_server)
    # The spec needs a token like the API: the page asks for one first.
    assert httpx.get(f"{base}/openapi.json").status_code == 401
    page.goto(f"{base}/docs")
    page.fill("#token-form #token", seeded["tokens"][Role.viewer])
    page.click("#token-form button[type=submit]")
    page.wait_for_selector(".swagger-ui .info .title", timeout=20_000)
    assert "fedfleet fleet" in page.inner_text(".swagger-ui .info .title")
    assert page.locator(".opblock-tag-section").count() >= 5  # devices, models, rollouts, ...
    assert page.locator("#token-form").is_hidden()

    # The token is already authorized: "Try it out" on GET /api/v1/me.
    assert page.locator("button.authorize.locked").count() == 1
    me = page.locator(".opblock-get", has_text="/api/v1/me").first
    me.locator(".opblock-summary").click()
    me.locator("button.try-out__btn").click()
    me.locator("button.execute").click()
    live = me.locator(".live-responses-table tbody tr.response").first
    live.wait_for(timeout=10_000)
    assert live.locator(".response-col_status").inner_text().strip() == "200"
    assert '"role": "viewer"' in live.locator(".microlight").first.inner_text()
    assert elsewhere == []
    assert page.problems == []  # type: ignore[attr-defined]
