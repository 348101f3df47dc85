"""The device protocol's JSON Schemas are the truth; the codec agrees with them.

- every schema is a valid Draft 2020-12 schema, and two independent validators
  (``jsonschema``, the Python reference implementation; ``jsonschema_rs``) agree on it;
- every example inside a schema validates and decodes;
- property: every message the codec encodes (any valid field values) validates;
- property (differential): for valid messages mutated in every way hypothesis finds
  (fields dropped, nulled, retyped, out of bounds, unknown fields), the codec accepts
  exactly the payloads the schema accepts, given the few rules JSON Schema cannot state
  (``EXTRA_RULES``: integers without fraction, the artifact's chunk count).
"""

from __future__ import annotations

import json
import math
from typing import Any

import jsonschema
import jsonschema_rs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_client.protocol import mqtt as proto
from edge_client.protocol import schemas

VALIDATORS = {
    name: jsonschema.Draft202012Validator(schemas.schema(name)) for name in schemas.DOCUMENTS
}
RS_VALIDATORS = {
    name: jsonschema_rs.validator_for(schemas.schema(name)) for name in schemas.DOCUMENTS
}
SHA = "ab" * 32


def schema_valid(name: str, doc: Any) -> bool:
    ours = VALIDATORS[name].is_valid(doc)
    assert RS_VALIDATORS[name].is_valid(doc) == ours, f"validators disagree on {doc!r}"
    return ours


def codec_accepts(payload: Any, channel: proto.Channel) -> bool:
    try:
        proto.decode(json.dumps(payload, allow_nan=False).encode(), channel=channel)
    except proto.ProtocolError:
        return False
    return True


# --- the files ---------------------------------------------------------------------


@pytest.mark.parametrize("name", schemas.DOCUMENTS)
def test_each_schema_is_valid_draft_2020_12_and_its_examples_validate(name: str) -> None:
    doc = schemas.schema(name)
    jsonschema.Draft202012Validator.check_schema(doc)
    assert doc["$id"].endswith(f"/v2/{name}.json")
    assert doc["examples"], f"{name}.json has no examples"
    for example in doc["examples"]:
        assert schema_valid(name, example), f"{name} example does not validate: {example}"


@pytest.mark.parametrize("name", schemas.MESSAGES)
def test_each_message_example_decodes(name: str) -> None:
    channel = next(c for c, m in schemas.CHANNEL_MESSAGE.items() if m == name)
    for example in schemas.schema(name)["examples"]:
        message = proto.decode(json.dumps(example).encode(), channel=channel)  # type: ignore[arg-type]
        assert type(message).__name__.lower().replace("chunkrequest", "chunk-req") in (
            name,
            "command",
        )


def test_the_chunk_header_example_is_what_a_frame_carries() -> None:
    (example,) = schemas.schema("chunk-header")["examples"]
    frame = proto.encode_chunk(proto.Chunk(transfer_id=example["transfer_id"], index=2, data=b"x"))
    header = json.loads(frame[6 : 6 + int.from_bytes(frame[4:6], "big")])
    assert header == example
    with pytest.raises(proto.ProtocolError, match="exactly"):
        extra = json.dumps({**example, "more": 1}).encode()
        proto.decode_chunk(b"FFC1" + len(extra).to_bytes(2, "big") + extra + b"x")


def test_an_ack_with_error_null_is_accepted_by_schema_and_codec() -> None:
    ack = {"schema": 2, "type": "ack", "command_id": "c1", "ok": True, "action": "install"}
    payload = {**ack, "error": None, "stage": None}
    assert schema_valid("ack", payload)
    decoded = proto.decode(json.dumps(payload).encode(), channel="ack")
    assert isinstance(decoded, proto.Ack) and decoded.error == "" and decoded.stage == ""


def test_integral_floats_are_the_documented_gap() -> None:
    """JSON Schema cannot tell 3 from 3.0; the codec refuses 3.0 where an integer goes."""
    payload = {"schema": 2, "type": "chunk-req", "transfer_id": SHA, "indices": [3.0]}
    assert schema_valid("chunk-req", payload)
    assert not codec_accepts(payload, "chunk-req")


def test_the_envelope_schema_describes_the_signed_bytes() -> None:
    from edge_client.protocol.command_envelope import DOMAIN, envelope_bytes

    command = proto.Command(
        command_id="c", action="rollback", rollout_id=3, issued_at=5, expires_at=9, signature="s"
    )
    signed = envelope_bytes("dev-0123456789abcdef", command)
    assert signed.startswith(DOMAIN)
    assert schema_valid("command-envelope", json.loads(signed[len(DOMAIN) :]))


# --- strategies: valid messages ----------------------------------------------------

ids = st.none() | st.integers(0, proto.MAX_ID)
counts = st.integers(0, proto.MAX_COUNT)
seconds = st.floats(0, proto.MAX_SECONDS, allow_nan=False)
texts = st.text(max_size=40) | st.sampled_from(["", "x" * proto.MAX_TEXT])
opt_texts = st.none() | texts
command_ids = st.text(min_size=1, max_size=128)
shas = st.text("0123456789abcdef", min_size=64, max_size=64)
regions = st.none() | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}", fullmatch=True)
batteries = st.none() | st.builds(
    proto.Battery, level=st.floats(0, 1, allow_nan=False), charging=st.booleans()
)


@st.composite
def artifacts(draw: st.DrawFn) -> proto.ArtifactRef:
    chunk_size = draw(st.integers(1, proto.MAX_CHUNK_BYTES))
    n = draw(st.integers(1, 5))
    size = draw(st.integers((n - 1) * chunk_size + 1, n * chunk_size))
    return proto.ArtifactRef(
        sha256=draw(shas),
        size=size,
        chunk_size=chunk_size,
        chunk_sha256=tuple(draw(shas) for _ in range(n)),
    )


@st.composite
def commands(draw: st.DrawFn) -> proto.Command:
    action = draw(st.sampled_from(proto.ACTIONS))
    signed = draw(st.booleans())
    return proto.Command(
        command_id=draw(command_ids),
        action=action,
        rollout_id=draw(ids),
        model_version_id=draw(ids),
        artifact=draw(artifacts()) if action == "install" else draw(st.none() | artifacts()),
        telemetry_bins=tuple(
            tuple(row)
            for row in draw(
                st.lists(
                    st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=4),
                    max_size=3,
                )
            )
        ),
        issued_at=draw(st.integers(0, proto.MAX_MILLIS)) if signed else None,
        expires_at=draw(st.integers(0, proto.MAX_MILLIS)) if signed else None,
        signature=draw(st.text(max_size=128)) if signed else None,
    )


messages = st.one_of(
    st.builds(
        proto.Status,
        online=st.booleans(),
        model_version_id=ids,
        model_version=opt_texts,
        sha256=opt_texts,
        slot=opt_texts,
        target=opt_texts,
        agent=texts,
        region=regions,
    ),
    st.builds(proto.Heartbeat, uptime_s=seconds, model_version_id=ids),
    st.builds(
        proto.Telemetry,
        seq=counts,
        window_s=seconds,
        count=counts,
        latency_p50_ms=seconds,
        latency_p95_ms=seconds,
        model_version_id=ids,
        predictions=st.dictionaries(st.text(max_size=64), counts, max_size=4),
        features=st.lists(
            st.builds(proto.FeatureSummary, counts=st.lists(counts, max_size=5).map(tuple)),
            max_size=3,
        ).map(tuple),
        errors=counts,
        battery=batteries,
        region=regions,
    ),
    st.builds(
        proto.Feedback,
        seq=counts,
        window_s=seconds,
        model_version_id=ids,
        labels=st.dictionaries(
            st.text(max_size=64),
            st.builds(proto.LabelCount, correct=counts, wrong=counts),
            max_size=4,
        ),
    ),
    commands(),
    st.builds(
        proto.Ack,
        command_id=command_ids,
        ok=st.booleans(),
        action=st.sampled_from(proto.ACTIONS),
        rollout_id=ids,
        model_version_id=ids,
        error=texts,
        stage=texts,
    ),
    st.builds(
        proto.ChunkRequest,
        transfer_id=shas,
        indices=st.lists(counts, min_size=1, max_size=8).map(tuple),
        via=st.sampled_from(proto.VIAS),
    ),
)
_SCHEMA_OF = {
    proto.Status: ("status", "status"),
    proto.Heartbeat: ("heartbeat", "heartbeat"),
    proto.Telemetry: ("telemetry", "telemetry"),
    proto.Command: ("command", "cmd"),
    proto.Ack: ("ack", "ack"),
    proto.ChunkRequest: ("chunk-req", "chunk-req"),
    proto.Feedback: ("feedback", "feedback"),
}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages)
def test_every_message_the_codec_writes_validates_and_round_trips(message: proto.Message) -> None:
    name, channel = _SCHEMA_OF[type(message)]
    payload = json.loads(proto.encode(message))
    assert schema_valid(name, payload), list(VALIDATORS[name].iter_errors(payload))[:1]
    assert proto.decode(proto.encode(message), channel=channel) == message  # type: ignore[arg-type]


# --- differential: mutate valid messages, the codec and the schema agree -----------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.sampled_from([0, -1, proto.MAX_COUNT, proto.MAX_COUNT + 1, 2**53, proto.MAX_BINS]),
    st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer()),
    st.sampled_from([0.5, 1.5, -0.5, 1.0000001]),
    st.text(max_size=8),
    st.sampled_from(
        [
            "",
            "DE",
            "DE\n",
            "x" * 32,
            "x" * 33,
            "-DE",
            "x" * 64,
            "x" * 65,
            "x" * 128,
            "x" * 129,
            "x" * 4097,
            SHA,
            SHA + "\n",
            "artifact",
        ]
    ),
    st.sampled_from(proto.ACTIONS + proto.VIAS),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, str, Any]:
    message = draw(messages)
    name, channel = _SCHEMA_OF[type(message)]
    payload = json.loads(proto.encode(message))
    for _ in range(draw(st.integers(1, 3))):
        payload = draw(_mutate(payload))
    return name, channel, payload


def _mutate(doc: Any) -> st.SearchStrategy[Any]:
    """One change somewhere in ``doc``: a value replaced, a key dropped or added."""
    if isinstance(doc, dict) and doc:
        keys = sorted(doc)
        return st.one_of(
            st.sampled_from(keys).flatmap(lambda k: _mutate(doc[k]).map(lambda v: {**doc, k: v})),
            st.sampled_from(keys).map(lambda k: {x: y for x, y in doc.items() if x != k}),
            st.tuples(
                st.sampled_from(
                    ["evil", "error", "via", "artifact", "signature", "battery", "region", "level"]
                ),
                json_values,
            ).map(lambda kv: {**doc, kv[0]: kv[1]}),
            json_values,
        )
    if isinstance(doc, list) and doc:
        return st.one_of(
            st.integers(0, len(doc) - 1).flatmap(
                lambda i: _mutate(doc[i]).map(lambda v: [*doc[:i], v, *doc[i + 1 :]])
            ),
            st.just(doc[1:]),
            st.just([]),
            st.just((doc * 1100)[:1100]),  # past the bounds of 1000, 1001 and 1024 items
            json_values,
        )
    return json_values


def _extra_rules_hold(name: str, payload: Any) -> bool:
    """The rules JSON Schema cannot state (schemas.EXTRA_RULES), for a schema-valid doc."""
    if name != "command" or not isinstance(payload.get("artifact"), dict):
        return True
    ref = payload["artifact"]
    return len(ref["chunk_sha256"]) == math.ceil(ref["size"] / ref["chunk_size"])


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_the_codec_accepts_exactly_what_the_schema_accepts(case: tuple[str, str, Any]) -> None:
    name, channel, payload = case
    expected = schema_valid(name, payload) and _extra_rules_hold(name, payload)
    errors = [e.message for e in VALIDATORS[name].iter_errors(payload)][:2]
    assert codec_accepts(payload, channel) == expected, (payload, errors)  # type: ignore[arg-type]
