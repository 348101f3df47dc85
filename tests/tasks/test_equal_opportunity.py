"""Equal-opportunity reweighting (Jiang & Nachum 2020): the multiplier step, the client's
resampling, the server's state, and a central check that it undoes label bias."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordinator.fairness import MAX_POSITIVE_WEIGHT, EqualOpportunityWeights
from tasks.fairness import equal_opportunity_step, positive_weighted_indices

rates = st.floats(0.0, 1.0, allow_nan=False)


def test_a_group_below_the_mean_tpr_gains_weight_and_one_above_loses_it() -> None:
    # Execute
    lam = equal_opportunity_step([0.5, 0.5], [0.9, 0.7], rate=2.0, max_log_weight=2.0)
    # Assert: mean 0.8; +-2 * 0.1
    assert lam == pytest.approx([0.3, 0.7])


def test_a_group_without_positives_keeps_its_multiplier_and_is_left_out_of_the_mean() -> None:
    lam = equal_opportunity_step([0.2, 0.0, 0.0], [math.nan, 0.9, 0.7], rate=1.0, max_log_weight=1)
    assert lam == pytest.approx([0.2, 0.0, 0.1])


def test_bad_step_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="one multiplier per group"):
        equal_opportunity_step([0.0], [0.5, 0.5], rate=1.0, max_log_weight=1.0)
    with pytest.raises(ValueError, match=">= 0"):
        equal_opportunity_step([0.0], [0.5], rate=-1.0, max_log_weight=1.0)


@given(
    lam=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=5),
    tpr_seed=st.integers(0, 2**16),
    rate=rates,
)
def test_multipliers_stay_in_range_and_move_towards_the_mean(
    lam: list[float], tpr_seed: int, rate: float
) -> None:
    tpr = np.random.default_rng(tpr_seed).random(len(lam)).tolist()
    new = equal_opportunity_step(lam, tpr, rate=rate, max_log_weight=1.0)
    mean = sum(tpr) / len(tpr)
    for before, after, t in zip(lam, new, tpr, strict=True):
        assert 0.0 <= after <= 1.0
        if t < mean:
            assert after >= before  # below the mean: never loses weight
        elif t > mean:
            assert after <= before


@given(
    weights=st.lists(st.floats(0.0, 3.0), min_size=2, max_size=2),
    seed=st.integers(0, 1000),
)
def test_positives_of_each_group_count_their_weight_and_the_rest_once(
    weights: list[float], seed: int
) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    groups = rng.integers(0, 2, 300)
    idx = positive_weighted_indices(y, groups, weights, seed=seed)
    for g, w in enumerate(weights):
        cell = int(((y == 1) & (groups == g)).sum())
        picked = int(((y[idx] == 1) & (groups[idx] == g)).sum())
        assert picked == (cell + round((w - 1) * cell) if w >= 1 else round(w * cell))
    negatives = np.flatnonzero(y == 0)
    assert np.array_equal(np.intersect1d(idx, negatives), negatives)
    assert len(idx) == len(negatives) + int((y[idx] == 1).sum())  # nothing else
    assert np.array_equal(idx, positive_weighted_indices(y, groups, weights, seed=seed))


def test_negative_or_infinite_weights_are_refused() -> None:
    with pytest.raises(ValueError, match="finite and >= 0"):
        positive_weighted_indices(np.array([1]), np.array([0]), [-1.0], seed=0)
    with pytest.raises(ValueError, match="finite and >= 0"):
        positive_weighted_indices(np.array([1]), np.array([0]), [math.inf], seed=0)


def _audit(tpr_male: float, tpr_female: float) -> dict[str, object]:
    return {"groups": {"male": {"tpr": tpr_male}, "female": {"tpr": tpr_female}}}


def test_the_server_raises_the_weight_of_the_group_with_the_lower_tpr_up_to_the_cap() -> None:
    # Prepare
    eo = EqualOpportunityWeights(("male", "female"), rate=2.0)
    assert eo.weights() == [1.0, 1.0]
    # Execute: many rounds with a constant gap
    for _ in range(200):
        eo.update(_audit(0.95, 0.85))
    # Assert
    assert eo.weights()[0] == 1.0
    assert eo.weights()[1] == pytest.approx(MAX_POSITIVE_WEIGHT)
    assert eo.round_stats() == {"eo_weight_male": 1.0, "eo_weight_female": eo.weights()[1]}


def test_no_step_without_group_rates_and_resume_from_recorded_weights() -> None:
    eo = EqualOpportunityWeights(("male", "female"), rate=2.0)
    eo.update(None)
    eo.update({"groups": {"12": {"accuracy": 0.9}}})  # groups are clients: no rates
    assert eo.weights() == [1.0, 1.0]
    eo.restore({"eo_weight_male": 1.0, "eo_weight_female": 1.5})
    assert eo.weights() == pytest.approx([1.0, 1.5])


def test_weighting_womens_positives_narrows_their_true_tpr_gap_under_label_bias() -> None:
    # A central logistic model on the credit book's recorded labels, with and without
    # the weight that makes the women's recorded odds at the boundary (p = 1/2) the true
    # ones ((1 - 0.8 p) / (0.8 (1 - p)) = 1.5); judged against true repayment.
    from sklearn.linear_model import LogisticRegression

    from tasks.credit_scoring import generate_credit

    x, y, sex, _ = generate_credit(applicants=6000, branches=10, seed=3)
    _, repaid, _, _ = generate_credit(applicants=6000, branches=10, seed=3, label_bias=0.0)
    x = (x - x.mean(0)) / x.std(0)
    train = np.arange(len(y)) < 4500

    def fit(weights: list[float]) -> tuple[float, float]:
        idx = positive_weighted_indices(y[train], sex[train], weights, seed=0)
        model = LogisticRegression(max_iter=500).fit(x[train][idx], y[train][idx])
        pred = model.predict(x[~train])
        tpr = [pred[(sex[~train] == g) & (repaid[~train] == 1)].mean() for g in (0, 1)]
        return float(tpr[0] - tpr[1]), float((pred == repaid[~train]).mean())

    (gap, acc), (weighted_gap, weighted_acc) = fit([1.0, 1.0]), fit([1.0, 1.5])
    assert gap > 0.03  # the bias shows: creditworthy women are refused more often
    assert weighted_gap < 0.9 * gap
    assert weighted_acc > acc - 0.01
