"""A site's measured energy and CO2 as summed integers of the masked input (SecAgg+).

Under secure aggregation a site's energy (kWh) and CO2 (g) of a round travel inside its
masked vector, after the fairness counts, like them: the coordinator learns only the
survivors' sums. Each extra coordinate is clamped to [0, max_weight]
(``privacy.secagg.quantize``), so a value is written in base ``max_weight + 1`` over
enough digits to hold :data:`LIMIT` units; digit j of the sum is Σ of the sites' digit j
(the modulus holds n × max_weight), and Σ_j digitsum_j × base^j is the exact total.

Layout: ``[measured, e_0 … e_(D−1), c_0 … c_(D−1)]`` — ``measured`` is 1 for a site
that measured (0 for one that did not: it sends zeros), ``e`` the energy in µWh
(1e-9 kWh), ``c`` the CO2 in µg (1e-6 g), least significant digit first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

KWH_UNIT = 1e-9
"""kWh per energy unit (1 µWh)."""
GRAM_UNIT = 1e-6
"""Grams per CO2 unit (1 µg)."""
LIMIT = 1 << 48
"""Units one site can report per round: 2^48 µWh ≈ 281 MWh, 2^48 µg ≈ 281 t."""


def digits(max_weight: int) -> int:
    """Digits in base ``max_weight + 1`` needed for :data:`LIMIT` units."""
    if max_weight < 1:
        raise ValueError(f"max_weight {max_weight} must be >= 1")
    base, count, reach = max_weight + 1, 1, max_weight + 1
    while reach < LIMIT:
        reach *= base
        count += 1
    return count


def slot_count(max_weight: int) -> int:
    """Extra integers the energy takes in a masked input."""
    return 1 + 2 * digits(max_weight)


@dataclass(frozen=True)
class EnergySum:
    """Energy and CO2 of ``sites`` sites (a sum, or one site's own values)."""

    sites: int
    energy_kwh: float
    co2_g: float


def _units(value: float, unit: float) -> int:
    return min(max(round(value / unit), 0), LIMIT - 1)


def _digits_of(units: int, base: int, count: int) -> list[int]:
    out = []
    for _ in range(count):
        units, digit = divmod(units, base)
        out.append(digit)
    return out


def encode(energy: EnergySum | None, *, max_weight: int) -> list[int]:
    """The slots of one site's ``energy`` (``None``: a site that does not measure)."""
    count = digits(max_weight)
    if energy is None:
        return [0] * (1 + 2 * count)
    base = max_weight + 1
    return [
        1,
        *_digits_of(_units(energy.energy_kwh, KWH_UNIT), base, count),
        *_digits_of(_units(energy.co2_g, GRAM_UNIT), base, count),
    ]


def decode(slots: Sequence[int], *, max_weight: int) -> EnergySum:
    """The total of the summed ``slots`` (or one site's own slots)."""
    count = digits(max_weight)
    if len(slots) != 1 + 2 * count:
        raise ValueError(f"expected {1 + 2 * count} energy slots, got {len(slots)}")
    base = max_weight + 1
    energy = sum(int(d) * base**j for j, d in enumerate(slots[1 : 1 + count]))
    co2 = sum(int(d) * base**j for j, d in enumerate(slots[1 + count :]))
    return EnergySum(sites=int(slots[0]), energy_kwh=energy * KWH_UNIT, co2_g=co2 * GRAM_UNIT)
