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

Where it is faster, the AES-128-CTR stream is computed by OpenSSL's AES-GCM code
(:class:`_CtrByGcm`): GCM encrypts with AES in counter mode, and on CPUs with VAES and
VPCLMULQDQ (AVX-512) OpenSSL runs GCM's counter mode about 1.7× faster than its plain
CTR code. With a 96-bit all-zero IV, GCM's keystream is exactly the CTR keystream
from counter block 2 on, so the first 32 bytes come from CTR and the rest from GCM;
the GCM tag is never computed. The bytes are the same either way (a test checks it
against plain CTR); which code runs is measured once per process
(:func:`gcm_engine_is_faster`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable
from typing import Literal, Protocol, get_args

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

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


class Keystream(Protocol):
    """What :func:`stream` returns: ``update_into(zeros, out)`` writes the next
    ``len(zeros)`` bytes of the keystream into ``out``."""

    def update_into(self, data: bytes | memoryview, buf: memoryview) -> int: ...


_GCM_SKIP = 32
"""Bytes of the CTR stream before GCM's first keystream block (counter blocks 0 and 1)."""
_GCM_MAX_BYTES = (2**32 - 2) * 16
"""GCM's 32-bit block counter wraps after this many bytes; CTR's 128-bit one carries."""


class _CtrByGcm:
    """AES-128-CTR from counter 0 (IV = 0^128), bytes 32 onward by OpenSSL's GCM code.

    GCM with a 96-bit IV N encrypts block i of the message with AES_k(N ‖ i + 2);
    with N = 0^96 that is block i + 2 of the CTR stream. Only ``update_into`` runs:
    no tag is finalized, and GCM here is nothing but a faster counter-mode engine.
    Once the first 32 bytes are out, ``update_into`` is the GCM context's own method
    (no Python in between for the rest of the stream).
    """

    def __init__(self, key16: bytes) -> None:
        self._key = key16
        self._head = Cipher(algorithms.AES(key16), modes.CTR(_NONCE)).encryptor()
        self._pos = 0

    def update_into(self, data: bytes | memoryview, buf: memoryview) -> int:
        n = len(data)
        done = min(_GCM_SKIP - self._pos, n)
        self._head.update_into(data[:done], buf[:done])
        self._pos += done
        if self._pos < _GCM_SKIP:
            return n
        body = Cipher(algorithms.AES(self._key), modes.GCM(_NONCE[:12])).encryptor()
        self.update_into = body.update_into  # type: ignore[method-assign]
        if done < n:
            body.update_into(data[done:], buf[done:n])
        return n


def _aes_ctr(key16: bytes, *, gcm: bool) -> Keystream:
    if gcm:
        return _CtrByGcm(key16)
    return Cipher(algorithms.AES(key16), modes.CTR(_NONCE)).encryptor()


@functools.cache
def gcm_engine_is_faster() -> bool:
    """Whether OpenSSL's GCM code makes the AES-128-CTR stream faster than its CTR code
    on this machine, the way :func:`apply_masks` uses it (chunks of ``CHUNK_BYTES``
    into one cache-resident buffer). Measured once per process, ~2 ms: best of five
    1 MiB streams each, after a warm-up."""
    zeros = _zeros(CHUNK_BYTES)
    out = memoryview(bytearray(CHUNK_BYTES))
    best = {}
    for gcm in (False, True, False, True):
        times = []
        for _ in range(5):
            engine = _aes_ctr(bytes(16), gcm=gcm)
            t0 = time.perf_counter()
            for _ in range(8):
                engine.update_into(zeros, out)
            times.append(time.perf_counter() - t0)
        best[gcm] = min(times)  # the second pass of each (after warming both up)
    return best[True] < best[False]


def stream(key: bytes, prg: str = DEFAULT_PRG, *, length: int | None = None) -> Keystream:
    """A keystream generator for ``key``: encrypting zeros yields the stream.

    ``length`` (bytes, when known) lets an AES stream use the faster engine; the
    stream is the same either way.
    """
    if len(key) != KEY_BYTES:
        raise ValueError(f"a mask key is {KEY_BYTES} bytes, got {len(key)}")
    if prg == "aes128-ctr":
        fits = length is not None and length <= _GCM_MAX_BYTES
        return _aes_ctr(key[:16], gcm=fits and gcm_engine_is_faster())
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
    stream(key, prg, length=out.nbytes).update_into(_zeros(out.nbytes), view)
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
        generators.append((stream(key, prg, length=acc.nbytes), sign))
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
