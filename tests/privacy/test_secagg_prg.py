"""Oracle tests of the fast paths of SecAgg+'s arithmetic: the mask stream is AES-128-CTR
whichever OpenSSL code computes it, chunked masking equals whole-stream masking, and the
fixed-point encoding equals its plain definition (clip, scale, round, weight)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from privacy.secagg import SecAggConfig
from privacy.secagg.config import CLIP_FRACTION_SCALE
from privacy.secagg.prg import _CtrByGcm, apply_masks, keystream, stream
from privacy.secagg.quantize import BLOCK, encode_difference, encode_input


def _aes_ctr(key: bytes, nbytes: int) -> bytes:
    """The definition: AES-128-CTR, IV 0^128, first 16 bytes of the key, over zeros."""
    return Cipher(algorithms.AES(key[:16]), modes.CTR(bytes(16))).encryptor().update(bytes(nbytes))


@settings(max_examples=40, deadline=None)
@given(
    key=st.binary(min_size=32, max_size=32),
    cuts=st.lists(st.integers(0, 5000), max_size=6),
    extra=st.integers(0, 70),
)
def test_gcm_engine_is_the_aes_ctr_stream_however_it_is_chunked(key, cuts, extra):
    """Prepare a stream cut into arbitrary pieces (inside the first 32 bytes, across
    them, long); Execute the GCM-engine stream piece by piece; Assert byte equality with
    plain AES-128-CTR."""
    points = sorted(set(cuts))
    total = (points[-1] if points else 0) + extra
    out = bytearray(total)
    view, engine, start = memoryview(out), _CtrByGcm(key[:16]), 0
    for end in [*points, total]:
        engine.update_into(bytes(end - start), view[start:end])
        start = end
    assert bytes(out) == _aes_ctr(key, total)


@pytest.mark.parametrize("nbytes", [0, 8, 32, 40, 131072 + 24, 3 * 131072])
def test_keystream_is_aes_ctr_by_either_engine(nbytes):
    key = os.urandom(32)
    expected = _aes_ctr(key, nbytes)
    assert keystream(key, nbytes // 8, np.uint64).tobytes() == expected
    for engine in (stream(key, length=None), _CtrByGcm(key[:16])):  # CTR code, GCM code
        out = bytearray(nbytes)
        engine.update_into(bytes(nbytes), memoryview(out))
        assert bytes(out) == expected


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_chunked_masking_equals_adding_whole_streams(dtype):
    """Assert apply_masks (chunked, all streams per chunk) equals adding each whole
    keystream with its sign, mod 2^M, for chunk sizes that do and do not divide it."""
    rng = np.random.default_rng(0)
    acc = rng.integers(0, np.iinfo(dtype).max, size=10_007, dtype=dtype)
    terms = [(os.urandom(32), sign) for sign in (1, -1, 1, 1, -1)]
    expected = acc.copy()
    for key, sign in terms:
        mask = keystream(key, acc.size, dtype)
        expected = expected + mask if sign > 0 else expected - mask
    for chunk in (64, 4096, 1 << 20):
        got = apply_masks(acc.copy(), terms, chunk_bytes=chunk)
        assert np.array_equal(got, expected)


def _encode_by_definition(update, *, weight, params):
    """The fixed-point encoding as written in privacy/secagg/quantize.py's docstring."""
    qmax = 2 ** (params.bits - 1) - 1
    w = min(max(weight, 0), params.max_weight)
    q = np.rint(np.clip(update * params.scale, -qmax, qmax)).astype(np.int64)
    signed = np.concatenate(
        [
            q * w,
            [w, round(CLIP_FRACTION_SCALE * np.count_nonzero(np.abs(update) > params.clip)
                      / max(update.size, 1))],
        ]
    )  # fmt: skip
    bits = params.modulus_bits
    return (
        signed.astype(np.int64)
        .astype(np.uint64 if bits == 64 else np.int32)
        .view(np.uint64 if bits == 64 else np.uint32)
    )


@settings(max_examples=80, deadline=None)
@given(
    values=st.lists(st.floats(-5, 5, allow_nan=False), max_size=300),
    boundary=st.booleans(),
    weight=st.integers(0, 70_000),
    bits=st.sampled_from([2, 8, 12, 16, 24, 32]),
    max_weight=st.sampled_from([1, 1024, 65536]),
    clip=st.sampled_from([0.1, 0.37, 1.0, 2.5]),
)
def test_encoding_equals_its_definition(values, boundary, weight, bits, max_weight, clip):
    """Oracle: the in-place encoder (one min/max pass, clipping only when needed,
    rounding straight into the ring) equals clip → scale → round → weight, bit for bit,
    for 32- and 64-bit rings, at and just beyond the clip bound."""
    params = SecAggConfig(enabled=True, bits=bits, clip=clip, max_weight=max_weight).params_for(10)
    update = np.array(values, dtype=np.float64)
    if boundary and update.size:
        update[0], update[-1] = clip, -np.nextafter(clip, 10)
    got = encode_input(update, weight=weight, params=params)
    assert got.dtype == (np.uint64 if params.modulus_bits == 64 else np.uint32)
    assert np.array_equal(got, _encode_by_definition(update, weight=weight, params=params))


def test_encoding_into_a_reused_buffer_equals_a_fresh_one():
    """Prepare a dirty buffer; Assert encoding into it gives the fresh result, in it, and
    that a buffer of the wrong dtype or length is refused."""
    params = SecAggConfig(enabled=True).params_for(10)
    update = np.random.default_rng(3).normal(scale=0.3, size=1000)
    dirty = np.full(1002, 2**63 + 5, dtype=np.uint64)
    got = encode_input(update, weight=7, params=params, out=dirty)
    assert got is dirty
    assert np.array_equal(got, encode_input(update, weight=7, params=params))
    for wrong in (np.empty(1002, np.uint32), np.empty(1001, np.uint64)):
        with pytest.raises(ValueError, match="out must be"):
            encode_input(update, weight=7, params=params, out=wrong)


@pytest.mark.parametrize("bits", [12, 16])
def test_blockwise_encoding_equals_its_definition_across_blocks(bits):
    """Prepare an update of several quantization blocks where only one block needs
    clipping; Assert the blockwise encoder equals the definition, clipped count included,
    and that a NaN in a late block is still refused."""
    params = SecAggConfig(enabled=True, bits=bits, max_weight=1024).params_for(10)
    rng = np.random.default_rng(5)
    update = rng.normal(scale=0.2, size=3 * BLOCK + 5).clip(-0.99, 0.99)
    update[BLOCK + 17], update[2 * BLOCK + 3] = 1.7, -np.nextafter(1.0, 2)
    expected = _encode_by_definition(update, weight=300, params=params)
    assert np.array_equal(encode_input(update, weight=300, params=params), expected)
    assert encode_input(update, weight=300, params=params)[-1] == round(65535 * 2 / update.size)
    update[-1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        encode_input(update, weight=300, params=params)


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.sampled_from([0, 1, 7, BLOCK - 1, BLOCK, BLOCK + 3]), min_size=1, max_size=4),
    dtype=st.sampled_from([np.float32, np.float64]),
    bits=st.sampled_from([8, 16]),
    max_weight=st.sampled_from([1024, 65536]),
    weight=st.integers(0, 70_000),
    seed=st.integers(0, 2**32 - 1),
)
def test_encoding_a_difference_equals_encoding_the_built_update(
    sizes, dtype, bits, max_weight, weight, seed
):
    """Prepare trained and global layers (float32 or float64, sizes around a block, some
    coordinates beyond the clip); Assert encode_difference, which quantizes trained −
    global block by block without building the update, equals the definition on the
    float64 update the client used to build — every ring element, the clipped count
    included — for 32- and 64-bit rings."""
    rng = np.random.default_rng(seed)
    params = SecAggConfig(enabled=True, bits=bits, max_weight=max_weight).params_for(10)
    pairs = []
    for size in sizes:
        start = rng.normal(size=size).astype(dtype)
        trained = (start + rng.normal(scale=0.6, size=size)).astype(dtype)
        pairs.append((trained, start))
    update = np.concatenate([np.subtract(a, b, dtype=np.float64) for a, b in pairs])
    got = encode_difference(pairs, weight=weight, params=params)
    assert np.array_equal(got, _encode_by_definition(update, weight=weight, params=params))
    assert np.array_equal(got, encode_input(update, weight=weight, params=params))


def test_encoding_a_difference_refuses_non_finite_and_mismatched_layers():
    params = SecAggConfig(enabled=True).params_for(10)
    a, b = np.zeros(BLOCK + 9), np.zeros(BLOCK + 9)
    a[BLOCK + 4] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        encode_difference([(np.zeros(3), np.zeros(3)), (a, b)], weight=1, params=params)
    with pytest.raises(ValueError, match="one size"):
        encode_difference([(np.zeros(3), np.zeros(4))], weight=1, params=params)
