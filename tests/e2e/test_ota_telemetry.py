"""Devices serve inference, publish telemetry, and the fleet sees drift (real Mosquitto)."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlmodel import Session, func, select

sys.path.insert(0, str(Path(__file__).parent))

from broker_process import free_port
from ota_testkit import SIM_ACTOR, TARGET, OtaFleet, register_bundle, wait_for

from edge_client.device_agent import serve_http
from firmware_images.demo import build_demo_bundle
from fleet.crud.rollouts import create_rollout
from fleet.crud.telemetry import set_reference
from fleet.db import session_scope
from fleet.models.ota import Rollout, RolloutCreate, RolloutStatus, TelemetryRecord
from fleet.ota.drift import reference_from_data
from fleet.ota.telemetry import check_all

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[OtaFleet]:
    ota = OtaFleet(tmp_path, devices=3)
    try:
        yield ota.start(telemetry_s=1.0)
    finally:
        ota.close()


def test_inference_telemetry_and_drift_end_to_end(fleet: OtaFleet) -> None:
    # Prepare: a model with a training reference, rolled out to 3 devices.
    assert fleet.sim is not None
    rng = np.random.default_rng(0)
    bundle = build_demo_bundle(private_key=fleet.key, version="v1", features=8)
    model_id = register_bundle(
        fleet.engine, fleet.store, bundle=bundle.data, task="t", target=TARGET
    )
    with session_scope(fleet.engine, write=True) as session:
        set_reference(
            session,
            model_version_id=model_id,
            reference=reference_from_data(rng.normal(size=(4000, 8))),
            actor=SIM_ACTOR,
        )
        rollout_id = create_rollout(
            session,
            RolloutCreate(model_version_id=model_id, group=fleet.group, waves=[100]),
            actor=SIM_ACTOR,
        ).id

    def finished() -> bool:
        with Session(fleet.engine) as session:
            rollout = session.get(Rollout, rollout_id)
            return rollout is not None and rollout.status is RolloutStatus.succeeded

    wait_for(finished, timeout_s=60, what="the rollout")
    agent = fleet.sim.agents[0]
    server = serve_http(agent, port=free_port())
    try:
        # Execute: the local app asks for predictions over HTTP and the Python API,
        # with feature 0 shifted by +2 standard deviations.
        url = f"http://127.0.0.1:{server.server_port}"
        x = rng.normal(size=(300, 8)).astype(np.float32)
        x[:, 0] += 2.0
        request = urllib.request.Request(
            f"{url}/predict", data=json.dumps({"inputs": x[:100].tolist()}).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = json.loads(response.read())
        bad = urllib.request.Request(f"{url}/predict", data=b'{"nope": 1}', method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(bad, timeout=10)
        agent.predict(x[100:])
        for other in fleet.sim.agents[1:]:
            other.predict(x)
    finally:
        server.shutdown()
        server.server_close()

    def inferences() -> int:
        with Session(fleet.engine) as session:
            return int(session.exec(select(func.sum(TelemetryRecord.count))).one() or 0)

    wait_for(lambda: inferences() == 900, timeout_s=20, what="telemetry of 900 inferences")
    events = check_all(fleet.engine)

    # Assert: HTTP answered and refused properly; nothing lost; drift found on feature 0.
    assert len(body["classes"]) == 100 and len(body["outputs"][0]) == 3
    assert refused.value.code == 400
    assert len(events) == 1
    scores = events[0].per_feature
    assert scores[0] > 0.5 and max(scores[1:]) < 0.2
