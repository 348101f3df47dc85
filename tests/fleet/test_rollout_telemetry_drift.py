"""Telemetry ingestion in batches, PSI drift against the training reference, retraining."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from sqlmodel import Session, select

from edge_client.protocol import mqtt as proto
from fleet.artifacts import ArtifactStore
from fleet.db import session_scope
from fleet.models.devices import Device, ReportedStatus
from fleet.models.ota import TelemetryRecord
from fleet.ota.bridge import BridgeSettings, FleetBridge
from fleet.ota.drift import bin_counts, psi, psi_per_feature, reference_from_data
from fleet.ota.telemetry import check_drift

Headers = dict[str, str]
fractions = st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=2, max_size=12).filter(
    lambda v: sum(v) > 0.01
)


@given(fractions)
def test_psi_of_a_distribution_with_itself_is_zero(p: list[float]) -> None:
    assert psi(p, p) == pytest.approx(0.0, abs=1e-12)


@given(st.data())
def test_psi_is_non_negative_and_symmetric(data: st.DataObject) -> None:
    e = data.draw(fractions)
    a = data.draw(
        st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=len(e), max_size=len(e)).filter(
            lambda v: sum(v) > 0.01
        )
    )
    assert psi(e, a) >= -1e-12
    assert psi(e, a) == pytest.approx(psi(a, e), rel=1e-9, abs=1e-12)


def test_psi_matches_the_textbook_formula() -> None:
    # Oracle: sum (a - e) ln(a / e) written out by hand for two bins.
    expected = (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.75 - 0.5) * math.log(0.75 / 0.5)
    assert psi([50, 50], [25, 75]) == pytest.approx(expected)
    assert expected == pytest.approx(0.2747, abs=1e-4)


def test_reference_bins_hold_equal_shares_and_catch_a_shift() -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(size=(5000, 3))
    ref = reference_from_data(train, n_bins=10)
    assert all(len(e) == 9 for e in ref.edges)
    assert all(np.allclose(p, 0.1, atol=0.01) for p in ref.proportions)
    same = rng.normal(size=(2000, 3))
    shifted = same + np.array([0.0, 0.0, 1.0])
    same_counts = [bin_counts(same[:, j], ref.edges[j]).tolist() for j in range(3)]
    shifted_counts = [bin_counts(shifted[:, j], ref.edges[j]).tolist() for j in range(3)]
    assert max(psi_per_feature(ref, same_counts)) < 0.05
    scores = psi_per_feature(ref, shifted_counts)
    assert scores[2] > 0.5 and max(scores[:2]) < 0.05


def test_bad_drift_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="same number"):
        psi([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="non-negative"):
        psi([1, -1], [1, 1])
    with pytest.raises(ValueError, match="at least 10 samples"):
        reference_from_data(np.zeros((3, 2)))


def _device(client: TestClient, admin: Headers, name: str) -> str:
    client.post("/api/v1/groups", json={"name": "wards"}, headers=admin)
    body = {"name": name, "hardware_target": "cpu-x86", "group": "wards"}
    response = client.post("/api/v1/devices", json=body, headers=admin)
    assert response.status_code == 201, response.text
    return str(response.json()["device"]["id"])


def _status(device: str, model: int) -> tuple[str, str, bytes]:
    message = proto.Status(online=True, model_version_id=model)
    return ("msg", proto.topic(device, "status"), proto.encode(message))


def _telemetry(
    device: str, seq: int, model: int, features: list[list[int]], count: int = 100
) -> tuple[str, str, bytes]:
    message = proto.Telemetry(
        seq=seq,
        window_s=60.0,
        count=count,
        latency_p50_ms=2.0,
        latency_p95_ms=5.0 + seq,
        model_version_id=model,
        predictions={"0": count // 2, "1": count - count // 2},
        features=tuple(proto.FeatureSummary(counts=tuple(f)) for f in features),
    )
    return ("msg", proto.topic(device, "telemetry"), proto.encode(message))


def _bridge(client: TestClient) -> FleetBridge:
    app: Any = client.app
    return FleetBridge(
        engine=app.state.engine,
        store=ArtifactStore(app.state.settings.artifact_dir),
        settings=BridgeSettings(),
    )


def test_ingestion_writes_every_valid_message_in_one_batch_and_skips_the_rest(
    client: TestClient, admin: Headers
) -> None:
    # Prepare
    a, b = _device(client, admin, "pi-a"), _device(client, admin, "pi-b")
    bridge = _bridge(client)
    batch = [_telemetry(a, i, None, []) for i in range(50)]  # type: ignore[arg-type]
    batch += [("msg", proto.topic(b, "heartbeat"), proto.encode(proto.Heartbeat(uptime_s=3.0)))]
    batch += [("msg", proto.topic(a, "status"), proto.encode(proto.Status(online=False)))]
    batch += [
        ("msg", proto.topic("dev-unknown", "telemetry"), _telemetry("dev-unknown", 0, 1, [])[2])
    ]
    batch += [("msg", proto.topic(b, "telemetry"), b'{"schema": 7}'), ("msg", "bad/topic", b"{}")]

    # Execute
    bridge.ingest_batch(batch)

    # Assert: 50 rows for a, none for the unknown device; b seen; a offline (Last Will).
    engine = client.app.state.engine  # type: ignore[attr-defined]
    with Session(engine) as session:
        rows = session.exec(select(TelemetryRecord)).all()
        assert len(rows) == 50 and {r.device_id for r in rows} == {a}
        assert sorted(r.seq for r in rows) == list(range(50))
        dev_a, dev_b = session.get(Device, a), session.get(Device, b)
        assert dev_a is not None and dev_a.reported_status is ReportedStatus.offline
        assert dev_b is not None and dev_b.last_seen_at is not None
    assert bridge.stats.ignored == 2 and bridge.stats.telemetry_rows == 50


@pytest.mark.parametrize(
    ("edges", "proportions", "match"),
    [
        ([[]], [[1.0]], "at least two bins"),  # the finding: one bin per feature, was 204
        ([[1.0, 1.0]], [[0.3, 0.3, 0.4]], "increase strictly"),
        ([[2.0, 1.0]], [[0.3, 0.3, 0.4]], "increase strictly"),
        ([[0.0]], [[0.5, 0.6]], "sum to 1"),
        ([[0.0]], [[-0.5, 1.5]], "non-negative"),
        ([[0.0]], [[1.0]], "len\\(edges\\) \\+ 1"),
    ],
)
def test_a_drift_reference_the_check_cannot_use_is_refused_with_422(
    client: TestClient, admin: Headers, edges: Any, proportions: Any, match: str
) -> None:
    model = client.post("/api/v1/models", json={"task": "synthetic-logreg"}, headers=admin).json()[
        "id"
    ]
    body = {"edges": edges, "proportions": proportions, "samples": 10}
    response = client.put(f"/api/v1/models/{model}/drift-reference", json=body, headers=admin)
    assert response.status_code == 422, response.text
    assert re.search(match, response.text), response.text
    assert client.get(f"/api/v1/models/{model}", headers=admin).status_code == 200


def test_drift_event_from_telemetry_and_a_retraining_run_from_it(
    client: TestClient, admin: Headers
) -> None:
    # Prepare: a model with a 2-feature reference of 4 equal bins; a device reporting.
    model = client.post("/api/v1/models", json={"task": "synthetic-logreg"}, headers=admin).json()[
        "id"
    ]
    reference = {
        "edges": [[-1, 0, 1], [-1, 0, 1]],
        "proportions": [[0.25] * 4, [0.25] * 4],
        "samples": 1000,
    }
    put = client.put(f"/api/v1/models/{model}/drift-reference", json=reference, headers=admin)
    assert put.status_code == 204, put.text
    bad = {**reference, "proportions": [[0.5, 0.5], [0.25] * 4]}
    assert (
        client.put(f"/api/v1/models/{model}/drift-reference", json=bad, headers=admin).status_code
        == 422
    )
    devices = [_device(client, admin, f"pi-drift-{i}") for i in range(3)]
    bridge = _bridge(client)
    engine = client.app.state.engine  # type: ignore[attr-defined]
    bridge.ingest_batch([_status(d, model) for d in devices])  # on record: running `model`
    stable, shifted = [[25, 25, 25, 25], [25, 25, 25, 25]], [[25, 25, 25, 25], [0, 5, 15, 80]]

    # Execute: stable inputs first (no event); then one device alone shifts (no event);
    # then all three do.
    bridge.ingest_batch([_telemetry(d, i, model, stable) for d in devices for i in range(4)])
    with session_scope(engine, write=True) as session:
        assert check_drift(session, model_version_id=model, group="wards") is None
    bridge.ingest_batch([_telemetry(devices[0], 10 + i, model, shifted) for i in range(4)])
    with session_scope(engine, write=True) as session:
        assert check_drift(session, model_version_id=model, group="wards") is None
    bridge.ingest_batch(
        [_telemetry(d, 10 + i, model, shifted) for d in devices[1:] for i in range(4)]
    )
    with session_scope(engine, write=True) as session:
        event = check_drift(session, model_version_id=model, group="wards")
        assert event is not None
        event_id = event.id

    # Assert: the event is in the API with per-feature PSI; a run starts from it once.
    events = client.get(
        "/api/v1/drift-events", params={"model_version_id": model}, headers=admin
    ).json()
    assert events["total"] == 1
    item = events["items"][0]
    assert item["id"] == event_id and item["group"] == "wards" and item["per_feature"][1] > 0.2
    assert item["agreeing"] == 3 and item["population"] == 3
    assert sorted(d["device_id"] for d in item["devices"] if d["drifted"]) == sorted(devices)
    run = client.post(f"/api/v1/drift-events/{event_id}/runs", headers=admin)
    assert run.status_code == 201, run.text
    assert run.json()["task"] == "synthetic-logreg"
    assert client.post(f"/api/v1/drift-events/{event_id}/runs", headers=admin).status_code == 409
    assert client.post("/api/v1/drift-events/999/runs", headers=admin).status_code == 404
    summary = client.get(
        "/api/v1/telemetry/summary",
        params={"model_version_id": model, "group": "wards"},
        headers=admin,
    ).json()
    assert summary["inferences"] == 2400 and summary["devices"] == 3
    assert summary["latency_p95_ms"] == 18.0 and summary["predictions"] == {"0": 1200, "1": 1200}


def test_a_model_version_gets_its_task_reference_at_registration_and_reads_back_a_put(
    client: TestClient, admin: Headers
) -> None:
    # Prepare: versions of a task the fleet knows (synthetic: 60 columns) and of one
    # it does not.
    def register(task: str) -> int:
        response = client.post("/api/v1/models", json={"task": task}, headers=admin)
        assert response.status_code == 201, response.text
        return int(response.json()["id"])

    known, unknown = register("synthetic-logreg"), register("vendor-own-task")
    url = f"/api/v1/models/{known}/drift-reference"
    reference = {"edges": [[-1.5, 0.0, 2.5]], "proportions": [[0.1, 0.4, 0.3, 0.2]], "samples": 77}

    # Execute
    attached = client.get(url, headers=admin)
    missing = client.get(f"/api/v1/models/{unknown}/drift-reference", headers=admin)
    put = client.put(url, json=reference, headers=admin)
    got = client.get(url, headers=admin)

    # Assert: deciles of each training column (about 10 % per bin); none for the
    # unknown task (404 saying how to fix); a PUT replaces it and reads back the same.
    assert attached.status_code == 200, attached.text
    auto = attached.json()
    assert len(auto["edges"]) == 60 and all(len(e) == 9 for e in auto["edges"])
    assert all(abs(p - 0.1) < 0.01 for row in auto["proportions"] for p in row)
    assert auto["samples"] > 1000 and auto["pushed_at"] is None
    assert missing.status_code == 404 and "set one" in missing.json()["detail"]
    assert put.status_code == 204, put.text
    assert got.status_code == 200, got.text
    body = got.json()
    assert (body["edges"], body["proportions"], body["samples"]) == (
        reference["edges"],
        reference["proportions"],
        77,
    )
    assert body["model_version_id"] == known and body["created_at"] >= auto["created_at"]
    assert client.get("/api/v1/models/999/drift-reference", headers=admin).status_code == 404
