"""Weights on the wire: the fast ``.npy`` encoder and decoder equal numpy's own."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from tasks import get_task
from tasks.npy import array_view, decode_npy, encode_npy, npy_array
from tasks.weights import weights_record

ARRAYS = [
    np.arange(24, dtype=np.float32).reshape(2, 3, 4),
    np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4)),
    np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2],  # neither C nor F contiguous
    np.arange(6, dtype=">i4"),  # big-endian stays big-endian, as with np.load
    np.array([True, False]),
    np.zeros((0, 5), dtype=np.float16),
    np.array(3.5, dtype=np.float32),  # 0-d
    np.array([1 + 2j], dtype=np.complex64),
    np.zeros(3, dtype=[("a", "<i2"), ("b", "<f8")]),  # structured, no objects
    np.zeros((1,) * 40, dtype=np.uint8),  # many dimensions: a long header
]
IDS = [
    "c-order",
    "fortran",
    "strided",
    "big-endian",
    "bool",
    "empty",
    "scalar",
    "complex",
    "record",
    "40-d",
]


def _npy(array: np.ndarray, version: tuple[int, int] | None = None) -> bytes:
    buffer = io.BytesIO()
    if version is None:
        np.save(buffer, array, allow_pickle=False)
    else:
        np.lib.format.write_array(buffer, array, version=version, allow_pickle=False)
    return buffer.getvalue()


@pytest.mark.parametrize("array", ARRAYS, ids=IDS)
def test_encoding_is_np_save_byte_for_byte(array: np.ndarray) -> None:
    for _ in range(2):  # the second time the header comes from the cache
        assert encode_npy(array) == _npy(array)


@pytest.mark.parametrize("array", ARRAYS, ids=IDS)
def test_npy_array_is_flowers_array_byte_for_byte(array: np.ndarray) -> None:
    ours, flowers = npy_array(array), Array(array)
    assert (ours.dtype, tuple(ours.shape), ours.stype, ours.data) == (
        flowers.dtype,
        tuple(flowers.shape),
        flowers.stype,
        flowers.data,
    )


def test_weights_record_is_array_record_byte_for_byte() -> None:
    torch.manual_seed(0)
    state = get_task("digits-cnn").build_model().state_dict()
    ours, flowers = weights_record(state), ArrayRecord(state)
    assert list(ours) == list(flowers)
    for name in flowers:
        a, b = ours[name], flowers[name]
        assert (a.dtype, tuple(a.shape), a.stype, a.data) == (
            b.dtype,
            tuple(b.shape),
            b.stype,
            b.data,
        )


@pytest.mark.parametrize("array", ARRAYS, ids=IDS)
@pytest.mark.parametrize("version", [None, (2, 0)])
def test_fast_decoding_equals_np_load(array: np.ndarray, version: tuple[int, int] | None) -> None:
    data = _npy(array, version)
    expected = np.load(io.BytesIO(data), allow_pickle=False)
    for _ in range(2):  # the second time the header comes from the cache
        got = decode_npy(data)
        assert got is not None
        assert got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)
        assert got.flags.f_contiguous == expected.flags.f_contiguous


def test_anything_but_a_plain_npy_is_left_to_np_load() -> None:
    data = _npy(np.arange(10, dtype=np.float32))
    assert decode_npy(b"not an npy file") is None
    assert decode_npy(data[:-4]) is None  # truncated: np.load gives the error
    assert decode_npy(_npy(np.arange(3.0), (3, 0))) is None  # utf-8 header
    # Arrays of structured dtypes with objects are refused by numpy itself.
    with pytest.raises(ValueError):
        encode_npy(np.array([object()]))


def test_array_view_is_flowers_numpy_without_a_copy() -> None:
    # Prepare: an Array as Flower builds it, and one whose bytes are not a plain .npy.
    array = Array(np.arange(12, dtype=np.float32).reshape(3, 4))
    odd = Array(dtype="float32", shape=(3,), stype="custom", data=b"\x00" * 12)
    # Execute
    view = array_view(array)
    # Assert: Flower's values, read-only, and the bytes' own memory (no copy made).
    np.testing.assert_array_equal(view, array.numpy())
    assert view.dtype == np.float32 and view.shape == (3, 4)
    assert not view.flags.writeable and not view.flags.owndata
    raw = np.frombuffer(array.data, dtype=np.uint8)
    assert np.shares_memory(view, raw)
    with pytest.raises(TypeError, match="Unsupported serialization type"):
        array_view(odd)  # not .npy bytes: Flower's own decoding and its error
