"""Secure-aggregation settings: the run-config keys, their defaults and their limits.

``SecAggConfig`` is what the user chose (``secagg``, ``secagg-degree``, ...);
``SecAggParams`` is what one round runs with once the number of clients is known
(resolved degree, threshold and modulus). Both are validated here, once, with
messages that name the value to change.

Defaults follow Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic
Overhead", CCS 2020: a neighbour graph of degree K = 2⌈log2 n⌉ (O(log n)) and a
threshold that is a strict majority of the K+1 share holders (each client's
neighbours and itself).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from privacy.secagg.prg import DEFAULT_PRG, PRGS
from tasks.run_config import as_bool, as_number

MIN_CLIENTS = 3
"""Fewest clients per round: with two, each learns the other's update from the sum."""

CLIP_FRACTION_SCALE = 65535
"""Fixed-point scale of the per-client clipped-fraction coordinate (16 bits)."""

RUN_CONFIG_KEYS = {
    "enabled": "secagg",
    "degree": "secagg-degree",
    "threshold": "secagg-threshold",
    "clip": "secagg-clip",
    "bits": "secagg-bits",
    "max_weight": "secagg-max-weight",
    "max_in_flight": "secagg-max-in-flight",
    "on_failure": "secagg-on-failure",
    "prg": "secagg-prg",
}

ON_FAILURE = ("continue", "stop")


def default_degree(num_clients: int) -> int:
    """K = 2⌈log2 n⌉ neighbours (even, O(log n)), capped at n−1 (the complete graph)."""
    if num_clients < 2:
        return 0
    return min(num_clients - 1, 2 * math.ceil(math.log2(num_clients)))


def default_threshold(degree: int) -> int:
    """T = ⌊(K+1)/2⌋ + 1: a strict majority of a client's K+1 share holders.

    A majority threshold means a server that sends inconsistent dropout lists can
    never collect T self-mask shares *and* T key shares of the same client, since
    each holder reveals only one of the two (Bonawitz et al. 2017, §4).
    """
    return (degree + 1) // 2 + 1


def modulus_bits_for(*, num_clients: int, bits: int, max_weight: int) -> int | None:
    """The smallest modulus 2^M (M ∈ {32, 64}) that holds the signed sum of
    ``num_clients`` weighted updates without wrapping; ``None`` if even 64 bits overflow.

    Each coordinate of a client's input is weight · q with |q| ≤ 2^(B−1)−1 and
    weight ≤ ``max_weight``; the sum must stay below 2^(M−1) in absolute value.
    """
    qmax = 2 ** (bits - 1) - 1
    largest = num_clients * max(max_weight * qmax, max_weight, CLIP_FRACTION_SCALE)
    for m in (32, 64):
        if largest < 2 ** (m - 1):
            return m
    return None


def max_weight_for_ring(*, num_clients: int, bits: int, modulus_bits: int = 32) -> int | None:
    """The largest ``max_weight`` for which :func:`modulus_bits_for` picks a modulus of at
    most 2^``modulus_bits`` at this many clients and bits; ``None`` if none does.

    The narrower ring is exact, not approximate: the signed sum of the inputs provably
    stays inside it, so the aggregate is the same integer as in a wider ring (a client
    whose weight is at most this cap is not clamped either way)."""
    qmax = 2 ** (bits - 1) - 1
    limit = 2 ** (modulus_bits - 1) - 1  # the largest |sum| the ring holds
    if num_clients < 1 or num_clients * CLIP_FRACTION_SCALE > limit:
        return None
    weight = limit // (num_clients * max(qmax, 1))
    return weight if weight >= 1 else None


@dataclass(frozen=True)
class SecAggParams:
    """What one round of the protocol runs with (all resolved, all checked).

    ``degree`` K: neighbours per client in the masking graph; ``threshold`` T: shares
    needed to rebuild a client's secrets (out of its K+1 holders); ``clip`` R: each
    coordinate of an update is clipped to [−R, R]; ``bits`` B: quantization bits per
    coordinate (levels −(2^(B−1)−1)..2^(B−1)−1); ``max_weight``: largest per-client
    weight (num-examples; larger weights count as this); ``modulus_bits`` M: inputs
    and masks live in Z_(2^M); ``prg``: the mask generator (``privacy.secagg.prg``).
    """

    degree: int
    threshold: int
    clip: float
    bits: int
    max_weight: int
    modulus_bits: int
    prg: str = DEFAULT_PRG

    @property
    def scale(self) -> float:
        """Quantization levels per unit of update: (2^(B−1)−1) / R."""
        return (2 ** (self.bits - 1) - 1) / self.clip

    @property
    def quantization_error(self) -> float:
        """Largest error of one coordinate of the recovered weighted mean: half a
        quantization step, R / (2^B − 2)."""
        return 0.5 / self.scale


@dataclass(frozen=True)
class SecAggConfig:
    """The secure-aggregation switches of a run (run-config keys ``secagg*``).

    ``degree`` and ``threshold`` of 0 mean "choose for the round's client count"
    (see :func:`default_degree`, :func:`default_threshold`). ``max_in_flight`` bounds
    how many clients the coordinator has messages out to at once during a stage
    (0: all), which bounds the coordinator's memory for masked vectors.
    ``on_failure`` is what a round that cannot be unmasked does to the run:
    ``continue`` (keep the previous model, go on) or ``stop`` (end the run).
    ``prg`` is the mask generator: ``aes128-ctr`` or ``chacha20`` (for clients without
    AES instructions).
    """

    enabled: bool = False
    degree: int = 0
    threshold: int = 0
    clip: float = 1.0
    bits: int = 16
    max_weight: int = 65536
    max_in_flight: int = 0
    on_failure: str = "continue"
    prg: str = DEFAULT_PRG

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> SecAggConfig:
        """Read the ``secagg*`` keys of a Flower run config (others are ignored)."""
        values: dict[str, Any] = {}
        for name, default in asdict(cls()).items():
            key = RUN_CONFIG_KEYS[name]
            if key not in run_config:
                continue
            raw = run_config[key]
            values[name] = _coerce(key, raw, type(default))
        config = cls(**values)
        config.check_values()
        return config

    def as_run_config(self) -> dict[str, bool | int | float | str]:
        """The run-config keys of this configuration (inverse of from_run_config)."""
        return {RUN_CONFIG_KEYS[name]: value for name, value in asdict(self).items()}

    def check_values(self) -> None:
        """Refuse values that are wrong whatever the number of clients."""
        if self.degree < 0:
            raise ValueError("secagg-degree must be >= 0 (0 chooses 2*ceil(log2 n))")
        if self.degree % 2 == 1:
            raise ValueError(
                f"secagg-degree {self.degree} is odd; the neighbour graph needs an even "
                "degree: use an even --secagg-degree (or 0 for the default)"
            )
        if self.threshold < 0 or self.threshold == 1:
            raise ValueError(
                f"secagg-threshold {self.threshold} must be >= 2 (a single share would "
                "reveal a secret) or 0 for the default majority"
            )
        if not (self.clip > 0 and math.isfinite(self.clip)):
            raise ValueError(f"secagg-clip {self.clip} must be a positive number")
        if not 2 <= self.bits <= 32:
            raise ValueError(f"secagg-bits {self.bits} must be between 2 and 32")
        if self.max_weight < 1:
            raise ValueError(f"secagg-max-weight {self.max_weight} must be >= 1")
        if self.max_in_flight < 0:
            raise ValueError("secagg-max-in-flight must be >= 0 (0: no limit)")
        if self.prg not in PRGS:
            raise ValueError(f"secagg-prg {self.prg!r}: choose one of {', '.join(PRGS)}")
        if self.on_failure not in ON_FAILURE:
            raise ValueError(
                f"secagg-on-failure {self.on_failure!r}: choose {' or '.join(ON_FAILURE)}"
            )

    def params_for(self, num_clients: int) -> SecAggParams:
        """The parameters of a round with ``num_clients`` clients, or a ``ValueError``
        naming the value to change (T > K+1, overflowing modulus, too few clients)."""
        self.check_values()
        if num_clients < MIN_CLIENTS:
            raise ValueError(
                f"secure aggregation needs at least {MIN_CLIENTS} clients per round "
                f"(got {num_clients}); raise --clients-per-round"
            )
        if self.degree > num_clients - 1:
            raise ValueError(
                f"secagg-degree {self.degree} needs more than {num_clients} clients per "
                f"round; lower --secagg-degree to at most {num_clients - 1} or raise "
                "--clients-per-round"
            )
        degree = self.degree or default_degree(num_clients)
        threshold = self.threshold or default_threshold(degree)
        if threshold > degree + 1:
            raise ValueError(
                f"secagg-threshold {threshold} is larger than secagg-degree + 1 = "
                f"{degree + 1} (the holders of each secret); lower --secagg-threshold or "
                "raise --secagg-degree"
            )
        modulus = modulus_bits_for(
            num_clients=num_clients, bits=self.bits, max_weight=self.max_weight
        )
        if modulus is None:
            raise ValueError(
                f"the sum of {num_clients} updates of {self.bits} bits weighted up to "
                f"{self.max_weight} overflows a 64-bit modulus; lower --secagg-bits or "
                "secagg-max-weight (or --clients-per-round)"
            )
        return SecAggParams(
            degree=degree,
            threshold=threshold,
            clip=self.clip,
            bits=self.bits,
            max_weight=self.max_weight,
            modulus_bits=modulus,
            prg=self.prg,
        )


def _coerce(key: str, raw: Any, target: type) -> Any:
    """A run-config value converted to the field's type, or a clear error."""
    if target is str:
        return str(raw).strip().lower()
    if target is bool:
        return as_bool(key, raw)
    return as_number(key, raw, target)
