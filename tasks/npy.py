"""Flower's array wire format (``.npy`` bytes), encoded and decoded without the
per-array header work.

Flower's ``Array`` carries each array as the bytes ``np.save`` writes: a header (magic,
version, a Python-literal dict of dtype, order and shape) and the raw data.
``np.save`` formats that header and ``np.load`` parses it with ``ast.literal_eval`` for
every array, which for a small model's layers costs more than the data itself; and
``np.load`` copies the data out of the bytes. A model's layers repeat the same few
headers round after round, so here each distinct header is built or parsed once and
cached:

- :func:`encode_npy` is ``np.save``'s bytes, byte for byte (:func:`npy_array` the
  ``Array`` that carries them);
- :func:`decode_npy` is ``np.load(BytesIO(data), allow_pickle=False)`` as a read-only
  view of the bytes (no copy);
- :func:`array_view` is ``Array.numpy()`` as such a view.

Anything unusual (non-contiguous arrays, object dtypes, version 3 headers, truncated
data) goes through numpy's own ``save``/``load``, errors included. No torch here, so the
strategies can decode updates without importing it.
"""

from __future__ import annotations

import math
from io import BytesIO
from typing import Any

import numpy as np
from flwr.app import Array
from flwr.common.constant import SType
from numpy.typing import NDArray

_MAX_CACHED = 4096
# (dtype, shape) → the header np.save writes for a C-ordered array of them.
_WRITTEN: dict[tuple[str, tuple[int, ...]], bytes] = {}
# A header as read → (data offset, dtype, Fortran order, shape).
_READ: dict[bytes, tuple[int, np.dtype[Any], bool, tuple[int, ...]]] = {}


def encode_npy(array: NDArray[Any]) -> bytes:
    """The bytes ``np.save(buffer, array, allow_pickle=False)`` writes."""
    if array.dtype.kind not in "biufc" or not array.flags.c_contiguous:
        return _np_save(array)  # Fortran order, records, objects...: numpy decides
    key = (array.dtype.str, tuple(array.shape))
    header = _WRITTEN.get(key)
    if header is None:
        # np.save writes a C-contiguous array as its header, then array.tobytes().
        saved = _np_save(array)
        header = saved[: len(saved) - array.nbytes]
        if len(_WRITTEN) >= _MAX_CACHED:
            _WRITTEN.clear()
        _WRITTEN[key] = header
    if array.size == 0:
        return header
    data = memoryview(array.reshape(-1)).cast("B")  # type: ignore[arg-type]
    return b"".join((header, data))  # one copy of the data


def npy_array(array: NDArray[Any]) -> Array:
    """``Array(array)``: the same ``.npy`` bytes, built by :func:`encode_npy`."""
    return Array(
        dtype=str(array.dtype), shape=tuple(array.shape), stype=SType.NUMPY, data=encode_npy(array)
    )


def _np_save(array: NDArray[Any]) -> bytes:
    buffer = BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def decode_npy(data: bytes) -> NDArray[Any] | None:
    """``np.load(BytesIO(data), allow_pickle=False)`` as a read-only view of ``data``,
    parsing each distinct header once; ``None`` for anything but a version 1 or 2
    ``.npy`` of a plain dtype (the caller falls back to ``np.load``)."""
    if data[:6] != b"\x93NUMPY" or len(data) < 10:
        return None
    major = data[6]
    if major == 1:
        start = 10 + int.from_bytes(data[8:10], "little")
    elif major == 2 and len(data) >= 12:
        start = 12 + int.from_bytes(data[8:12], "little")
    else:
        return None
    header = data[:start]
    parsed = _READ.get(header)
    if parsed is None:
        stream = BytesIO(header)
        np.lib.format.read_magic(stream)
        reader = (
            np.lib.format.read_array_header_1_0
            if major == 1
            else np.lib.format.read_array_header_2_0
        )
        try:
            shape, fortran, dtype = reader(stream)
        except ValueError:
            return None
        if dtype.hasobject:
            return None
        if len(_READ) >= _MAX_CACHED:
            _READ.clear()
        parsed = _READ[header] = (start, dtype, fortran, tuple(shape))
    start, dtype, fortran, shape = parsed
    count = math.prod(shape)
    if len(data) - start < count * dtype.itemsize:
        return None  # truncated: np.load raises the error
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=start)
    if fortran:
        return flat.reshape(shape[::-1]).transpose()
    return flat.reshape(shape)


def array_view(array: Array) -> NDArray[Any]:
    """``array.numpy()`` without the copy: a read-only view of its bytes when they are a
    plain ``.npy``, else Flower's own decoding (and its errors)."""
    view = decode_npy(array.data) if array.stype == SType.NUMPY else None
    return array.numpy() if view is None else view
