"""The in-process transport: private copies for clients, arrays decoded once."""

from __future__ import annotations

import io

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from simulation import transport
from simulation.transport import DecodedOnceArray, for_client, for_server


def test_decoded_once_array_is_the_same_array() -> None:
    original = Array(np.arange(12, dtype=np.float32).reshape(3, 4))
    twin = DecodedOnceArray.of(original)
    assert twin == original and original == twin
    assert (twin.dtype, tuple(twin.shape), twin.stype, twin.data) == (
        original.dtype,
        tuple(original.shape),
        original.stype,
        original.data,
    )
    first, second = twin.numpy(), twin.numpy()
    np.testing.assert_array_equal(first, original.numpy())
    # Each call is a fresh writable copy: a client scribbling on it harms no one.
    first[0, 0] = 99.0
    assert second[0, 0] == 0.0 and twin.numpy()[0, 0] == 0.0


def test_decoding_happens_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = transport.decode_npy

    def counting_decode(data: bytes) -> object:
        calls.append(1)
        return real(data)

    monkeypatch.setattr(transport, "decode_npy", counting_decode)
    twin = DecodedOnceArray.of(Array(np.ones(5)))
    for _ in range(10):
        twin.numpy()
    assert len(calls) == 1


def _npy(array: np.ndarray, version: tuple[int, int] | None = None) -> bytes:
    buffer = io.BytesIO()
    if version is None:
        np.save(buffer, array, allow_pickle=False)
    else:
        np.lib.format.write_array(buffer, array, version=version, allow_pickle=False)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "array",
    [
        np.arange(24, dtype=np.float32).reshape(2, 3, 4),
        np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4)),
        np.arange(6, dtype=">i4"),  # big-endian stays big-endian, as with np.load
        np.array([True, False]),
        np.zeros((0, 5), dtype=np.float16),
        np.array(3.5, dtype=np.float32),  # 0-d
        np.array([1 + 2j], dtype=np.complex64),
        np.zeros(3, dtype=[("a", "<i2"), ("b", "<f8")]),  # structured, no objects
    ],
    ids=["c-order", "fortran", "big-endian", "bool", "empty", "scalar", "complex", "record"],
)
@pytest.mark.parametrize("version", [None, (2, 0)])
def test_fast_decoding_equals_np_load(array: np.ndarray, version: tuple[int, int] | None) -> None:
    data = _npy(array, version)
    expected = np.load(io.BytesIO(data), allow_pickle=False)
    for _ in range(2):  # the second time the header comes from the cache
        got = transport.decode_npy(data)
        assert got is not None
        assert got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)
        assert got.flags.f_contiguous == expected.flags.f_contiguous


def test_anything_but_a_plain_npy_is_left_to_np_load() -> None:
    data = _npy(np.arange(10, dtype=np.float32))
    assert transport.decode_npy(b"not an npy file") is None
    assert transport.decode_npy(data[:-4]) is None  # truncated: np.load gives the error
    assert transport.decode_npy(_npy(np.arange(3.0), (3, 0))) is None  # utf-8 header
    # And through the Array, the fallback raises Flower's own error for truncated data.
    bad = DecodedOnceArray.of(Array(np.arange(10, dtype=np.float32)))
    bad.__dict__["data"] = data[:-4]
    with pytest.raises(ValueError):
        bad.numpy()


def test_it_serializes_and_reads_back_as_an_array() -> None:
    twin = DecodedOnceArray.of(Array(np.arange(4.0)))
    back = Array.inflate(twin.deflate(), children=twin.children)
    assert type(back) is Array and back == twin


def test_each_client_copy_is_private_and_arrays_are_shared() -> None:
    content = RecordDict(
        {
            "arrays": ArrayRecord({"w": Array(np.zeros(3))}),
            "config": ConfigRecord({"lr": 0.1, "ids": [1, 2]}),
        }
    )
    a, b = for_client(content), for_client(content)
    a["config"]["lr"] = 5.0
    a["config"]["ids"].append(3)  # type: ignore[union-attr]
    del a["arrays"]["w"]
    assert b["config"]["lr"] == 0.1 and b["config"]["ids"] == [1, 2]
    assert "w" in b["arrays"] and "w" in content["arrays"]
    assert isinstance(b["arrays"]["w"], DecodedOnceArray)
    reply = for_server(RecordDict({"arrays": ArrayRecord({"w": Array(np.ones(2))})}))
    assert isinstance(reply["arrays"]["w"], DecodedOnceArray)
