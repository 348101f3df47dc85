"""The manifest: canonical bytes, strict parsing, round trips."""

from __future__ import annotations

import json

import pytest
from firmware_images_testkit import make_manifest, replace
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_images.errors import BundleFormatError
from firmware_images.manifest import (
    MAX_MANIFEST_BYTES,
    canonical_json,
    parse_manifest,
    to_canonical_bytes,
)


def _edit(mutate) -> bytes:
    obj = json.loads(to_canonical_bytes(make_manifest()))
    mutate(obj)
    return canonical_json(obj)


def test_canonical_bytes_round_trip_and_are_stable():
    manifest = make_manifest()
    data = to_canonical_bytes(manifest)
    assert parse_manifest(data) == manifest
    assert to_canonical_bytes(parse_manifest(data)) == data
    expected = json.dumps(json.loads(data), sort_keys=True, separators=(",", ":"))
    assert data == expected.encode("ascii")  # sorted keys, no whitespace


finite = st.floats(allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(finite, min_size=1, max_size=12),
    version=st.text(min_size=1, max_size=40),
    drop=st.floats(min_value=-100, max_value=100, allow_nan=False),
    opset=st.one_of(st.none(), st.integers(min_value=13, max_value=30)),
)
def test_any_valid_manifest_round_trips_exactly(values, version, drop, opset):
    manifest = replace(
        make_manifest(),
        version=version,
        opset=opset,
        reference__input=tuple(float(v) for v in values),
        reference__input_shape=(1, len(values)),
        accuracy__drop_points=drop,
    )
    data = to_canonical_bytes(manifest)
    assert parse_manifest(data) == manifest
    assert data.isascii()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda o: o.update(extra=1), "unknown field.*extra"),
        (lambda o: o["model"].update(url="http://x"), r"manifest\.model has unknown field.*url"),
        (lambda o: o.pop("target"), r"manifest\.target is missing"),
        (lambda o: o["model"].pop("sha256"), r"manifest\.model\.sha256 is missing"),
        (lambda o: o.update(schema=4), "schema 4 is not supported"),
        (lambda o: o.pop("latency"), r"manifest\.latency is missing"),
        (lambda o: o["latency"].update(int8_p50_us=0), r"latency\.int8_p50_us must be a positive"),
        (lambda o: o["latency"].update(decision="faster"), r"latency\.decision must be one of"),
        (lambda o: o["latency"].pop("machine"), r"manifest\.latency\.machine is missing"),
        (lambda o: o.update(format="pt"), r"manifest\.format must be one of"),
        (lambda o: o["model"].update(size="10"), r"manifest\.model\.size must be an integer"),
        (lambda o: o["model"].update(sha256="ab"), "SHA-256"),
        (lambda o: o["model"].update(file="model.tflite"), "model.file must be 'model.onnx'"),
        (lambda o: o["reference"].update(input=[1.0]), "do not match their shapes"),
        (lambda o: o["reference"].update(atol=0), "atol must be a positive"),
        (lambda o: o.update(inputs=[]), "at least one input"),
        (lambda o: o.update(target="Bad Target"), "lower-case"),
        (lambda o: o.update(key_id="rsa:1"), "key_id"),
    ],
)
def test_bad_manifests_are_refused_with_the_field_named(mutate, message):
    with pytest.raises(BundleFormatError, match=message):
        parse_manifest(_edit(mutate))


def test_non_canonical_and_invalid_json_are_refused():
    pretty = json.dumps(json.loads(to_canonical_bytes(make_manifest())), indent=1).encode()
    with pytest.raises(BundleFormatError, match="canonical"):
        parse_manifest(pretty)
    with pytest.raises(BundleFormatError, match="not valid JSON"):
        parse_manifest(b'{"schema": 1,')
    with pytest.raises(BundleFormatError, match="not valid JSON"):
        parse_manifest(b'{"schema": NaN}')
    with pytest.raises(BundleFormatError, match="JSON object"):
        parse_manifest(b"[1]")
    with pytest.raises(BundleFormatError, match="more than"):
        parse_manifest(b" " * (MAX_MANIFEST_BYTES + 1))


def test_latency_round_trips_and_may_be_null():
    # Prepare: the testkit's manifest carries a latency record; a fp32 recipe's has none.
    timed = make_manifest()
    untimed = replace(timed, latency=None)
    # Execute / Assert
    for manifest in (timed, untimed):
        data = to_canonical_bytes(manifest)
        assert parse_manifest(data) == manifest
    assert json.loads(to_canonical_bytes(untimed))["latency"] is None
    assert json.loads(to_canonical_bytes(timed))["latency"]["int8_p50_us"] == 37.25


def test_a_schema_1_manifest_still_reads_and_cannot_carry_latency():
    # Prepare: what fedfleet wrote before schema 2: no latency field at all.
    old = replace(make_manifest(), schema=1, latency=None, release=None)
    data = to_canonical_bytes(old)
    # Assert: read back unchanged, byte for byte; schema 1 never had latency.
    assert b"latency" not in data
    assert parse_manifest(data) == old and to_canonical_bytes(parse_manifest(data)) == data
    with pytest.raises(BundleFormatError, match="latency needs schema 2"):
        replace(make_manifest(), schema=1)
    obj = json.loads(data)
    obj["latency"] = None
    with pytest.raises(BundleFormatError, match="unknown field.*latency"):
        parse_manifest(canonical_json(obj))


def test_a_schema_2_manifest_still_reads_and_schema_3_needs_a_release():
    # Prepare: what fedfleet wrote before release numbers (schema 2: no release field).
    old = replace(make_manifest(), schema=2, release=None)
    data = to_canonical_bytes(old)
    # Assert: read back unchanged, without a release; schema 3 refuses a missing release
    # and a schema-2 manifest cannot carry one.
    assert b'"release"' not in data
    assert parse_manifest(data) == old
    with pytest.raises(BundleFormatError, match="manifest.release must be an integer"):
        replace(make_manifest(), release=None)
    with pytest.raises(BundleFormatError, match="manifest.release must be an integer"):
        replace(make_manifest(), release=0)
    with pytest.raises(BundleFormatError, match="release needs schema 3"):
        replace(make_manifest(), schema=2)
    assert parse_manifest(to_canonical_bytes(make_manifest())).release == 1
