"""Aggregation kernels: a streaming weighted mean and update norms.

Pure numpy, no Flower: the strategies and the reply guard call these.

:class:`StreamingMean` folds updates in one at a time, so its memory is one
accumulator the size of the model plus one scratch buffer (at most ``MEAN_BLOCK``
elements, never more than the largest array), whatever the number of updates. Each
``add`` is ``scratch = x * w; acc += scratch``: two in-place ufunc passes over
preallocated buffers, no temporary allocated per update. The rounding is that of the
plain ``acc += w * x`` (the product rounded to the accumulator's dtype, then added), so
the block size never changes a bit of the result.

Why the blocks are large (measured with ``bench/aggregation.py``, 100 × 1M float32): at
64 Ki elements a block, two ufunc calls per block cost more than the cache locality
saves (the accumulator is re-read from memory for every update anyway), 2.2 G params/s
against 2.7 G/s for whole-array passes. A fresh temporary per update (Flower's
``acc += x * w``) costs page faults once arrays pass glibc's mmap threshold. A
single-pass BLAS ``saxpy`` is faster still (4.2 G/s) but fuses the multiply-add, which
changes the last bits of the result; the mean stays bit-for-bit what it was.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np
from numpy.typing import NDArray

BLOCK = 1 << 16  # elements per block of update_norm's float64 sums (fixes their order)
MEAN_BLOCK = 1 << 20  # largest scratch of StreamingMean: 4 MiB of float32


def accumulate_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype a mean of ``dtype`` arrays is accumulated in (float32 at least)."""
    return np.result_type(dtype, np.float32)


def fused_axpy(acc: NDArray, x: NDArray, alpha: float, scratch: NDArray) -> None:
    """``acc += alpha * x`` in place, through ``scratch`` (1-D, any length >= 1): one
    multiply and one add per ``len(scratch)`` elements, no allocation."""
    a, v = acc.reshape(-1), x.reshape(-1)
    if a.shape != v.shape:
        raise ValueError(f"shape mismatch: accumulator {acc.shape}, update {x.shape}")
    w = a.dtype.type(alpha)
    size, block = a.shape[0], scratch.shape[0]
    if size <= block:  # the common case: one pass each, no slicing
        s = scratch[:size]
        np.multiply(v, w, out=s, casting="unsafe")
        np.add(a, s, out=a)
        return
    for i in range(0, size, block):
        j = min(i + block, size)
        s = scratch[: j - i]
        np.multiply(v[i:j], w, out=s, casting="unsafe")
        np.add(a[i:j], s, out=a[i:j])


class StreamingMean:
    """Weighted mean of named parameter sets that arrive one at a time.

    ``add(arrays, weight)`` folds one update in; ``result()`` returns
    ``Σ wᵢ xᵢ / Σ wᵢ`` in each array's original dtype. Memory: one accumulator per
    array plus one scratch buffer per accumulation dtype of at most ``block`` elements
    (and no larger than the largest array) — O(model size), independent of the number
    of updates. Weights must be finite and >= 0 with a positive total.
    """

    def __init__(self, *, block: int = MEAN_BLOCK) -> None:
        if block < 1:
            raise ValueError("block must be >= 1 element")
        self._block = block
        self._acc: dict[str, NDArray] = {}
        self._dtypes: dict[str, np.dtype] = {}
        self._scratch: dict[np.dtype, NDArray] = {}
        self.total_weight = 0.0
        self.count = 0

    def add(self, arrays: Mapping[str, NDArray], weight: float) -> None:
        """Fold one update in with ``weight`` (e.g. its number of examples)."""
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"weight must be a finite number >= 0, got {weight!r}")
        if self.count and set(arrays) != set(self._acc):
            raise ValueError("every update must carry the same array names")
        for name, x in arrays.items():
            acc = self._acc.get(name)
            if acc is None:
                acc = np.zeros(x.shape, dtype=accumulate_dtype(x.dtype))
                self._acc[name] = acc
                self._dtypes[name] = x.dtype
            elif acc.shape != x.shape:
                raise ValueError(f"array {name!r}: shape {x.shape} differs from {acc.shape}")
            fused_axpy(acc, x, weight, self._scratch_for(acc.dtype, acc.size))
        self.total_weight += weight
        self.count += 1

    def _scratch_for(self, dtype: np.dtype, size: int) -> NDArray:
        """The scratch of ``dtype``, grown (once per size) to ``min(size, block)``."""
        want = max(1, min(size, self._block))
        scratch = self._scratch.get(dtype)
        if scratch is None or scratch.shape[0] < want:
            scratch = np.empty(want, dtype=dtype)
            self._scratch[dtype] = scratch
        return scratch

    def weighted_sum(self) -> dict[str, NDArray]:
        """``Σ wᵢ xᵢ`` in the accumulation dtype (the accumulators themselves)."""
        return self._acc

    def result(self) -> dict[str, NDArray]:
        """``Σ wᵢ xᵢ / Σ wᵢ``; consumes the accumulators (scaled in place) and frees the
        scratch, so the caller can encode the result in its place."""
        if self.count == 0:
            raise ValueError("no update was added")
        if self.total_weight <= 0:
            raise ValueError("the weights sum to zero; at least one must be positive")
        self._scratch.clear()
        out: dict[str, NDArray] = {}
        for name, acc in self._acc.items():
            acc *= acc.dtype.type(1.0 / self.total_weight)
            out[name] = _cast_back(acc, self._dtypes[name])
        return out


def _cast_back(acc: NDArray, dtype: np.dtype) -> NDArray:
    if np.issubdtype(dtype, np.integer):
        return np.rint(acc).astype(dtype)
    return acc.astype(dtype, copy=False)


def weighted_mean(
    updates: Iterable[tuple[Mapping[str, NDArray], float]], *, block: int = MEAN_BLOCK
) -> dict[str, NDArray]:
    """The weighted mean of ``(arrays, weight)`` pairs, streamed (O(model) memory)."""
    mean = StreamingMean(block=block)
    for arrays, weight in updates:
        mean.add(arrays, weight)
    return mean.result()


def update_norm(
    update: Mapping[str, NDArray], base: Mapping[str, NDArray], *, block: int = BLOCK
) -> float:
    """L2 norm of ``update - base`` over all arrays; ``nan`` if any entry of the
    difference is not finite. Raises ``ValueError`` if names or shapes differ."""
    if set(update) != set(base):
        raise ValueError("update and base carry different array names")
    total = 0.0
    for name, x in update.items():
        b = base[name]
        if x.shape != b.shape:
            raise ValueError(f"array {name!r}: shape {x.shape} differs from {b.shape}")
        xv, bv = x.reshape(-1), b.reshape(-1)
        scratch = np.empty(min(block, max(1, xv.shape[0])), dtype=np.float64)
        for i in range(0, xv.shape[0], block):
            j = min(i + block, xv.shape[0])
            s = scratch[: j - i]
            np.subtract(xv[i:j], bv[i:j], out=s, dtype=np.float64)
            if not np.isfinite(s).all():
                return math.nan
            total += float(np.dot(s, s))
    return math.sqrt(total)
