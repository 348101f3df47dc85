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


def test_a_million_clients_cost_two_flat_arrays() -> None:
    # Execute: partition 1,437 labels (digits' size) into a million clients, each kind.
    from tasks.partition import Partitions, partition

    labels = np.random.default_rng(0).integers(0, 10, 1437)
    for text in ["iid", "dirichlet:0.5", "shards:2", "natural"]:
        parts = partition(
            labels, 1_000_000, PartitionSpec.parse(text), seed=0, groups=np.arange(1437) % 97
        )
        # Assert: compact (order + offsets only), exact cover, the same arrays as a list.
        assert isinstance(parts, Partitions) and len(parts) == 1_000_000
        assert parts.order.nbytes + parts.offsets.nbytes <= 8 * (1437 + 1_000_001)
        _assert_exact_cover([*list(parts[:2000]), parts.order[parts.offsets[2000] :]], 1437)
        assert int(parts.sizes().sum()) == 1437
        assert np.all(np.diff(parts[int(np.argmax(parts.sizes()))]) > 0)  # sorted per client


def test_partitions_index_like_a_list() -> None:
    from tasks.partition import Partitions

    parts = Partitions.from_arrays([np.array([3, 1]), np.empty(0, np.int64), np.array([2])])
    assert [p.tolist() for p in parts] == [[3, 1], [], [2]]
    assert parts[-1].tolist() == [2] and parts.sizes().tolist() == [2, 0, 1]
    with pytest.raises(IndexError, match="outside 0..2"):
        parts[3]
