"""Quality signals on the wire: telemetry ``errors`` and the ``feedback`` message."""

from __future__ import annotations

import json

import pytest

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
