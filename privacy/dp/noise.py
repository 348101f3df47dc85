"""Gaussian noise from a cryptographic stream.

DP noise must be unpredictable to whoever sees the noisy result. NumPy's and torch's
generators are fine statistically but their state can be reconstructed, and a seed the
coordinator knows (the run seed) would let it subtract the noise. Here the uniforms come
from a ChaCha20 keystream (``cryptography``) under a fresh ``os.urandom`` key and become
normals by the Box–Muller transform.

Caveat (Mironov, "On Significance of the Least Significant Bits for Differential
Privacy", CCS 2012): floating-point Gaussian samples are not an exact implementation of
the continuous mechanism; like Opacus without ``secure_mode``, fedfleet accepts that gap.
"""

from __future__ import annotations

import math
import os

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

_KEY_BYTES = 32
_NONCE_BYTES = 16


def _keystream(nbytes: int, key: bytes) -> bytes:
    nonce = b"\x00" * _NONCE_BYTES  # a fresh key per call: a fixed nonce is safe
    encryptor = Cipher(algorithms.ChaCha20(key, nonce), mode=None).encryptor()
    return encryptor.update(b"\x00" * nbytes)


def secure_uniform(n: int, *, key: bytes | None = None) -> np.ndarray:
    """``n`` float64 uniforms in the open interval (0, 1), 53 random bits each.

    ``key`` (32 bytes) makes the stream reproducible — for tests only; by default a
    fresh key from ``os.urandom`` is used and discarded.
    """
    if n < 0:
        raise ValueError(f"n={n} must be >= 0")
    if key is None:
        key = os.urandom(_KEY_BYTES)
    if len(key) != _KEY_BYTES:
        raise ValueError(f"key must be {_KEY_BYTES} bytes, got {len(key)}")
    words = np.frombuffer(_keystream(8 * n, key), dtype=np.uint64)
    return ((words >> np.uint64(11)).astype(np.float64) + 0.5) * (2.0**-53)


def secure_gaussian(
    shape: int | tuple[int, ...], *, std: float, key: bytes | None = None
) -> np.ndarray:
    """Samples of N(0, std²) (float64) of ``shape``, from a ChaCha20 keystream."""
    if not std >= 0 or not math.isfinite(std):
        raise ValueError(f"noise standard deviation {std} must be a finite number >= 0")
    size = int(np.prod(shape))
    if std == 0.0 or size == 0:
        return np.zeros(shape)
    pairs = (size + 1) // 2
    u = secure_uniform(2 * pairs, key=key)
    radius = np.sqrt(-2.0 * np.log(u[:pairs]))
    angle = 2.0 * math.pi * u[pairs:]
    z = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:size]
    return (std * z).reshape(shape)
