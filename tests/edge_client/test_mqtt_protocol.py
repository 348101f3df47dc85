"""The MQTT wire contract: topics, JSON messages, chunk frames; refusals are ProtocolError."""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))

import poison_payloads

from edge_client.protocol import mqtt as proto

SHA = "ab" * 32


def _ref(size: int = 100, chunk: int = 40) -> proto.ArtifactRef:
    count = -(-size // chunk)
    return proto.ArtifactRef(sha256=SHA, size=size, chunk_size=chunk, chunk_sha256=(SHA,) * count)


MESSAGES: list[proto.Message] = [
    proto.Status(online=True, model_version_id=3, model_version="v3", sha256=SHA, slot="a"),
    proto.Status(online=False),
    proto.Heartbeat(uptime_s=12.5, model_version_id=None),
    proto.Telemetry(
        seq=4,
        window_s=60.0,
        count=100,
        latency_p50_ms=1.5,
        latency_p95_ms=3.0,
        predictions={"0": 60, "1": 40},
        features=(proto.FeatureSummary(counts=(1, 2, 3)),),
    ),
    proto.Command(
        command_id="c1",
        action="install",
        rollout_id=1,
        artifact=_ref(),
        telemetry_bins=((0.0, 1.0),),
    ),
    proto.Command(command_id="c2", action="rollback"),
    proto.Ack(command_id="c1", ok=False, action="install", stage="self-test", error="bad"),
    proto.ChunkRequest(transfer_id=SHA, indices=(0, 2)),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_encode_then_decode_gives_the_same_message(message: proto.Message) -> None:
    data = proto.encode(message)
    assert json.loads(data)["schema"] == proto.SCHEMA_VERSION
    assert proto.decode(data) == message


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_encode_writes_what_asdict_would(message: proto.Message) -> None:
    # The encoder's shallow conversion (no deep copies) gives asdict's JSON, nested
    # artifact references, chunk hashes and bins included.
    import dataclasses

    body = json.loads(proto.encode(message))
    del body["schema"]
    expected = json.loads(json.dumps(dataclasses.asdict(message)))
    assert {k: v for k, v in expected.items() if k in body} == body
    assert set(expected) - set(body) <= {
        "via",
        "errors",
        "issued_at",
        "expires_at",
        "signature",
        "battery",  # optional, left out when unknown
        "region",
    }


def test_topics_round_trip_and_refuse_foreign_ones() -> None:
    name = proto.topic("dev-0123", "status")
    assert name == "fedfleet/v1/dev/dev-0123/status"
    assert proto.parse_topic(name) == ("dev-0123", "status")
    for bad in (
        "fedfleet/v2/dev/x/status",
        "fedfleet/v1/dev/x/secrets",
        "a/b",
        "fedfleet/v1/dev/+/cmd",
    ):
        with pytest.raises(proto.ProtocolError):
            proto.parse_topic(bad)
    with pytest.raises(ValueError, match="device id"):
        proto.topic("a/b", "cmd")


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"{oops", "malformed JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"type": "status", "online": true}', "schema"),
        (b'{"schema": 3, "type": "status", "online": true}', "unknown schema version 3"),
        (b'{"schema": 2, "type": "reboot"}', "unknown message type"),
        (b'{"schema": 2, "type": "status", "online": "yes"}', "wrong type"),
        (b'{"schema": 2, "type": "status", "online": true, "evil": 1}', "unknown fields"),
        (b'{"schema": 2, "type": "heartbeat"}', "lacks fields"),
        (b'{"schema": 2, "type": "status", "online": NaN}', "malformed JSON"),
        (b"\xff\xfe\x00", "malformed JSON"),
    ],
)
def test_bad_json_is_refused_with_a_reason(payload: bytes, match: str) -> None:
    with pytest.raises(proto.ProtocolError, match=match):
        proto.decode(payload)


def test_a_message_on_the_wrong_channel_is_refused() -> None:
    data = proto.encode(proto.Heartbeat(uptime_s=1.0))
    with pytest.raises(proto.ProtocolError, match="channel cmd"):
        proto.decode(data, channel="cmd")


def test_impossible_commands_are_refused() -> None:
    with pytest.raises(proto.ProtocolError, match="needs an artifact"):
        proto.encode(proto.Command(command_id="c", action="install"))
    bad_ref = proto.ArtifactRef(sha256=SHA, size=100, chunk_size=40, chunk_sha256=(SHA,))
    with pytest.raises(proto.ProtocolError, match="disagree"):
        proto.encode(proto.Command(command_id="c", action="install", artifact=bad_ref))
    with pytest.raises(proto.ProtocolError, match="transfer_id"):
        proto.encode(proto.ChunkRequest(transfer_id="xyz", indices=(1,)))


def test_chunk_frames_round_trip_and_bad_frames_are_refused() -> None:
    chunk = proto.Chunk(transfer_id=SHA, index=7, data=b"\x00\x01payload")
    assert proto.decode_chunk(proto.encode_chunk(chunk)) == chunk
    frame = proto.encode_chunk(chunk)
    for bad in (
        b"",
        b"XXXX" + frame[4:],
        frame[:8],
        b"FFC1\x00\x02{}",
        frame.replace(b'"index":7', b'"index":-1'),
    ):
        with pytest.raises(proto.ProtocolError):
            proto.decode_chunk(bad)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_decoding_arbitrary_bytes_never_raises_anything_but_protocol_error(data: bytes) -> None:
    for decode in (proto.decode, proto.decode_chunk):
        with contextlib.suppress(proto.ProtocolError):
            decode(data)


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            ["schema", "type", "online", "uptime_s", "command_id", "action", "artifact", "indices"]
        ),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.text(max_size=5),
            st.lists(st.integers(), max_size=3),
        ),
    )
)
def test_decoding_arbitrary_json_objects_never_crashes(obj: dict[str, object]) -> None:
    with contextlib.suppress(proto.ProtocolError):
        proto.decode(json.dumps(obj).encode())


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=1, max_size=5000), st.integers(min_value=1, max_value=700))
def test_artifact_refs_agree_with_their_chunking(data: bytes, chunk: int) -> None:
    hashes = tuple(
        hashlib.sha256(data[i : i + chunk]).hexdigest() for i in range(0, len(data), chunk)
    )
    ref = proto.ArtifactRef(
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        chunk_size=chunk,
        chunk_sha256=hashes,
    )
    command = proto.Command(command_id="c", action="install", artifact=ref)
    assert proto.decode(proto.encode(command)) == command


def test_shared_chunk_requests_and_artifact_topics() -> None:
    # A shared request carries via; the default (device) is left off the wire, so a
    # schema-1 fleet that predates the field still accepts every repair request.
    shared = proto.ChunkRequest(transfer_id=SHA, indices=(0, 1), via="artifact")
    repair = proto.ChunkRequest(transfer_id=SHA, indices=(2,))
    assert proto.decode(proto.encode(shared)) == shared
    assert "via" not in json.loads(proto.encode(repair))
    assert proto.decode(proto.encode(repair)).via == "device"  # type: ignore[union-attr]
    bad = json.loads(proto.encode(shared))
    bad["via"] = "broadcast"
    with pytest.raises(proto.ProtocolError, match="via"):
        proto.decode(json.dumps(bad).encode())
    name = proto.artifact_topic(SHA)
    assert name == f"fedfleet/v1/artifacts/{SHA}/chunk"
    assert proto.parse_artifact_topic(name) == SHA
    for other in (proto.topic("dev-1", "chunk"), f"fedfleet/v1/artifacts/{SHA}/x", "a/b"):
        assert proto.parse_artifact_topic(other) is None
    with pytest.raises(ValueError, match="SHA-256"):
        proto.artifact_topic("not-a-hash")


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(poison_payloads.CHANNELS), poison_payloads.payloads())
def test_hostile_payloads_decode_to_a_bounded_message_or_a_protocol_error(
    channel: proto.Channel, payload: bytes
) -> None:
    # Execute: whatever a device publishes (deep nesting, 400-digit numbers, 2^63...).
    try:
        message = proto.decode(payload, channel=channel)
    except proto.ProtocolError:
        return  # refused, as a value: the only failure decode has
    # Assert: what is accepted round-trips and fits the fleet's 32-bit columns.
    assert proto.decode(proto.encode(message), channel=channel) == message
    for name in ("seq", "count", "model_version_id", "rollout_id"):
        value = getattr(message, name, None)
        assert value is None or 0 <= value <= 2**31 - 1


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"[" * 300_000, "nested too deeply"),
        (b'{"schema":2,"type":"heartbeat","uptime_s":' + b"9" * 400 + b"}", "digits"),
        (b'{"schema":2,"type":"heartbeat","uptime_s":1e400}', "out of range"),
        (json.dumps({**poison_payloads.VALID["telemetry"], "seq": 2**63}).encode(), "seq"),
        (
            json.dumps({**poison_payloads.VALID["status"], "model_version_id": 2**40}).encode(),
            "model_version_id",
        ),
        (
            json.dumps(
                {**poison_payloads.VALID["telemetry"], "features": [{"counts": [2**40]}]}
            ).encode(),
            "bin counts",
        ),
    ],
)
def test_the_findings_payloads_are_refused_with_a_reason(payload: bytes, match: str) -> None:
    with pytest.raises(proto.ProtocolError, match=match):
        proto.decode(payload)
