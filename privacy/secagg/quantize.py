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


def encode_input(
    update: np.ndarray, *, weight: int, params: SecAggParams, extra: Sequence[int] = ()
) -> np.ndarray:
    """Clip, quantize and weight ``update`` (float, flat) into a ring vector.

    Non-finite coordinates are refused: a NaN would silently poison the sum.
    ``weight`` is clamped to [0, max_weight] so no client can overflow the modulus.
    """
    if update.ndim != 1:
        raise ValueError("encode_input expects a flat update vector")
    if not np.all(np.isfinite(update)):
        raise ValueError("the update has non-finite values; secure aggregation refuses it")
    w = int(min(max(weight, 0), params.max_weight))
    qmax = 2 ** (params.bits - 1) - 1
    d = update.size
    n_clipped = int(np.count_nonzero(np.abs(update) > params.clip))
    scaled = np.multiply(update, params.scale, dtype=np.float64)
    np.clip(scaled, -qmax, qmax, out=scaled)
    np.rint(scaled, out=scaled)
    ring = np.empty(input_length(d, len(extra)), dtype=ring_dtype(params.modulus_bits))
    signed = ring.view(np.int32 if params.modulus_bits == 32 else np.int64)
    if w * qmax < 2**53:  # w·q is exact in float64: one pass fewer
        if w != 1:
            np.multiply(scaled, w, out=scaled)
        signed[:d] = scaled
    else:
        q = scaled.astype(np.int64)
        q *= w
        signed[:d] = q
    if extra:
        signed[d:-EXTRA_COORDS] = [min(max(int(e), 0), params.max_weight) for e in extra]
    signed[-2] = w
    signed[-1] = round(CLIP_FRACTION_SCALE * n_clipped / max(d, 1))
    return ring


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
