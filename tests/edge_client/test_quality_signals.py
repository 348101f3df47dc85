"""Quality signals on the wire: telemetry ``errors`` and the ``feedback`` message."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_client.device_agent import DeviceAgent
from edge_client.device_config import DeviceConfig
from edge_client.protocol import mqtt as proto


def test_feedback_round_trips_and_telemetry_errors_are_optional() -> None:
    # Prepare
    feedback = proto.Feedback(
        seq=3,
        window_s=60.0,
        model_version_id=7,
        labels={"0": proto.LabelCount(correct=9, wrong=1)},
    )
    plain = proto.Telemetry(seq=1, window_s=1.0, count=2, latency_p50_ms=1, latency_p95_ms=2)

    # Execute
    decoded = proto.decode(proto.encode(feedback), channel="feedback")
    body = json.loads(proto.encode(plain))

    # Assert: feedback survives; errors=0 is left out (older fleets accept it)
    assert decoded == feedback
    assert decoded.labels["0"].total == 10  # type: ignore[union-attr]
    assert "errors" not in body
    assert proto.decode(proto.encode(plain), channel="telemetry") == plain


@pytest.mark.parametrize(
    "labels",
    [
        {"0": {"correct": -1, "wrong": 0}},
        {"0": {"correct": 1}},
        {"0": {"correct": 1, "wrong": 0, "extra": 1}},
        {"0": {"correct": 2**31, "wrong": 0}},
        {"x" * 65: {"correct": 1, "wrong": 0}},
        {str(i): {"correct": 1, "wrong": 0} for i in range(proto.MAX_CLASSES + 1)},
        [1, 2],
    ],
)
def test_hostile_feedback_is_refused(labels: object) -> None:
    payload = {"schema": 2, "type": "feedback", "seq": 0, "window_s": 1.0, "labels": labels}
    with pytest.raises(proto.ProtocolError):
        proto.decode(json.dumps(payload).encode(), channel="feedback")


def test_feedback_on_the_telemetry_topic_is_refused() -> None:
    payload = {"schema": 2, "type": "feedback", "seq": 0, "window_s": 1.0}
    with pytest.raises(proto.ProtocolError, match="channel telemetry"):
        proto.decode(json.dumps(payload).encode(), channel="telemetry")


# --- the reference agent counts them --------------------------------------------------


def _agent(tmp_path: Path) -> tuple[DeviceAgent, list[tuple[str, proto.Message]]]:
    key = tmp_path / "fleet.pub"
    key.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    agent = DeviceAgent(
        DeviceConfig(device_id="dev-q", target="cpu-x86", slots_dir=tmp_path / "s", public_key=key)
    )
    sent: list[tuple[str, proto.Message]] = []
    agent._publish = lambda channel, message, retain=False: sent.append((channel, message))  # type: ignore[method-assign,misc]
    return agent, sent


class _Failing:
    def run(self, batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("the accelerator fell over")


def test_the_agent_sends_label_counts_and_inference_errors_with_its_window(
    tmp_path: Path,
) -> None:
    # Prepare: a model whose runner raises; labels that came back for 3 predictions
    agent, sent = _agent(tmp_path)
    agent.model = SimpleNamespace(  # type: ignore[assignment]
        runner=_Failing(), meta=SimpleNamespace(model_version_id=7)
    )
    with pytest.raises(RuntimeError):
        agent.predict(np.zeros((1, 4), dtype=np.float32))
    agent.feedback(labels=[0, 0, 1], predicted=[0, 1, 1])

    # Execute
    agent._publish_telemetry(0.0)

    # Assert
    (_, telemetry), (channel, feedback) = sent
    assert isinstance(telemetry, proto.Telemetry) and telemetry.errors == 1
    assert channel == "feedback" and isinstance(feedback, proto.Feedback)
    assert feedback.model_version_id == 7 and feedback.seq == telemetry.seq
    assert feedback.labels == {
        "0": proto.LabelCount(correct=1, wrong=1),
        "1": proto.LabelCount(correct=1, wrong=0),
    }
    with pytest.raises(ValueError, match="must be as long"):
        agent.feedback(labels=[0], predicted=[])


def test_no_labels_no_feedback_message(tmp_path: Path) -> None:
    agent, sent = _agent(tmp_path)
    agent._publish_telemetry(0.0)
    assert [channel for channel, _ in sent] == ["telemetry"]
