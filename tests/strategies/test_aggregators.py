"""Every registered aggregator against a direct numpy computation (oracle tests), plus
Hypothesis properties of the robust ones."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import trim_mean

from strategies import StrategyParams, build_strategy
from strategies.aggregation import weighted_mean

SHAPES = {"w": (3, 2), "b": (2,)}
EXAMPLES = [10, 20, 5, 40, 15, 25, 30]


def _updates(n: int = 7, *, seed: int = 0, outliers: int = 0) -> list[dict[str, np.ndarray]]:
    """``n`` updates near 1.0; the last ``outliers`` are far away (around 100)."""
    rng = np.random.default_rng(seed)
    ups = [
        {k: (1.0 + 0.1 * rng.normal(size=s)).astype(np.float32) for k, s in SHAPES.items()}
        for _ in range(n)
    ]
    for i in range(n - outliers, n):
        ups[i] = {k: (100.0 + rng.normal(size=s)).astype(np.float32) for k, s in SHAPES.items()}
    return ups


def _aggregate(
    name: str,
    updates: list[dict[str, np.ndarray]],
    make_reply: Callable[..., Message],
    *,
    params: StrategyParams | None = None,
    examples: list[int] | None = None,
) -> dict[str, np.ndarray]:
    strategy = build_strategy(name, params or StrategyParams())
    examples = examples or EXAMPLES[: len(updates)]
    replies = [make_reply(1000 + i, u, examples[i]) for i, u in enumerate(updates)]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    return {k: a.numpy() for k, a in arrays.items()}


def _stack(updates: list[dict[str, np.ndarray]], name: str) -> np.ndarray:
    return np.stack([u[name] for u in updates]).astype(np.float64)


@pytest.mark.parametrize("name", ["fedavg", "fedprox"])
def test_fedavg_family_is_the_example_weighted_mean(name: str, make_reply) -> None:
    ups = _updates()
    got = _aggregate(name, ups, make_reply)
    for k in SHAPES:
        expected = np.average(_stack(ups, k), axis=0, weights=EXAMPLES)
        np.testing.assert_allclose(got[k], expected, rtol=1e-5)


def test_fedavg_reply_views_give_the_decoded_copies_mean_bit_for_bit(make_reply) -> None:
    # Oracle: the same streaming mean fed with Flower's own decoding (np.load copies):
    # reading the reply bytes in place changes no bit of the aggregate.
    ups = _updates()
    replies = [make_reply(1000 + i, u, EXAMPLES[i]) for i, u in enumerate(ups)]
    arrays, _ = build_strategy("fedavg", StrategyParams()).aggregate_train(1, replies)
    assert arrays is not None
    expected = weighted_mean(
        (
            {k: a.numpy() for k, a in next(iter(r.content.array_records.values())).items()},
            float(EXAMPLES[i]),
        )
        for i, r in enumerate(replies)
    )
    for k in SHAPES:
        got = arrays[k].numpy()
        assert got.dtype == expected[k].dtype
        np.testing.assert_array_equal(got, expected[k])


def _configure(strategy, server_round: int, g: dict[str, np.ndarray], fake_grid, record_of):
    return list(
        strategy.configure_train(server_round, record_of(g), ConfigRecord(), fake_grid([1000]))
    )


def test_fedavgm_applies_server_momentum(make_reply, fake_grid, record_of) -> None:
    lr, beta = 0.7, 0.9
    strategy = build_strategy("fedavgm", StrategyParams(server_lr=lr, server_momentum=beta))
    g0 = {k: np.zeros(s, dtype=np.float32) for k, s in SHAPES.items()}
    rounds = [_updates(seed=1), _updates(seed=2)]
    g, momentum = {k: v.astype(np.float64) for k, v in g0.items()}, None
    current = g0
    for r, ups in enumerate(rounds, start=1):
        _configure(strategy, r, current, fake_grid, record_of)
        replies = [make_reply(1000 + i, u, EXAMPLES[i]) for i, u in enumerate(ups)]
        arrays, _ = strategy.aggregate_train(r, replies)
        current = {k: a.numpy() for k, a in arrays.items()}
        # Oracle: SGD with momentum on the pseudo-gradient g − mean (Hsu et al. 2019).
        pg = {k: g[k] - np.average(_stack(ups, k), axis=0, weights=EXAMPLES) for k in SHAPES}
        momentum = pg if momentum is None else {k: beta * momentum[k] + pg[k] for k in SHAPES}
        g = {k: g[k] - lr * momentum[k] for k in SHAPES}
        for k in SHAPES:
            np.testing.assert_allclose(current[k], g[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad"])
def test_adaptive_server_optimizers_take_the_reddi_step(
    name: str, make_reply, fake_grid, record_of
) -> None:
    eta, b1, b2, tau = 0.05, 0.9, 0.99, 1e-3
    params = StrategyParams(server_lr=eta, beta_1=b1, beta_2=b2, tau=tau)
    strategy = build_strategy(name, params)
    g = {k: np.full(s, 0.5, dtype=np.float32) for k, s in SHAPES.items()}
    _configure(strategy, 1, g, fake_grid, record_of)
    ups = _updates()
    arrays, _ = strategy.aggregate_train(
        1, [make_reply(1000 + i, u, EXAMPLES[i]) for i, u in enumerate(ups)]
    )
    for k in SHAPES:
        # Oracle: Reddi et al. 2021, Algorithm 2, first round (m0 = v0 = 0).
        delta = np.average(_stack(ups, k), axis=0, weights=EXAMPLES) - g[k]
        if name == "fedadagrad":
            m, v, step = delta, delta**2, eta
        else:
            m, v = (1 - b1) * delta, (1 - b2) * delta**2
            step = eta * np.sqrt(1 - b2**2) / (1 - b1**2) if name == "fedadam" else eta
        expected = g[k] + step * m / (np.sqrt(v) + tau)
        np.testing.assert_allclose(arrays[k].numpy(), expected, rtol=1e-4, atol=1e-6)


def test_fedmedian_is_the_coordinate_wise_median(make_reply) -> None:
    ups = _updates(outliers=3)
    got = _aggregate("fedmedian", ups, make_reply)
    for k in SHAPES:
        np.testing.assert_allclose(got[k], np.median(_stack(ups, k), axis=0), rtol=1e-6)
        assert got[k].max() < 2  # the three outliers at ~100 are ignored


def test_trimmed_mean_matches_scipy(make_reply) -> None:
    ups = _updates(outliers=1)
    got = _aggregate("trimmed-mean", ups, make_reply, params=StrategyParams(trim_fraction=0.2))
    for k in SHAPES:
        np.testing.assert_allclose(got[k], trim_mean(_stack(ups, k), 0.2, axis=0), rtol=1e-6)
        assert got[k].max() < 2


def _krum_scores(ups: list[dict[str, np.ndarray]], f: int) -> np.ndarray:
    """Blanchard et al. 2017: sum of squared distances to the n − f − 2 nearest others."""
    flat = np.stack([np.concatenate([u[k].ravel() for k in SHAPES]) for u in ups]).astype(
        np.float64
    )
    n = len(flat)
    d = ((flat[:, None, :] - flat[None, :, :]) ** 2).sum(-1)
    closest = max(1, n - f - 2)
    return np.array([np.sort(np.delete(d[i], i))[:closest].sum() for i in range(n)])


def test_krum_picks_the_lowest_score_update(make_reply) -> None:
    ups = _updates(outliers=2)
    got = _aggregate("krum", ups, make_reply, params=StrategyParams(byzantine=2))
    best = int(np.argmin(_krum_scores(ups, 2)))
    for k in SHAPES:
        np.testing.assert_allclose(got[k], ups[best][k], rtol=1e-6)


@pytest.mark.parametrize("select", [None, 3])
def test_multikrum_averages_the_m_best_scores(select: int | None, make_reply) -> None:
    f = 2
    ups = _updates(outliers=f)
    got = _aggregate(
        "multikrum", ups, make_reply, params=StrategyParams(byzantine=f, krum_select=select)
    )
    m = select or len(ups) - f
    chosen = np.argsort(_krum_scores(ups, f))[:m]
    assert not set(chosen) & {5, 6}  # the outliers are never chosen
    for k in SHAPES:
        expected = np.average(_stack(ups, k)[chosen], axis=0, weights=np.asarray(EXAMPLES)[chosen])
        np.testing.assert_allclose(got[k], expected, rtol=1e-5)


def test_bulyan_is_the_trimmed_mean_around_the_median_of_the_krum_set(make_reply) -> None:
    f, n = 1, 7  # n >= 4f + 3
    ups = _updates(n, outliers=f)
    got = _aggregate("bulyan", ups, make_reply, params=StrategyParams(byzantine=f))
    theta = n - 2 * f
    beta = theta - 2 * f
    chosen = np.argsort(_krum_scores(ups, f))[:theta]
    for k in SHAPES:
        sel = _stack(ups, k)[chosen]
        med = np.median(sel, axis=0)
        # Per coordinate, average the beta values closest to the median.
        idx = np.argsort(np.abs(sel - med), axis=0, kind="stable")[:beta]
        expected = np.take_along_axis(sel, idx, axis=0).mean(axis=0)
        np.testing.assert_allclose(got[k], expected, rtol=1e-5)
        assert got[k].max() < 2


def test_fedbuff_applies_staleness_weighted_deltas(make_reply, fake_grid, record_of) -> None:
    lr, a = 0.8, 0.5
    strategy = build_strategy("fedbuff", StrategyParams(server_lr=lr, staleness_exponent=a))
    g0 = {k: np.zeros(s, dtype=np.float32) for k, s in SHAPES.items()}
    ups = _updates(4)
    # Round 1: nodes 1000..1002 start from g0; 1000 and 1001 come back (τ = 0).
    strategy.configure_train(1, record_of(g0), ConfigRecord(), fake_grid([1000, 1001, 1002]))
    a1, metrics1 = strategy.aggregate_train(1, [make_reply(1000, ups[0]), make_reply(1001, ups[1])])
    g1 = {k: (g0[k] + lr / 2 * ((ups[0][k] - g0[k]) + (ups[1][k] - g0[k]))) for k in SHAPES}
    for k in SHAPES:
        np.testing.assert_allclose(a1[k].numpy(), g1[k], rtol=1e-6)
    assert metrics1["staleness-max"] == 0
    # Round 2: node 1003 starts from g1; 1002 (from g0, τ = 1) and 1003 (τ = 0) come back.
    g1_record = ArrayRecord({k: v for k, v in a1.items()})
    strategy.configure_train(2, g1_record, ConfigRecord(), fake_grid([1003]))
    a2, metrics2 = strategy.aggregate_train(2, [make_reply(1002, ups[2]), make_reply(1003, ups[3])])
    s1 = (1 + 1) ** -a
    for k in SHAPES:
        expected = g1[k] + lr / 2 * (s1 * (ups[2][k] - g0[k]) + (ups[3][k] - g1[k]))
        np.testing.assert_allclose(a2[k].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert metrics2["staleness-max"] == 1
    assert metrics2["staleness-mean"] == pytest.approx(0.5)


def test_fedbuff_drops_updates_staler_than_the_bound(make_reply, fake_grid, record_of) -> None:
    strategy = build_strategy("fedbuff", StrategyParams(max_staleness=1))
    g = {k: np.zeros(s, dtype=np.float32) for k, s in SHAPES.items()}
    strategy.configure_train(1, record_of(g), ConfigRecord(), fake_grid([1000, 1001]))
    for r in (2, 3):
        strategy.configure_train(r, record_of(g), ConfigRecord(), fake_grid([]))
    ups = _updates(2)
    arrays, _ = strategy.aggregate_train(3, [make_reply(1000, ups[0])])
    assert arrays is None  # τ = 2 > 1: nothing left to apply


# --- Hypothesis properties ---------------------------------------------------------

values = st.floats(min_value=-10, max_value=10, allow_nan=False, width=32)
outlier_values = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, width=32)


FACTORY_FIXTURE = [HealthCheck.function_scoped_fixture]  # make_reply is a pure factory


@settings(max_examples=15, deadline=None, suppress_health_check=FACTORY_FIXTURE)
@given(
    name=st.sampled_from(
        ["fedavg", "fedprox", "fedmedian", "trimmed-mean", "krum", "multikrum", "bulyan"]
    ),
    x=st.lists(values, min_size=3, max_size=3),
    examples=st.lists(st.integers(1, 1000), min_size=3, max_size=8),
)
def test_identical_updates_aggregate_to_themselves(
    name: str, x: list[float], examples: list[int], make_reply
) -> None:
    update = {"v": np.asarray(x, dtype=np.float32)}
    got = _aggregate(name, [update] * len(examples), make_reply, examples=examples)
    np.testing.assert_allclose(got["v"], update["v"], rtol=1e-5, atol=1e-5)


@settings(max_examples=30, deadline=None, suppress_health_check=FACTORY_FIXTURE)
@given(
    honest=st.lists(st.lists(values, min_size=2, max_size=2), min_size=3, max_size=9),
    outliers=st.lists(st.lists(outlier_values, min_size=2, max_size=2), max_size=7),
)
def test_median_ignores_a_minority_of_arbitrary_outliers(honest, outliers, make_reply) -> None:
    outliers = outliers[: len(honest) - 2]  # at most n_honest − 2: the middle stays honest
    ups = [{"v": np.asarray(v, dtype=np.float32)} for v in honest + outliers]
    got = _aggregate("fedmedian", ups, make_reply, examples=[1] * len(ups))["v"]
    h = np.asarray(honest, dtype=np.float32)
    assert (got >= h.min(axis=0) - 1e-6).all() and (got <= h.max(axis=0) + 1e-6).all()


@settings(max_examples=30, deadline=None, suppress_health_check=FACTORY_FIXTURE)
@given(
    honest=st.lists(st.lists(values, min_size=2, max_size=2), min_size=4, max_size=12),
    outliers=st.lists(st.lists(outlier_values, min_size=2, max_size=2), max_size=5),
    trim=st.sampled_from([0.1, 0.2, 0.3, 0.4]),
)
def test_trimmed_mean_ignores_up_to_its_trim_count_of_outliers(
    honest, outliers, trim: float, make_reply
) -> None:
    # With b outliers among n, trimming int(trim · n) >= b per side leaves only honest
    # values, so the result stays inside the honest range, whatever the outliers are.
    n_honest = len(honest)
    b = len(outliers)
    while b and int(trim * (n_honest + b)) < b:
        b -= 1
    ups = [{"v": np.asarray(v, dtype=np.float32)} for v in honest + outliers[:b]]
    params = StrategyParams(trim_fraction=trim)
    got = _aggregate("trimmed-mean", ups, make_reply, params=params, examples=[1] * len(ups))["v"]
    h = np.asarray(honest, dtype=np.float32)
    assert (got >= h.min(axis=0) - 1e-4).all() and (got <= h.max(axis=0) + 1e-4).all()
