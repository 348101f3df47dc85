"""Mask expansion: a 32-byte key → a vector of uniform elements of Z_(2^M).

The pseudo-random generator is the ChaCha20 keystream (RFC 8439, via ``cryptography``
/ OpenSSL), read as little-endian uint32/uint64 words: a uniform word per coordinate,
so the mask is uniform in Z_(2^M) for M = 32 or 64. ChaCha20 runs at gigabytes per
second on x86 (AVX2/AVX-512) and on ARM boards without AES instructions (Raspberry
Pi 4), which is why it is preferred here to AES-CTR. The keystream is written
straight into a numpy buffer (no Python-level loop, no copy) and added to or
subtracted from the input with numpy's wrapping unsigned arithmetic.

Every key is used for exactly one stream (keys are derived per round and per pair),
so a fixed all-zero nonce is safe.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from privacy.secagg.keys import KEY_BYTES

_NONCE = bytes(16)  # 32-bit block counter 0 ‖ 96-bit nonce 0; one stream per key
_zeros_cache: dict[int, bytes] = {}


def _zeros(nbytes: int) -> bytes:
    """A shared read-only buffer of zeros (the plaintext whose encryption is the stream)."""
    buf = _zeros_cache.get(nbytes)
    if buf is None:
        if len(_zeros_cache) >= 4:
            _zeros_cache.clear()
        buf = _zeros_cache[nbytes] = bytes(nbytes)
    return buf


def keystream_into(key: bytes, out: np.ndarray) -> np.ndarray:
    """Fill the contiguous unsigned array ``out`` with the keystream of ``key``."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"a mask key is {KEY_BYTES} bytes, got {len(key)}")
    if not out.flags.c_contiguous or out.dtype.kind != "u":
        raise ValueError("out must be a contiguous unsigned integer array")
    encryptor = Cipher(algorithms.ChaCha20(key, _NONCE), mode=None).encryptor()
    view = memoryview(out).cast("B")  # type: ignore[arg-type]
    encryptor.update_into(_zeros(out.nbytes), view)
    return out


def keystream(key: bytes, length: int, dtype: type[np.unsignedinteger]) -> np.ndarray:
    """A new array of ``length`` pseudo-random elements of ``dtype`` expanded from ``key``."""
    return keystream_into(key, np.empty(length, dtype=dtype))


def apply_masks(
    acc: np.ndarray, terms: Iterable[tuple[bytes, int]], *, scratch: np.ndarray | None = None
) -> np.ndarray:
    """In place: acc += sign · PRG(key) for each (key, sign) with sign ±1, mod 2^M.

    ``scratch`` (same shape and dtype as ``acc``) avoids one allocation per call.
    """
    if scratch is None or scratch.shape != acc.shape or scratch.dtype != acc.dtype:
        scratch = np.empty_like(acc)
    for key, sign in terms:
        keystream_into(key, scratch)
        if sign > 0:
            np.add(acc, scratch, out=acc)
        elif sign < 0:
            np.subtract(acc, scratch, out=acc)
        else:
            raise ValueError("mask sign must be +1 or -1")
    return acc
