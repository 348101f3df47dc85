"""Fixed-point encoding of weighted updates into Z_(2^M), and back.

A client's input is the vector [w·q_1, …, w·q_d, w, c] where q = round(clip(u, −R, R)·s)
is its update quantized with s = (2^(B−1)−1)/R levels per unit, w its integer weight
(num-examples, at most ``max_weight``) and c its fraction of clipped coordinates in
1/65535 units. All arithmetic is integer, so the decoded sum of the inputs is exact and
the only error of the recovered weighted mean Σ w·q / (Σw · s) is rounding:
at most half a step, R/(2^B − 2), per coordinate.

Optionally, ``extra`` non-negative integers (a fairness audit's per-group confusion
counts) travel between the update and ``w``: [w·q_1, …, w·q_d, e_1, …, e_m, w, c]. Each
is clamped to [0, max_weight] like ``w``, so the modulus sized for the weight coordinate
holds their sum too; the server learns only Σ e_j over the survivors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from privacy.secagg.config import CLIP_FRACTION_SCALE, SecAggParams

EXTRA_COORDS = 2
"""Coordinates after the update: the weight and the clipped fraction."""


def ring_dtype(modulus_bits: int) -> type[np.unsignedinteger]:
    """The unsigned numpy type whose wrap-around arithmetic is Z_(2^M)."""
    if modulus_bits == 32:
        return np.uint32
    if modulus_bits == 64:
        return np.uint64
    raise ValueError(f"modulus of {modulus_bits} bits is not supported; use 32 or 64")


def input_length(num_params: int, extra: int = 0) -> int:
    """Length of a client's ring vector for a model of ``num_params`` numbers and
    ``extra`` summed integers."""
    return num_params + extra + EXTRA_COORDS


BLOCK = 1 << 15
"""Coordinates quantized at a time: a block (256 KiB of float64) stays in cache while it
is checked, scaled, clipped, rounded and weighted, so the update is read from memory
once and the ring written once."""


def encode_input(
    update: np.ndarray,
    *,
    weight: int,
    params: SecAggParams,
    out: np.ndarray | None = None,
    extra: Sequence[int] = (),
) -> np.ndarray:
    """Clip, quantize and weight ``update`` (float, flat) into a ring vector.

    Non-finite coordinates are refused: a NaN would silently poison the sum.
    ``weight`` is clamped to [0, max_weight] so no client can overflow the modulus.
    ``out`` (optional): a buffer of the ring's dtype and length to write into and
    return (a reused buffer costs no fresh pages of memory). ``extra``: summed integers
    carried after the update (see the module's docstring).
    """
    if update.ndim != 1:
        raise ValueError("encode_input expects a flat update vector")
    return _encode([(update, None)], weight=weight, params=params, out=out, extra=extra)


def encode_difference(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    weight: int,
    params: SecAggParams,
    out: np.ndarray | None = None,
    extra: Sequence[int] = (),
) -> np.ndarray:
    """:func:`encode_input` of the update ``concatenate([a − b for a, b in pairs])``
    (each difference in float64), bit for bit, without building the update: each block
    of ``a − b`` is computed into the cache-resident scratch and quantized there."""
    for a, b in pairs:
        if a.ndim != 1 or a.shape != b.shape:
            raise ValueError("encode_difference expects pairs of flat arrays of one size")
    return _encode(pairs, weight=weight, params=params, out=out, extra=extra)


def _encode(
    parts: Sequence[tuple[np.ndarray, np.ndarray | None]],
    *,
    weight: int,
    params: SecAggParams,
    out: np.ndarray | None,
    extra: Sequence[int],
) -> np.ndarray:
    """The ring vector of the update made of ``parts``: (u, None) is u itself, (a, b)
    is a − b in float64."""
    d = sum(a.size for a, _ in parts)
    dtype = ring_dtype(params.modulus_bits)
    length = input_length(d, len(extra))
    if out is None:
        ring = np.empty(length, dtype=dtype)
    elif out.dtype != dtype or out.shape != (length,) or not out.flags.c_contiguous:
        raise ValueError(f"out must be a contiguous {np.dtype(dtype)} array of {length}")
    else:
        ring = out
    w = int(min(max(weight, 0), params.max_weight))
    signed = ring.view(np.int32 if params.modulus_bits == 32 else np.int64)
    scratch = np.empty(min(BLOCK, max(d, 1)), dtype=np.float64)
    n_clipped, offset = 0, 0
    for a, b in parts:
        for start in range(0, a.size, BLOCK):
            u = a[start : start + BLOCK]
            if b is not None:
                u = np.subtract(
                    u, b[start : start + BLOCK], out=scratch[: u.size], dtype=np.float64
                )
            target = signed[offset + start : offset + start + u.size]
            n_clipped += _quantize_block(u, target, scratch, w, params)
        offset += a.size
    if extra:
        signed[d:-EXTRA_COORDS] = [min(max(int(e), 0), params.max_weight) for e in extra]
    signed[-2] = w
    signed[-1] = round(CLIP_FRACTION_SCALE * n_clipped / max(d, 1))
    return ring


def _quantize_block(
    u: np.ndarray, out: np.ndarray, scratch: np.ndarray, w: int, params: SecAggParams
) -> int:
    """out = w · rint(clip(u · s, ±qmax)) for one block; returns its clipped count."""
    # min and max (NaN propagates through both, ±inf shows in one) check finiteness
    # and tell whether anything needs clipping: one pass instead of three.
    lo, hi = float(u.min()), float(u.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("the update has non-finite values; secure aggregation refuses it")
    clipping = hi > params.clip or -lo > params.clip
    # counted before scaling: ``u`` may itself be the scratch (encode_difference)
    clipped = int(np.count_nonzero(np.abs(u) > params.clip)) if clipping else 0
    scaled = scratch[: u.size]
    np.multiply(u, params.scale, out=scaled, dtype=np.float64)
    if clipping:  # else |scaled| <= qmax up to rounding, which rint below removes
        qmax = 2 ** (params.bits - 1) - 1
        np.clip(scaled, -qmax, qmax, out=scaled)
    np.rint(scaled, out=out, casting="unsafe")  # integers, so the cast is exact
    if w != 1:
        np.multiply(out, w, out=out)  # exact: the modulus holds n · w · qmax
    return clipped


@dataclass(frozen=True)
class DecodedSum:
    """The plaintext aggregate the server learns: nothing per client.

    ``mean_update`` is Σ w·clip(u) / Σ w (float64, within ``quantization_error``),
    ``total_weight`` is Σ w, ``clipped_fraction`` the mean over clients of the fraction
    of clipped coordinates, ``extra_sums`` Σ of each extra integer.
    """

    mean_update: np.ndarray
    total_weight: int
    clipped_fraction: float
    extra_sums: tuple[int, ...] = ()


def decode_sum(
    ring_sum: np.ndarray, *, num_inputs: int, params: SecAggParams, extra: int = 0
) -> DecodedSum:
    """Interpret the unmasked sum of ``num_inputs`` ring vectors (two's complement)
    whose last ``extra`` coordinates before the weight are summed integers."""
    dtype = ring_dtype(params.modulus_bits)
    if ring_sum.dtype != dtype:
        raise ValueError(f"ring sum has dtype {ring_sum.dtype}, expected {np.dtype(dtype)}")
    signed = ring_sum.view(np.int32 if dtype is np.uint32 else np.int64)
    total_weight = int(signed[-2])
    if total_weight <= 0:
        raise ValueError("the survivors' total weight is 0; there is no update to average")
    d = len(signed) - EXTRA_COORDS - extra
    mean = signed[:d].astype(np.float64)
    mean /= total_weight * params.scale
    clipped = float(signed[-1]) / (CLIP_FRACTION_SCALE * max(num_inputs, 1))
    return DecodedSum(
        mean_update=mean,
        total_weight=total_weight,
        clipped_fraction=clipped,
        extra_sums=tuple(int(v) for v in signed[d:-EXTRA_COORDS]),
    )
