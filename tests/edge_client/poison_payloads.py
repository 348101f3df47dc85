"""Hypothesis strategies for what a hostile device can publish on a device->fleet topic.

Shared by the decoder's property tests (tests/edge_client/test_mqtt_protocol.py) and the
fuzzing of the real bridge over Mosquitto (tests/e2e/test_ota_fuzz.py): raw bytes, JSON
of any shape, valid messages with one field replaced by a hostile value (huge or negative
integers, deep nesting, wrong types), literals JSON allows but Python turns into
overflows (400-digit integers, ``1e400``), deep bracket nesting and non-UTF-8 bytes.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from edge_client.protocol import mqtt as proto

SHA = "ab" * 32

# One valid message per device->fleet channel, as the JSON object a device sends.
VALID: dict[str, dict[str, Any]] = {
    "status": {"schema": 2, "type": "status", "online": True, "model_version_id": 1},
    "heartbeat": {"schema": 2, "type": "heartbeat", "uptime_s": 3.5},
    "telemetry": {
        "schema": 2,
        "type": "telemetry",
        "seq": 1,
        "window_s": 60.0,
        "count": 10,
        "latency_p50_ms": 1.0,
        "latency_p95_ms": 2.0,
        "predictions": {"0": 10},
        "features": [{"counts": [5, 5]}],
    },
    "ack": {
        "schema": 2,
        "type": "ack",
        "command_id": "c1",
        "ok": True,
        "action": "install",
        "rollout_id": 1,
        "model_version_id": 1,
    },
    "chunk-req": {"schema": 2, "type": "chunk-req", "transfer_id": SHA, "indices": [0, 1]},
}
FIELDS = sorted({k for message in VALID.values() for k in message} | {"via", "error", "stage"})

hostile_ints = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from([-1, 2**31 - 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 2**70]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    hostile_ints,
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj).encode()


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    """A valid message of some channel with one field set to a hostile value."""
    base = dict(VALID[draw(st.sampled_from(sorted(VALID)))])
    base[draw(st.sampled_from(FIELDS))] = draw(json_values)
    return _dumps(base)


@st.composite
def _literal(draw: st.DrawFn) -> bytes:
    """A valid message with one numeric field written as an overflowing literal."""
    channel = draw(st.sampled_from(sorted(VALID)))
    field = draw(st.sampled_from(sorted(VALID[channel])))
    literal = draw(
        st.sampled_from(["9" * 400, "-" + "9" * 400, "1e400", "-1e400", "1" + "0" * 21, "1e-400"])
    )
    text = json.dumps({**VALID[channel], field: "__X__"}).replace('"__X__"', literal)
    return text.encode()


@st.composite
def _nested(draw: st.DrawFn) -> bytes:
    depth = draw(st.integers(min_value=1, max_value=100_000))
    opener = draw(st.sampled_from([b"[", b'{"a":']))
    inside = b"[" * depth if opener == b"[" else opener * depth
    return draw(st.sampled_from([inside, b'{"schema":2,"type":"heartbeat","uptime_s":' + inside]))


@st.composite
def _non_utf8(draw: st.DrawFn) -> bytes:
    data = bytearray(_dumps(VALID[draw(st.sampled_from(sorted(VALID)))]))
    at = draw(st.integers(min_value=0, max_value=len(data)))
    data[at:at] = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x00"]))
    return bytes(data)


def payloads() -> st.SearchStrategy[bytes]:
    """Anything a device can publish, biased to the shapes that reach deep into decoding."""
    return st.one_of(
        st.binary(max_size=300),
        json_values.map(_dumps),
        _mutated(),
        _literal(),
        _nested(),
        _non_utf8(),
        st.sampled_from([_dumps(v) for v in VALID.values()]),
    )


CHANNELS: tuple[proto.Channel, ...] = proto.UPLINK
