"""Privacy accounting: ε of a history of (sample rate, noise multiplier, steps).

Pure functions over immutable ``Mechanism`` records. Two accountants:

* ``"rdp"`` — Rényi DP of the Poisson-subsampled Gaussian (Mironov 2017; Mironov,
  Talwar, Zhang 2019), composed additively over the history and converted to
  (ε, δ) with Balle et al. 2020 — the analysis of Opacus's ``RDPAccountant``, evaluated
  with the fast quadrature of :mod:`privacy.dp.rdp`. A rigorous upper bound.
* ``"prv"`` — Opacus's ``PRVAccountant`` (Gopi, Lee, Wutschitz, "Numerical Composition
  of Differential Privacy", NeurIPS 2021): tighter, returns the upper end of its
  numerical error interval, slower (0.1–3 s per distinct mechanism).

Both treat one ``Mechanism`` as ``steps`` applications of the subsampled Gaussian with
add/remove-one adjacency — a DP-SGD epoch with Poisson sampling at a site (records), or
rounds of DP-FedAvg (clients).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from privacy.dp.rdp import DEFAULT_ORDERS, epsilon_from_rdp, rdp_sampled_gaussian

log = logging.getLogger(__name__)

Accountant = Literal["rdp", "prv"]
ACCOUNTANTS: tuple[str, ...] = get_args(Accountant)


@dataclass(frozen=True)
class Mechanism:
    """``steps`` compositions of the Poisson-subsampled Gaussian mechanism.

    ``sample_rate`` is the probability that one record (or client) is in a step's
    batch; ``noise_multiplier`` is the noise standard deviation divided by the
    clipping norm.
    """

    sample_rate: float
    noise_multiplier: float
    steps: int

    def __post_init__(self) -> None:
        if not 0.0 <= self.sample_rate <= 1.0:
            raise ValueError(f"sample rate {self.sample_rate} must be in [0, 1]")
        if not self.noise_multiplier >= 0 or math.isnan(self.noise_multiplier):
            raise ValueError(f"noise multiplier {self.noise_multiplier} must be >= 0")
        if self.steps < 0:
            raise ValueError(f"steps {self.steps} must be >= 0")


def check_accountant(name: str) -> Accountant:
    """``name`` as an ``Accountant``, or a ValueError listing the valid ones."""
    if name not in ACCOUNTANTS:
        raise ValueError(f"unknown accountant {name!r}; choose one of: {', '.join(ACCOUNTANTS)}")
    return name  # type: ignore[return-value]


def _merged(history: Iterable[Mechanism]) -> list[Mechanism] | None:
    """Equal (q, σ) entries merged; ``None`` when some step releases without noise."""
    steps: dict[tuple[float, float], int] = {}
    for m in history:
        if m.steps == 0 or m.sample_rate == 0.0:
            continue
        if m.noise_multiplier == 0.0:
            return None
        key = (m.sample_rate, m.noise_multiplier)
        steps[key] = steps.get(key, 0) + m.steps
    return [Mechanism(q, z, n) for (q, z), n in steps.items()]


def rdp_epsilon(
    history: Iterable[Mechanism], *, delta: float, orders: Sequence[float] = DEFAULT_ORDERS
) -> float:
    """ε at ``delta`` of the composed history, by the RDP accountant."""
    merged = _merged(history)
    if merged is None:
        return math.inf
    if not merged:
        return 0.0
    total = np.zeros(len(orders))
    for m in merged:
        total += rdp_sampled_gaussian(
            q=m.sample_rate, sigma=m.noise_multiplier, steps=m.steps, orders=orders
        )
    eps, _ = epsilon_from_rdp(rdp=total, delta=delta, orders=orders)
    return eps


def prv_epsilon(history: Iterable[Mechanism], *, delta: float, eps_error: float = 0.01) -> float:
    """ε at ``delta`` by Opacus's PRV accountant (upper end of its error interval).

    Falls back to the RDP bound (also a valid upper bound) where the PRV numerics fail.
    """
    merged = _merged(history)
    if merged is None:
        return math.inf
    if not merged:
        return 0.0
    from opacus.accountants import PRVAccountant

    accountant = PRVAccountant()
    accountant.history = [(m.noise_multiplier, m.sample_rate, m.steps) for m in merged]
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            eps = float(accountant.get_epsilon(delta=delta, eps_error=eps_error))
    except (ValueError, RuntimeError, OverflowError, ArithmeticError) as exc:
        log.warning("PRV accountant failed (%s); reporting the RDP bound instead", exc)
        return rdp_epsilon(merged, delta=delta)
    if not math.isfinite(eps):
        return rdp_epsilon(merged, delta=delta)
    return max(0.0, eps)


def epsilon(history: Iterable[Mechanism], *, delta: float, accountant: Accountant = "rdp") -> float:
    """ε at ``delta`` of the composed ``history`` by ``accountant``."""
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta={delta} must be in (0, 1)")
    if check_accountant(accountant) == "prv":
        return prv_epsilon(history, delta=delta)
    return rdp_epsilon(history, delta=delta)


def calibrate_noise(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: Accountant = "rdp",
    tolerance: float = 0.01,
) -> float:
    """The smallest noise multiplier (within ``tolerance`` relative ε) whose ``steps``
    compositions at ``sample_rate`` spend at most ``target_epsilon`` at ``delta``.

    The returned value always satisfies ε(σ) ≤ ``target_epsilon``.
    """
    if not target_epsilon > 0 or not math.isfinite(target_epsilon):
        raise ValueError(f"target epsilon {target_epsilon} must be a positive number")
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1 to calibrate noise")

    def eps_at(sigma: float) -> float:
        return epsilon([Mechanism(sample_rate, sigma, steps)], delta=delta, accountant=accountant)

    lo, hi = 0.0, 1.0
    while eps_at(hi) > target_epsilon:
        lo, hi = hi, hi * 2.0
        if hi > 1e6:
            raise ValueError(
                f"epsilon {target_epsilon} at delta {delta} is unreachable for {steps} steps "
                f"at sample rate {sample_rate}; raise epsilon or train fewer steps"
            )
    # Bisection in σ: ε is decreasing in σ; stop when ε(hi) is within tolerance.
    for _ in range(60):
        if target_epsilon - eps_at(hi) <= tolerance * target_epsilon or hi - lo < 1e-6:
            break
        mid = 0.5 * (lo + hi)
        if eps_at(mid) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi
