"""The in-process transport: private copies for clients, arrays decoded once."""

from __future__ import annotations

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


def test_a_truncated_array_raises_flowers_own_error() -> None:
    data = Array(np.arange(10, dtype=np.float32)).data
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
