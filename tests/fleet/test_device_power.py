"""The fleet keeps the battery and region each device last reported and shows them."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from edge_client.protocol import mqtt as proto
from fleet.artifacts import ArtifactStore
from fleet.ota.bridge import BridgeSettings, FleetBridge

Headers = dict[str, str]


def _telemetry(device: str, seq: int, **fields: Any) -> tuple[str, str, bytes]:
    message = proto.Telemetry(
        seq=seq, window_s=60.0, count=1, latency_p50_ms=1.0, latency_p95_ms=2.0, **fields
    )
    return ("msg", proto.topic(device, "telemetry"), proto.encode(message))


def test_latest_battery_and_region_are_stored_and_shown(client: TestClient, admin: Headers) -> None:
    # Prepare: two devices; the bridge the fleet runs.
    ids = []
    for name in ("phone-a", "phone-b"):
        body = {"name": name, "hardware_target": "cpu-x86"}
        response = client.post("/api/v1/devices", json=body, headers=admin)
        assert response.status_code == 201, response.text
        ids.append(response.json()["device"]["id"])
    a, b = ids
    app: Any = client.app
    bridge = FleetBridge(
        engine=app.state.engine,
        store=ArtifactStore(app.state.settings.artifact_dir),
        settings=BridgeSettings(),
    )
    over_range = _telemetry(b, 9, battery=proto.Battery(level=0.5, charging=False))[2]
    batch = [
        ("msg", proto.topic(a, "status"), proto.encode(proto.Status(online=True, region="DE"))),
        _telemetry(a, 1, battery=proto.Battery(level=0.9, charging=True)),
        _telemetry(a, 2, battery=proto.Battery(level=0.35, charging=False), region="FR"),
        _telemetry(b, 1),  # reports nothing: stays null
        ("msg", proto.topic(b, "telemetry"), over_range.replace(b'"level":0.5', b'"level":2')),
    ]

    # Execute
    bridge.ingest_batch(batch)

    # Assert: the latest values, nothing for b; the out-of-range level refused and counted.
    shown = {d: client.get(f"/api/v1/devices/{d}", headers=admin).json() for d in ids}
    assert {k: shown[a][k] for k in ("battery_level", "battery_charging", "region")} == {
        "battery_level": 0.35,
        "battery_charging": False,
        "region": "FR",
    }
    assert shown[b]["battery_level"] is None and shown[b]["region"] is None
    listed = client.get("/api/v1/devices", headers=admin).json()["items"]
    assert {d["id"]: (d["battery_level"], d["region"]) for d in listed} == {
        a: (0.35, "FR"),
        b: (None, None),
    }
    assert bridge.stats.ignored == 1
