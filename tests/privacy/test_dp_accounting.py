"""Privacy accounting: the fast RDP against Opacus, properties of ε, calibration."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privacy.dp import Mechanism, calibrate_noise, epsilon
from privacy.dp.rdp import DEFAULT_ORDERS, epsilon_from_rdp, rdp_sampled_gaussian

# A small grid: the RDP curve of each (q, σ) is computed once and cached, so the
# property tests stay fast while still exploring many combinations.
RATES = [0.001, 0.01, 0.05, 0.1, 0.3, 0.7, 1.0]
SIGMAS = [0.5, 0.8, 1.0, 1.5, 3.0, 8.0]
FAST = settings(max_examples=40, deadline=None)


@pytest.mark.parametrize(
    ("q", "sigma"),
    [(0.1, 1.0), (0.01, 1.0), (0.05, 0.5), (0.3, 0.8), (0.9, 2.0), (0.5, 0.3), (1e-4, 0.6)],
)
def test_rdp_matches_opacus_series(q: float, sigma: float) -> None:
    """Oracle: the quadrature equals Opacus's compute_rdp at every default order."""
    from opacus.accountants.analysis import rdp as opacus_rdp

    # Prepare
    orders = list(DEFAULT_ORDERS[:151])  # Opacus's own default orders
    # Execute
    ours = rdp_sampled_gaussian(q=q, sigma=sigma, orders=orders)
    ref = opacus_rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=orders)
    # Assert
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-12)


def test_rdp_full_sampling_is_the_gaussian_closed_form() -> None:
    rdp = rdp_sampled_gaussian(q=1.0, sigma=2.0, steps=3)
    np.testing.assert_allclose(rdp, 3 * np.asarray(DEFAULT_ORDERS) / 8.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"q": 1.5, "sigma": 1.0}, "sample rate"),
        ({"q": 0.1, "sigma": 0.0}, "noise multiplier"),
        ({"q": 0.1, "sigma": 1.0, "steps": -1}, "steps"),
        ({"q": 0.1, "sigma": 1.0, "orders": [0.5]}, "orders"),
    ],
)
def test_rdp_refuses_bad_input(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rdp_sampled_gaussian(**kwargs)


def test_epsilon_from_rdp_refuses_bad_delta() -> None:
    with pytest.raises(ValueError, match="delta"):
        epsilon_from_rdp(rdp=np.zeros(len(DEFAULT_ORDERS)), delta=1.0)


@FAST
@given(
    q=st.sampled_from(RATES),
    sigma=st.sampled_from(SIGMAS),
    steps=st.integers(1, 500),
    more=st.integers(1, 500),
)
def test_epsilon_is_monotone_in_steps(q: float, sigma: float, steps: int, more: int) -> None:
    few = epsilon([Mechanism(q, sigma, steps)], delta=1e-5)
    many = epsilon([Mechanism(q, sigma, steps + more)], delta=1e-5)
    assert many >= few


@FAST
@given(
    rates=st.lists(st.sampled_from(RATES), min_size=2, max_size=2, unique=True),
    sigma=st.sampled_from(SIGMAS),
    steps=st.integers(1, 300),
)
def test_epsilon_is_monotone_in_sampling_rate(rates: list[float], sigma: float, steps: int) -> None:
    low, high = sorted(rates)
    assert epsilon([Mechanism(high, sigma, steps)], delta=1e-5) >= epsilon(
        [Mechanism(low, sigma, steps)], delta=1e-5
    )


@FAST
@given(
    sigmas=st.lists(st.sampled_from(SIGMAS), min_size=2, max_size=2, unique=True),
    q=st.sampled_from(RATES),
    steps=st.integers(1, 300),
)
def test_epsilon_decreases_with_noise(sigmas: list[float], q: float, steps: int) -> None:
    low, high = sorted(sigmas)
    assert epsilon([Mechanism(q, high, steps)], delta=1e-5) <= epsilon(
        [Mechanism(q, low, steps)], delta=1e-5
    )


@FAST
@given(
    history=st.lists(
        st.builds(
            Mechanism,
            st.sampled_from(RATES),
            st.sampled_from(SIGMAS),
            st.integers(0, 200),
        ),
        max_size=6,
    ),
    extra=st.builds(
        Mechanism, st.sampled_from(RATES), st.sampled_from(SIGMAS), st.integers(1, 200)
    ),
)
def test_composition_never_decreases_epsilon(history: list[Mechanism], extra: Mechanism) -> None:
    assert epsilon([*history, extra], delta=1e-5) >= epsilon(history, delta=1e-5)


def test_special_histories() -> None:
    assert epsilon([], delta=1e-5) == 0.0
    assert epsilon([Mechanism(0.1, 1.0, 0)], delta=1e-5) == 0.0
    assert math.isinf(epsilon([Mechanism(0.1, 0.0, 5)], delta=1e-5))


@pytest.mark.parametrize("target", [0.5, 2.0, 8.0])
def test_calibration_reaches_but_never_exceeds_the_target(target: float) -> None:
    # Execute
    sigma = calibrate_noise(target_epsilon=target, delta=1e-5, sample_rate=0.05, steps=200)
    spent = epsilon([Mechanism(0.05, sigma, 200)], delta=1e-5)
    # Assert: within 1% below the target, never above
    assert spent <= target
    assert spent >= 0.99 * target - 1e-9


def test_calibration_refuses_meaningless_targets() -> None:
    with pytest.raises(ValueError, match="positive"):
        calibrate_noise(target_epsilon=0.0, delta=1e-5, sample_rate=0.1, steps=10)
    with pytest.raises(ValueError, match="steps"):
        calibrate_noise(target_epsilon=1.0, delta=1e-5, sample_rate=0.1, steps=0)


def test_mechanism_refuses_bad_values() -> None:
    with pytest.raises(ValueError, match="sample rate"):
        Mechanism(1.2, 1.0, 1)
    with pytest.raises(ValueError, match="noise"):
        Mechanism(0.1, -1.0, 1)
    with pytest.raises(ValueError, match="steps"):
        Mechanism(0.1, 1.0, -2)
    with pytest.raises(ValueError, match="accountant"):
        epsilon([], delta=1e-5, accountant="moments")  # type: ignore[arg-type]
