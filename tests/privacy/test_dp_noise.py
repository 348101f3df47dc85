"""Secure Gaussian noise and distributed DP shares."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from privacy.dp.distributed import clip_update, global_norm, noisy_share, share_std
from privacy.dp.noise import secure_gaussian, secure_uniform

KEY = bytes(range(32))


def test_secure_gaussian_has_the_requested_moments() -> None:
    z = secure_gaussian(200_001, std=2.5)
    assert z.shape == (200_001,)
    # Standard errors: mean 2.5/sqrt(n) ≈ 0.0056, std ≈ 0.004; 6 sigma bounds.
    assert abs(z.mean()) < 0.035
    assert abs(z.std() - 2.5) < 0.03
    # Tails of a normal, not of a uniform: about 0.27% beyond 3 sigma.
    assert 0.0015 < np.mean(np.abs(z) > 7.5) < 0.004


def test_keyed_stream_is_reproducible_and_fresh_keys_are_not() -> None:
    assert np.array_equal(
        secure_gaussian((3, 4), std=1.0, key=KEY), secure_gaussian((3, 4), std=1.0, key=KEY)
    )
    assert not np.array_equal(secure_gaussian(16, std=1.0), secure_gaussian(16, std=1.0))
    u = secure_uniform(10_000, key=KEY)
    assert u.min() > 0.0 and u.max() < 1.0


def test_noise_refuses_bad_parameters() -> None:
    with pytest.raises(ValueError, match="standard deviation"):
        secure_gaussian(4, std=-1.0)
    with pytest.raises(ValueError, match="32 bytes"):
        secure_uniform(4, key=b"short")
    assert not secure_gaussian(5, std=0.0).any()


@settings(max_examples=50, deadline=None)
@given(
    parts=st.lists(
        arrays(np.float64, st.integers(1, 20), elements=st.floats(-1e3, 1e3)),
        min_size=1,
        max_size=4,
    ),
    clip=st.floats(1e-3, 10.0),
)
def test_clip_update_bounds_the_norm_and_keeps_the_direction(
    parts: list[np.ndarray], clip: float
) -> None:
    clipped, norm = clip_update(parts, clip=clip)
    assert norm == pytest.approx(global_norm(parts))
    assert global_norm(clipped) <= clip * (1 + 1e-9)
    if norm <= clip:
        for a, b in zip(parts, clipped, strict=True):
            np.testing.assert_allclose(a, b)
    else:
        scale = clip / norm
        for a, b in zip(parts, clipped, strict=True):
            np.testing.assert_allclose(b, a * scale, rtol=1e-9, atol=1e-12)


def test_shares_of_n_min_clients_sum_to_the_target_noise() -> None:
    """n_min clients with zero updates: their summed noise has variance (z C)^2."""
    z, c, n_min, d = 1.3, 0.7, 8, 20_000
    total = np.zeros(d)
    for _ in range(n_min):
        (share,), _ = noisy_share([np.zeros(d)], clip=c, noise_multiplier=z, min_clients=n_min)
        total += share
    expected = z * c
    assert share_std(noise_multiplier=z, clip=c, min_clients=n_min) == pytest.approx(
        expected / math.sqrt(n_min)
    )
    # std of a sample std of 20k normals: ≈ 0.5%; allow 4%.
    assert total.std() == pytest.approx(expected, rel=0.04)
    assert abs(total.mean()) < 6 * expected / math.sqrt(d)


def test_share_is_clipped_update_plus_keyed_noise() -> None:
    update = [np.full((2, 3), 3.0), np.full(4, -4.0)]
    (a, b), norm = noisy_share(update, clip=1.0, noise_multiplier=1.0, min_clients=4, key=KEY)
    noise = secure_gaussian(10, std=0.5, key=KEY)
    clipped, _ = clip_update(update, clip=1.0)
    np.testing.assert_allclose(a.ravel(), clipped[0].ravel() + noise[:6])
    np.testing.assert_allclose(b, clipped[1] + noise[6:])
    assert norm == pytest.approx(math.sqrt(6 * 9 + 4 * 16))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"noise_multiplier": 0.0, "clip": 1.0, "min_clients": 2}, "noise multiplier"),
        ({"noise_multiplier": 1.0, "clip": 0.0, "min_clients": 2}, "clipping norm"),
        ({"noise_multiplier": 1.0, "clip": 1.0, "min_clients": 0}, "minimum number"),
    ],
)
def test_share_std_refuses_bad_parameters(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        share_std(**kwargs)
