"""Oracle: fairness metrics from clients' summed counts equal fairlearn's, computed
centrally on the union of the same data."""

from __future__ import annotations

import numpy as np
import pytest
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    equalized_odds_difference,
)
from sklearn.metrics import accuracy_score

from tasks import get_task, partition_indices
from tasks.fairness import group_confusion_counts, group_metrics, sum_counts
from tasks.partition import PartitionSpec


def _central(y: np.ndarray, pred: np.ndarray, sex: np.ndarray) -> tuple[float, float, dict]:
    frame = MetricFrame(metrics=accuracy_score, y_true=y, y_pred=pred, sensitive_features=sex)
    return (
        demographic_parity_difference(y, pred, sensitive_features=sex),
        equalized_odds_difference(y, pred, sensitive_features=sex),
        frame.by_group.to_dict(),
    )


@pytest.mark.parametrize("partition", ["iid", "natural", "dirichlet:0.3"])
def test_summed_client_counts_equal_fairlearn_on_the_union(partition: str) -> None:
    # Prepare: a credit-scoring classifier's predictions, the data split over 12 clients.
    from sklearn.linear_model import LogisticRegression

    spec = get_task("credit-scoring")
    data = spec.load_data(0)
    assert data.sensitive_train is not None
    pred = LogisticRegression().fit(data.x_test, data.y_test).predict(data.x_train)
    parts = partition_indices(
        data.y_train, 12, PartitionSpec.parse(partition), seed=3, groups=data.groups_train
    )
    # Execute: each client counts on its own share; the coordinator sums.
    counts = sum_counts(
        [
            group_confusion_counts(
                data.y_train[idx],
                pred[idx],
                data.sensitive_train[idx],
                n_groups=len(spec.sensitive_groups),
            )
            for idx in parts
        ]
    )
    got = group_metrics(counts, spec.sensitive_groups)
    # Assert: equal to fairlearn on the union (all clients' data together).
    dp, eo, by_group = _central(data.y_train, pred, data.sensitive_train)
    assert got["demographic_parity_difference"] == pytest.approx(dp, abs=1e-12)
    assert got["equalized_odds_difference"] == pytest.approx(eo, abs=1e-12)
    assert dp > 0.05  # the generator's bias shows: the oracle compares non-trivial values
    for code, name in enumerate(spec.sensitive_groups):
        assert got["groups"][name]["accuracy"] == pytest.approx(by_group[code], abs=1e-12)
        assert got["groups"][name]["n"] == int((data.sensitive_train == code).sum())


def test_three_groups_match_fairlearn() -> None:
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 600)
    pred = np.where(rng.random(600) < 0.8, y, 1 - y)
    g = rng.integers(0, 3, 600)
    counts = group_confusion_counts(y, pred, g, n_groups=3)
    got = group_metrics(counts, ("a", "b", "c"))
    dp, eo, _ = _central(y, pred, g)
    assert got["demographic_parity_difference"] == pytest.approx(dp, abs=1e-12)
    assert got["equalized_odds_difference"] == pytest.approx(eo, abs=1e-12)
