"""/healthz, /readyz and the Prometheus /metrics endpoint."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from fleet.db import make_engine
from fleet.settings import FleetSettings


def test_health_and_readiness_need_no_token(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_not_ready_while_the_schema_is_old(
    tmp_path: Path, app_factory: Callable[[FleetSettings], TestClient]
) -> None:
    from fleet import migrate

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    migrate.upgrade(engine, "0001_core")
    engine.dispose()
    client = app_factory(
        FleetSettings(database_url=url, artifact_dir=tmp_path / "a", migrate_on_start=False)
    )
    response = client.get("/readyz")
    assert response.status_code == 503
    assert "fedfleet fleet migrate" in response.json()["detail"]
    assert response.json()["revision"] == "0001_core"


def test_app_factory_migrates_a_new_database(
    tmp_path: Path, app_factory: Callable[[FleetSettings], TestClient]
) -> None:
    client = app_factory(
        FleetSettings(database_url=f"sqlite:///{tmp_path / 'new.db'}", artifact_dir=tmp_path / "a")
    )
    assert client.get("/readyz").json()["status"] == "ready"


def test_metrics_count_requests_by_route_template_and_fleet_state(
    client: TestClient, admin: dict[str, str]
) -> None:
    device = client.post(
        "/api/v1/devices", json={"name": "pi-1", "hardware_target": "rpi5"}, headers=admin
    ).json()["device"]["id"]
    client.post(f"/api/v1/devices/{device}/heartbeat", headers=admin)
    client.post("/api/v1/devices", json={"name": "pi-2", "hardware_target": "rpi5"}, headers=admin)
    client.post("/api/v1/models", json={"task": "t"}, headers=admin)
    assert client.get("/metrics").status_code == 401
    response = client.get("/metrics", headers=admin)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    heartbeat_line = (
        'fleet_http_requests_total{method="POST",route="/api/v1/devices/{device_id}/heartbeat",'
        'status="200"}'
    )
    assert heartbeat_line in text
    assert device not in text  # raw paths never become labels
    assert 'fleet_devices{status="online"} 1.0' in text
    assert 'fleet_devices{status="never_seen"} 1.0' in text
    assert 'fleet_model_versions{stage="registered"} 1.0' in text
    assert "fleet_http_request_duration_seconds_bucket" in text


def test_each_app_has_its_own_metrics(
    client: TestClient,
    admin: dict[str, str],
    settings_factory: Callable[..., Any],
    app_factory: Callable[[FleetSettings], TestClient],
) -> None:
    other = app_factory(settings_factory())
    client.get("/healthz")
    assert 'route="/healthz"' not in other.get("/metrics", headers=admin).text


def _series(client: TestClient) -> set[str]:
    """Every sample name with its labels in the app's registry (one per time series)."""
    registry = client.app.state.metrics_registry  # type: ignore[attr-defined]
    return {
        f"{sample.name}{sorted(sample.labels.items())}"
        for family in registry.collect()
        if family.name.startswith("fleet_http")
        for sample in family.samples
    }


def test_random_paths_add_a_bounded_number_of_series(
    client: TestClient, admin: dict[str, str]
) -> None:
    # Prepare: one request of each kind first, so their label sets exist.
    import random
    import string

    rng = random.Random(15)
    kinds = [
        "/static/{x}",  # the dashboard's static mount
        "/static/{x}/{y}.css",
        "/{x}",
        "/{x}/{y}",
        "/api/v1/{x}",  # no token: the auth gate answers
        "/api/v1/devices/{x}",  # with a token: a route with a path parameter
        "/docs/{x}",
    ]

    words: set[str] = set()

    def word() -> str:
        w = "".join(rng.choices(string.ascii_lowercase + string.digits, k=12))
        words.add(w)
        return w

    def path(kind: str) -> str:
        return kind.format(x=word(), y=word())

    for kind in kinds:
        client.get(path(kind), headers=admin if "devices" in kind else {})
    before = _series(client)
    # Execute: 2,000 requests to random paths of the same kinds.
    for number in range(2000):
        kind = kinds[number % len(kinds)]
        client.get(path(kind), headers=admin if "devices" in kind else {})
    after = _series(client)
    # Assert: no new series; unknown paths share one label, routes keep their template.
    assert after - before == set()
    routes = {label for name in after for label in [name] if "route" in name}
    assert any("'<unmatched>'" in name for name in routes)
    assert any("'/api/v1/devices/{device_id}'" in name for name in routes)
    # Whatever else ran in this process before (the registry is process-wide), no label
    # carries any of the random words the requests used.
    labels = {
        m.group(1) for name in after for m in [re.search(r"\('route', '([^']*)'\)", name)] if m
    }
    assert not {label for label in labels if any(w in label for w in words)}
