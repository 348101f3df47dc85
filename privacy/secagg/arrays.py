"""Model weights ↔ one flat vector, in a fixed order both ends agree on.

The order is the key order of the global model's ``ArrayRecord`` that the coordinator
sends; clients flatten their trained weights in that same order, the coordinator adds
the recovered mean update back in that order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord

from tasks.npy import array_view


@dataclass(frozen=True)
class MaskInput:
    """A client's contribution just before it is clipped, quantized and masked.

    ``update`` is the flat float64 update (trained weights minus the global model),
    ``weight`` the client's integer weight (num-examples), ``clip`` the per-coordinate
    clipping bound R of the round and ``participants`` the number of clients the round
    started with. Pre-mask transforms (e.g. a distributed-DP noise share) map one
    MaskInput to another.
    """

    update: np.ndarray
    weight: int
    clip: float
    participants: int


def layout(record: ArrayRecord) -> list[tuple[str, tuple[int, ...], np.dtype]]:
    """(key, shape, dtype) of each array, in record order."""
    out = []
    for key in record:
        arr = record[key].numpy()
        out.append((key, tuple(arr.shape), arr.dtype))
    return out


def flatten(record: ArrayRecord, *, keys: Sequence[str] | None = None) -> np.ndarray:
    """All arrays of ``record`` (in ``keys`` order, default record order) as float64."""
    names = list(record) if keys is None else list(keys)
    missing = [k for k in names if k not in record]
    if missing:
        raise ValueError(f"arrays {missing[:3]} are missing from the model")
    parts = [np.asarray(record[k].numpy(), dtype=np.float64).ravel() for k in names]
    return np.concatenate(parts) if parts else np.zeros(0)


def update_pairs(trained: ArrayRecord, start: ArrayRecord) -> list[tuple[np.ndarray, np.ndarray]]:
    """(trained, start) flat read-only views of each array, in ``start``'s key order;
    ``trained − start`` is the update (see :func:`update_between`). Shapes must match."""
    pairs = []
    for key in start:
        if key not in trained or trained[key].shape != start[key].shape:
            raise ValueError(f"trained model does not match the global model at {key!r}")
        # read-only views of the arrays' bytes: no decoding copies
        pairs.append((array_view(trained[key]).ravel(), array_view(start[key]).ravel()))
    return pairs


def update_between(trained: ArrayRecord, start: ArrayRecord) -> np.ndarray:
    """trained − start, flat float64, in ``start``'s key order; shapes must match."""
    return difference(update_pairs(trained, start))


def difference(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """concatenate([a − b for a, b in pairs]), each difference in float64."""
    out = np.empty(sum(a.size for a, _ in pairs), dtype=np.float64)
    offset = 0
    for a, b in pairs:
        piece = out[offset : offset + a.size]
        np.subtract(a, b, out=piece, dtype=np.float64)  # in float64, as before
        offset += a.size
    return out


def apply_update(start: ArrayRecord, update: np.ndarray) -> ArrayRecord:
    """start + update as a new ArrayRecord with start's keys, shapes and dtypes."""
    out: dict[str, Array] = {}
    offset = 0
    for key in start:
        arr = start[key].numpy()
        size = arr.size
        piece = update[offset : offset + size].reshape(arr.shape)
        new = arr.astype(np.float64) + piece
        if np.issubdtype(arr.dtype, np.integer):
            new = np.rint(new)
        out[key] = Array(np.ascontiguousarray(new.astype(arr.dtype)))
        offset += size
    if offset != update.size:
        raise ValueError(f"update has {update.size} numbers, the model {offset}")
    return ArrayRecord(out)


def num_params(record: ArrayRecord) -> int:
    """Total count of numbers in ``record``."""
    return int(sum(int(np.prod(record[k].shape)) for k in record))
