"""Property tests of the per-group count aggregation (tasks/fairness.py)."""

from __future__ import annotations

import itertools
import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.fairness import (
    accuracy_distribution,
    counts_from_flat,
    group_confusion_counts,
    group_metrics,
    sum_counts,
)


@st.composite
def labelled(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int], int]:
    n_groups = draw(st.integers(1, 4))
    n = draw(st.integers(1, 200))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=6)))
    return (
        rng.integers(0, 2, n),
        rng.integers(0, 2, n),
        rng.integers(0, n_groups, n),
        cuts,
        n_groups,
    )


@settings(max_examples=150, deadline=None)
@given(labelled())
def test_counts_of_any_split_sum_to_the_counts_of_the_whole(case) -> None:  # type: ignore[no-untyped-def]
    y, pred, g, cuts, n_groups = case
    whole = group_confusion_counts(y, pred, g, n_groups=n_groups)
    bounds = [0, *cuts, len(y)]
    parts = [
        group_confusion_counts(y[a:b], pred[a:b], g[a:b], n_groups=n_groups)
        for a, b in itertools.pairwise(bounds)
    ]
    assert (sum_counts(parts) == whole).all()
    assert whole.sum() == len(y)
    assert (counts_from_flat(whole.ravel().tolist(), n_groups=n_groups) == whole).all()
    metrics = group_metrics(whole, [f"g{i}" for i in range(n_groups)])
    assert sum(v["n"] for v in metrics["groups"].values()) == len(y)
    correct = float((y == pred).mean())
    weighted = sum(v["n"] * v["accuracy"] for v in metrics["groups"].values()) / len(y)
    assert math.isclose(weighted, correct, abs_tol=1e-12)
    assert 0.0 <= metrics["demographic_parity_difference"] <= 1.0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=60))
def test_worst_decile_lies_between_min_and_mean(accs: list[float]) -> None:
    out = accuracy_distribution(accs)
    assert min(accs) - 1e-12 <= out["worst_decile_accuracy"] <= np.mean(accs) + 1e-12
    assert math.isclose(out["max_gap"], max(accs) - min(accs))
    assert out["accuracy_std"] >= 0


def test_flat_counts_of_the_wrong_length_are_refused() -> None:
    try:
        counts_from_flat([1, 2, 3], n_groups=2)
    except ValueError as exc:
        assert "expected 8 counts" in str(exc)
    else:
        raise AssertionError("accepted 3 counts for 2 groups")


@settings(max_examples=100, deadline=None)
@given(st.integers(20, 400), st.integers(0, 2**32 - 1))
def test_reweighing_makes_the_label_rate_equal_across_groups(n: int, seed: int) -> None:
    from tasks.fairness import reweighed_indices

    rng = np.random.default_rng(seed)
    g = rng.integers(0, 2, n)
    y = (rng.random(n) < np.where(g == 1, 0.2, 0.7)).astype(np.int64)  # biased labels
    idx = reweighed_indices(y, g, seed=seed)
    assert len(idx) == 0 or (idx.min() >= 0 and idx.max() < n)
    if all(((g == a) & (y == b)).any() for a in (0, 1) for b in (0, 1)):
        assert abs(len(idx) - n) <= 2  # each of the 4 cells rounds by at most 1/2
    for group in (0, 1):
        in_group = g[idx] == group
        full_cells = all(((g == group) & (y == lab)).any() for lab in (0, 1))
        if in_group.sum() >= 10 and full_cells:
            # every group's positive rate is the overall one, up to rounding of 2 cells
            assert abs(y[idx][in_group].mean() - y.mean()) <= 2 / in_group.sum() + 1e-9
