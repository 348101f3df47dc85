"""Distributed DP: each client adds its share of the Gaussian noise before masking.

Under secure aggregation the coordinator only learns the sum of the clients' vectors,
so it cannot add the DP noise itself (and, untrusted, should not). Each of the ``n``
surviving clients clips its model update to L2 norm ``C`` and adds independent noise
``N(0, (z C)² / n_min)`` per coordinate. The sum of ``n ≥ n_min`` shares is Gaussian with
variance ``n (z C)² / n_min ≥ (z C)²``, so the summed update is the Gaussian mechanism
with noise multiplier at least ``z`` on a sum of sensitivity ``C`` — the guarantee of
central DP-FedAvg (McMahan et al., "Learning Differentially Private Recurrent Language
Models", ICLR 2018) without trusting the coordinator (Kairouz, Liu, Steinke,
"The Distributed Discrete Gaussian Mechanism for Federated Learning with Secure
Aggregation", ICML 2021 — here with continuous noise before fixed-point quantization).

Assumptions, documented in ``docs/privacy.md``: at least ``n_min`` clients survive to
the unmasking stage (fewer survivors means less noise: the round must then fail, which
secure aggregation's threshold ``T ≥ n_min`` enforces); at most ``n - n_min`` clients
collude with the coordinator (colluders can subtract their own shares).

Pure functions over lists of NumPy arrays (one per model tensor).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from privacy.dp.noise import secure_gaussian


def share_std(*, noise_multiplier: float, clip: float, min_clients: int) -> float:
    """Standard deviation of one client's noise share: ``z C / sqrt(n_min)``."""
    if not noise_multiplier > 0:
        raise ValueError(f"noise multiplier {noise_multiplier} must be > 0 for distributed DP")
    if not clip > 0:
        raise ValueError(f"clipping norm {clip} must be > 0")
    if min_clients < 1:
        raise ValueError(f"minimum number of clients {min_clients} must be >= 1")
    return noise_multiplier * clip / math.sqrt(min_clients)


def global_norm(arrays: Sequence[np.ndarray]) -> float:
    """L2 norm of the concatenation of ``arrays``."""
    return math.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays))


def clip_update(update: Sequence[np.ndarray], *, clip: float) -> tuple[list[np.ndarray], float]:
    """``update`` scaled to L2 norm at most ``clip``; returns (clipped, original norm)."""
    if not clip > 0:
        raise ValueError(f"clipping norm {clip} must be > 0")
    norm = global_norm(update)
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    return [np.asarray(a, dtype=np.float64) * scale for a in update], norm


def noisy_share(
    update: Sequence[np.ndarray],
    *,
    clip: float,
    noise_multiplier: float,
    min_clients: int,
    key: bytes | None = None,
) -> tuple[list[np.ndarray], float]:
    """One client's contribution: its update clipped to ``clip`` plus its noise share.

    Returns (noisy clipped update as float64 arrays, the update's norm before clipping).
    ``key`` fixes the noise stream (tests only).
    """
    std = share_std(noise_multiplier=noise_multiplier, clip=clip, min_clients=min_clients)
    clipped, norm = clip_update(update, clip=clip)
    sizes = [a.size for a in clipped]
    noise = secure_gaussian(sum(sizes), std=std, key=key)
    out, offset = [], 0
    for a, size in zip(clipped, sizes, strict=True):
        out.append(a + noise[offset : offset + size].reshape(a.shape))
        offset += size
    return out, norm
