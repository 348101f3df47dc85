"""Feedback through replicated bridges (``fleet mqtt --replica``), on SQLite and
PostgreSQL: one message delivered to two replicas, or again after a redelivery, is
stored once; a single bridge stores what it receives, as for telemetry."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from sqlmodel import Session, select

from edge_client.protocol import mqtt as proto
from fleet.artifacts import ArtifactStore
from fleet.models.ota import FeedbackRecord
from fleet.ota.bridge import BridgeSettings, FleetBridge

Headers = dict[str, str]


def _bridge(client: TestClient, replica: str | None) -> FleetBridge:
    app: Any = client.app
    settings = BridgeSettings(shared_group="fedfleet" if replica else None)
    return FleetBridge(
        engine=app.state.engine,
        store=ArtifactStore(app.state.settings.artifact_dir),
        settings=settings,
    )


def _feedback(device: str, seq: int, correct: int) -> tuple[str, str, bytes]:
    message = proto.Feedback(
        seq=seq,
        window_s=60.0,
        model_version_id=1,
        labels={"0": proto.LabelCount(correct=correct, wrong=3)},
    )
    return ("msg", proto.topic(device, "feedback"), proto.encode(message))


def test_feedback_delivered_to_two_replicas_and_redelivered_is_stored_once(
    client: TestClient, admin: Headers
) -> None:
    # Prepare: two enrolled devices; replicas a and b, and a lone bridge.
    ids = []
    for name in ("fb-a", "fb-b"):
        body = {"name": name, "hardware_target": "cpu-x86"}
        response = client.post("/api/v1/devices", json=body, headers=admin)
        assert response.status_code == 201, response.text
        ids.append(str(response.json()["device"]["id"]))
    a, b = ids
    replica_a, replica_b, lone = _bridge(client, "a"), _bridge(client, "b"), _bridge(client, None)

    # Execute: device a's window 0 reaches both replicas, then again (a redelivery), in a
    # batch with its window 1; device b's identical counts are its own message.
    replica_a.ingest_batch([_feedback(a, 0, 40)])
    replica_b.ingest_batch([_feedback(a, 0, 40), _feedback(b, 0, 40)])
    replica_a.ingest_batch([_feedback(a, 0, 40), _feedback(a, 1, 50), _feedback(a, 1, 50)])
    lone.ingest_batch([_feedback(b, 7, 9), _feedback(b, 7, 9)])

    # Assert
    engine = client.app.state.engine  # type: ignore[attr-defined]
    with Session(engine) as session:
        rows = session.exec(select(FeedbackRecord)).all()
    stored = sorted((r.device_id == a, r.seq, r.labelled) for r in rows)
    assert stored == [(False, 0, 43), (False, 7, 12), (False, 7, 12), (True, 0, 43), (True, 1, 53)]
    assert all((r.digest is None) == (r.seq == 7) for r in rows)
    assert replica_a.stats.ignored == replica_b.stats.ignored == lone.stats.ignored == 0
