"""Partitioners: every sample assigned once; sizes; label skew grows as alpha shrinks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks import PartitionSpec, partition_indices

labels_strategy = st.lists(st.integers(0, 9), min_size=1, max_size=400).map(np.array)


def _assert_exact_cover(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts) if parts else np.empty(0, np.int64)
    assert len(joined) == n
    assert np.array_equal(np.sort(joined), np.arange(n))


@settings(max_examples=60, deadline=None)
@given(
    labels=labels_strategy,
    clients=st.integers(1, 50),
    seed=st.integers(0, 2**16),
    spec=st.sampled_from(
        ["iid", "dirichlet:0.1", "dirichlet:1", "dirichlet:100", "shards:1", "shards:3"]
    ),
)
def test_every_sample_is_assigned_exactly_once(labels, clients, seed, spec) -> None:
    parts = partition_indices(labels, clients, PartitionSpec.parse(spec), seed=seed)
    assert len(parts) == clients
    _assert_exact_cover(parts, len(labels))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 500), clients=st.integers(1, 60), seed=st.integers(0, 1000))
def test_iid_sizes_differ_by_at_most_one(n, clients, seed) -> None:
    parts = partition_indices(np.zeros(n, np.int64), clients, PartitionSpec.parse("iid"), seed=seed)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def _mean_label_entropy(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    entropies = []
    for p in parts:
        if len(p) == 0:
            continue
        counts = np.bincount(labels[p], minlength=10) / len(p)
        nz = counts[counts > 0]
        entropies.append(-(nz * np.log(nz)).sum())
    return float(np.mean(entropies))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_label_skew_grows_as_alpha_shrinks(seed) -> None:
    labels = np.repeat(np.arange(10), 200)
    entropy = [
        _mean_label_entropy(
            labels, partition_indices(labels, 20, PartitionSpec.parse(f"dirichlet:{a}"), seed=seed)
        )
        for a in (0.05, 1.0, 100.0)
    ]
    assert entropy[0] < entropy[1] < entropy[2]


def test_shards_give_each_client_few_labels() -> None:
    labels = np.repeat(np.arange(10), 100)
    parts = partition_indices(labels, 10, PartitionSpec.parse("shards:2"), seed=0)
    assert all(len(np.unique(labels[p])) <= 2 for p in parts)


def test_natural_partition_follows_groups() -> None:
    groups = np.array([0, 1, 2, 3, 0, 1])
    parts = partition_indices(
        np.zeros(6, np.int64), 2, PartitionSpec.parse("natural"), seed=0, groups=groups
    )
    assert [p.tolist() for p in parts] == [[0, 2, 4], [1, 3, 5]]


@pytest.mark.parametrize(
    "text", ["dirichlet", "dirichlet:-1", "dirichlet:x", "shards:0", "shards:a", "zipf", "iid:3"]
)
def test_bad_partition_specs_say_what_is_valid(text: str) -> None:
    with pytest.raises(ValueError, match="dirichlet:ALPHA"):
        PartitionSpec.parse(text)


def test_spec_round_trips_through_its_text() -> None:
    for text in ("iid", "dirichlet:0.3", "shards:2", "natural"):
        assert str(PartitionSpec.parse(text)) == text
