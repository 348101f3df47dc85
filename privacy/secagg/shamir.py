"""Shamir secret sharing of 32-byte secrets over the prime field GF(2^521 − 1).

Shamir, "How to share a secret", CACM 1979. A secret s is the constant term of a
random polynomial f of degree T−1 (coefficients from ``secrets``); holder x gets f(x).
Any T shares determine s by Lagrange interpolation at 0; any T−1 shares are
consistent with every possible s (perfect secrecy). The field is the Mersenne prime
2^521 − 1, larger than any 256-bit secret, so a secret is one field element.
Evaluation points are public, distinct and non-zero (the protocol uses node id + 1).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence

PRIME = 2**521 - 1
SHARE_BYTES = 66
"""Bytes of one encoded share value (521 bits)."""


def split_secret(secret: bytes, *, xs: Sequence[int], threshold: int) -> list[int]:
    """Shares f(x) of ``secret`` for each evaluation point in ``xs``.

    ``threshold`` T shares reconstruct; fewer reveal nothing. Refuses T < 2, T > len(xs),
    repeated or zero points, and secrets that are not shorter than the field.
    """
    if not 2 <= threshold <= len(xs):
        raise ValueError(f"threshold {threshold} must be in [2, {len(xs)}] (the holders)")
    if len(set(x % PRIME for x in xs)) != len(xs) or any(x % PRIME == 0 for x in xs):
        raise ValueError("evaluation points must be distinct and non-zero")
    if len(secret) > 64:
        raise ValueError("secrets longer than 64 bytes do not fit the field")
    s = int.from_bytes(secret, "big")
    coeffs = [s] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    return [_evaluate(coeffs, x % PRIME) for x in xs]


def reconstruct_secret(shares: Mapping[int, int], *, threshold: int, length: int = 32) -> bytes:
    """The secret from at least ``threshold`` shares {x: f(x)}; uses the first T.

    Fewer than T shares are refused (interpolating them would give a value that is
    unrelated to the secret). A result that does not fit ``length`` bytes means the
    shares were inconsistent (tampered or mixed) and is refused too.
    """
    if len(shares) < threshold:
        raise ValueError(f"{len(shares)} shares are below the threshold {threshold}")
    points = list(shares.items())[:threshold]
    value = interpolate_at_zero(points)
    if value >= 1 << (8 * length):
        raise ValueError("the shares are inconsistent: they do not encode a secret")
    return value.to_bytes(length, "big")


def interpolate_at_zero(points: Sequence[tuple[int, int]]) -> int:
    """Lagrange interpolation at 0 of the polynomial through ``points`` (mod PRIME)."""
    xs = [x % PRIME for x, _ in points]
    if len(set(xs)) != len(xs):
        raise ValueError("shares with repeated evaluation points")
    total = 0
    for i, (xi, (_, yi)) in enumerate(zip(xs, points, strict=True)):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        total = (total + yi * num * pow(den, -1, PRIME)) % PRIME
    return total


def encode_share(value: int) -> bytes:
    """A share value as fixed-size bytes."""
    if not 0 <= value < PRIME:
        raise ValueError("share value outside the field")
    return value.to_bytes(SHARE_BYTES, "big")


def decode_share(data: bytes) -> int:
    """Inverse of :func:`encode_share`, refusing malformed input."""
    if len(data) != SHARE_BYTES:
        raise ValueError(f"a share is {SHARE_BYTES} bytes, got {len(data)}")
    value = int.from_bytes(data, "big")
    if value >= PRIME:
        raise ValueError("share value outside the field")
    return value


def _evaluate(coeffs: Sequence[int], x: int) -> int:
    """f(x) by Horner's rule, coefficients from the constant term up."""
    acc = 0
    for c in reversed(coeffs):
        acc = (acc * x + c) % PRIME
    return acc
