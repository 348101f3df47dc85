"""Mask expansion: a 32-byte key → a vector of uniform elements of Z_(2^M).

The pseudo-random generator is a stream cipher's keystream (via ``cryptography`` /
OpenSSL) read as little-endian uint32/uint64 words — a uniform word per coordinate, so
the mask is uniform in Z_(2^M) for M = 32 or 64:

- ``aes128-ctr`` (default): AES-128 in counter mode, keyed with the first 16 bytes of
  the derived key. With AES instructions (x86 AES-NI/VAES, ARMv8 crypto extensions:
  Jetson Orin, Raspberry Pi 5) it is the fastest (3.6 GB/s against 2.2 GB/s for
  ChaCha20 on the benchmark machine).
- ``chacha20`` (RFC 8439): for clients without AES instructions (Raspberry Pi 4), where
  it is several times faster than software AES.

The keystream is written straight into numpy buffers (no Python-level loop over
elements). :func:`apply_masks` walks the vector in cache-sized chunks and, within each
chunk, adds every mask in turn, so a mask never makes a round trip through main
memory: one pass over the input instead of two per mask.

Every key is used for exactly one stream (keys are derived per round and per pair),
so a fixed all-zero nonce / initial counter is safe.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, get_args

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

from privacy.secagg.keys import KEY_BYTES

Prg = Literal["aes128-ctr", "chacha20"]
PRGS: tuple[str, ...] = get_args(Prg)
DEFAULT_PRG: Prg = "aes128-ctr"

CHUNK_BYTES = 128 * 1024  # fits a core's L2 cache together with the input chunk
_NONCE = bytes(16)
_zeros_cache: dict[int, bytes] = {}


def _zeros(nbytes: int) -> memoryview:
    """A shared read-only buffer of zeros (the plaintext whose encryption is the stream)."""
    buf = _zeros_cache.get(nbytes)
    if buf is None:
        if len(_zeros_cache) >= 4:
            _zeros_cache.clear()
        buf = _zeros_cache[nbytes] = bytes(nbytes)
    return memoryview(buf)


def stream(key: bytes, prg: str = DEFAULT_PRG) -> CipherContext:
    """A keystream generator for ``key``: encrypting zeros yields the stream."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"a mask key is {KEY_BYTES} bytes, got {len(key)}")
    if prg == "aes128-ctr":
        return Cipher(algorithms.AES(key[:16]), modes.CTR(_NONCE)).encryptor()
    if prg == "chacha20":
        return Cipher(algorithms.ChaCha20(key, _NONCE), mode=None).encryptor()
    raise ValueError(f"unknown mask generator {prg!r}; choose one of {', '.join(PRGS)}")


def _bytes_of(out: np.ndarray) -> memoryview:
    if not out.flags.c_contiguous or out.dtype.kind != "u":
        raise ValueError("out must be a contiguous unsigned integer array")
    return memoryview(out).cast("B")  # type: ignore[arg-type]


def keystream_into(key: bytes, out: np.ndarray, *, prg: str = DEFAULT_PRG) -> np.ndarray:
    """Fill the contiguous unsigned array ``out`` with the keystream of ``key``."""
    view = _bytes_of(out)
    stream(key, prg).update_into(_zeros(out.nbytes), view)
    return out


def keystream(
    key: bytes, length: int, dtype: type[np.unsignedinteger], *, prg: str = DEFAULT_PRG
) -> np.ndarray:
    """A new array of ``length`` pseudo-random elements of ``dtype`` expanded from ``key``."""
    return keystream_into(key, np.empty(length, dtype=dtype), prg=prg)


def apply_masks(
    acc: np.ndarray,
    terms: Iterable[tuple[bytes, int]],
    *,
    prg: str = DEFAULT_PRG,
    chunk_bytes: int = CHUNK_BYTES,
) -> np.ndarray:
    """In place: acc += sign · PRG(key) for each (key, sign) with sign ±1, mod 2^M."""
    _bytes_of(acc)
    generators = []
    for key, sign in terms:
        if sign not in (1, -1):
            raise ValueError("mask sign must be +1 or -1")
        generators.append((stream(key, prg), sign))
    if not generators or acc.size == 0:
        return acc
    step = max(1, chunk_bytes // acc.itemsize)
    scratch = np.empty(min(step, acc.size), dtype=acc.dtype)
    zeros = _zeros(scratch.nbytes)
    for start in range(0, acc.size, step):
        part = acc[start : start + step]
        mask = scratch[: part.size]
        view, plain = memoryview(mask).cast("B"), zeros[: mask.nbytes]  # type: ignore[arg-type]
        for generator, sign in generators:
            generator.update_into(plain, view)
            if sign > 0:
                np.add(part, mask, out=part)
            else:
                np.subtract(part, mask, out=part)
    return acc
