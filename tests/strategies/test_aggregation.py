"""The streaming weighted mean and update norms against direct numpy computations."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from strategies.aggregation import StreamingMean, fused_axpy, update_norm, weighted_mean

finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False)
positive = st.floats(min_value=1e-3, max_value=1e3, allow_nan=False, allow_infinity=False)


def test_weighted_mean_matches_numpy_average_on_hand_built_updates() -> None:
    # Prepare: three updates of two arrays, weights 1, 2, 5.
    rng = np.random.default_rng(0)
    updates = [
        {
            "w": rng.normal(size=(4, 3)).astype(np.float32),
            "b": rng.normal(size=3).astype(np.float32),
        }
        for _ in range(3)
    ]
    weights = [1.0, 2.0, 5.0]
    # Execute: a block smaller than the arrays so the fused loop crosses blocks.
    got = weighted_mean(zip(updates, weights, strict=True), block=5)
    # Assert
    for name in ("w", "b"):
        expected = np.average(np.stack([u[name] for u in updates]), axis=0, weights=weights)
        np.testing.assert_allclose(got[name], expected, rtol=1e-6, atol=1e-6)
        assert got[name].dtype == np.float32


def test_integer_arrays_are_rounded_back_to_their_dtype() -> None:
    got = weighted_mean([({"n": np.array([1, 3])}, 1.0), ({"n": np.array([2, 4])}, 1.0)])
    assert got["n"].dtype == np.array([1]).dtype
    np.testing.assert_array_equal(got["n"], [2, 4])  # rint(1.5)=2, rint(3.5)=4


def test_fused_axpy_is_in_place() -> None:
    acc = np.ones(10, dtype=np.float32)
    fused_axpy(acc, np.arange(10, dtype=np.float32), 0.5, np.empty(3, dtype=np.float32))
    np.testing.assert_allclose(acc, 1 + 0.5 * np.arange(10))


def _peak_of_adding(x: np.ndarray, n: int) -> tuple[int, StreamingMean]:
    mean = StreamingMean()
    tracemalloc.start()
    for _ in range(n):
        mean.add({"x": x}, 1.0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak, mean


def test_memory_does_not_grow_with_the_number_of_updates() -> None:
    # 40 updates of 200k float32 (0.8 MB each): a stacked mean would need 32 MB.
    x = np.ones(200_000, dtype=np.float32)
    one, _ = _peak_of_adding(x, 1)
    peak, mean = _peak_of_adding(x, 40)
    assert peak <= one + 4096  # nothing allocated per update
    assert peak < 2 * x.nbytes + 65536  # the accumulator plus a scratch of one array
    np.testing.assert_allclose(mean.result()["x"], 1.0)


def test_scratch_is_capped_at_the_block() -> None:
    x = np.ones(100_000, dtype=np.float32)
    mean = StreamingMean(block=1000)
    tracemalloc.start()
    mean.add({"x": x}, 1.0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < x.nbytes + 1000 * 4 + 4096  # the accumulator plus a 1000-element block


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 6),
    size=st.integers(1, 200),
    block=st.integers(1, 300),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_mean_is_bit_for_bit_the_plain_loop_whatever_the_block(
    data: st.DataObject, n: int, size: int, block: int, dtype: type
) -> None:
    # Oracle: ``acc += x * w`` (product rounded to the accumulator dtype, then added),
    # then ``acc *= 1 / total`` — the rounding StreamingMean promises, bit for bit.
    xs = [data.draw(arrays(dtype, size, elements=finite)) for _ in range(n)]
    ws = data.draw(st.lists(positive, min_size=n, max_size=n))
    acc, total = np.zeros(size, dtype=dtype), 0.0
    for x, w in zip(xs, ws, strict=True):
        acc += x * dtype(w)
        total += w
    acc *= dtype(1.0 / total)
    got = weighted_mean((({"x": x}, w) for x, w in zip(xs, ws, strict=True)), block=block)
    assert got["x"].dtype == dtype
    np.testing.assert_array_equal(got["x"], acc)


@pytest.mark.parametrize(
    ("updates", "message"),
    [
        ([], "no update"),
        ([({"x": np.ones(2)}, 0.0)], "sum to zero"),
        ([({"x": np.ones(2)}, -1.0)], "finite number >= 0"),
        ([({"x": np.ones(2)}, math.nan)], "finite number >= 0"),
        ([({"x": np.ones(2)}, 1.0), ({"x": np.ones(3)}, 1.0)], "shape"),
        ([({"x": np.ones(2)}, 1.0), ({"y": np.ones(2)}, 1.0)], "same array names"),
    ],
)
def test_bad_updates_are_refused_with_a_reason(updates: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        weighted_mean(updates)


@settings(max_examples=40, deadline=None)
@given(
    x=arrays(np.float64, st.integers(1, 30), elements=finite),
    weights=st.lists(positive, min_size=1, max_size=8),
)
def test_identical_updates_aggregate_to_themselves(x: np.ndarray, weights: list[float]) -> None:
    got = weighted_mean(((({"x": x}), w) for w in weights), block=7)
    np.testing.assert_allclose(got["x"], x, rtol=1e-9, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(weights=st.lists(positive, min_size=1, max_size=12))
def test_effective_weights_sum_to_one(weights: list[float]) -> None:
    # Update i is the i-th unit vector, so the mean *is* the vector of weights applied.
    n = len(weights)
    eye = np.eye(n)
    applied = weighted_mean(({"x": eye[i]}, w) for i, w in enumerate(weights))["x"]
    assert applied.sum() == pytest.approx(1.0, rel=1e-12)
    assert (applied >= 0).all()
    np.testing.assert_allclose(applied, np.asarray(weights) / sum(weights), rtol=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    a=arrays(np.float32, 17, elements=st.floats(-100, 100, width=32)),
    b=arrays(np.float32, 17, elements=st.floats(-100, 100, width=32)),
)
def test_update_norm_matches_numpy(a: np.ndarray, b: np.ndarray) -> None:
    expected = np.linalg.norm(a.astype(np.float64) - b.astype(np.float64))
    assert update_norm({"a": a}, {"a": b}, block=4) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_update_norm_is_nan_for_non_finite_updates_and_refuses_mismatches() -> None:
    base = {"a": np.zeros(3, dtype=np.float32)}
    assert math.isnan(update_norm({"a": np.array([0, np.inf, 0], dtype=np.float32)}, base))
    assert math.isnan(update_norm({"a": np.array([np.nan, 0, 0], dtype=np.float32)}, base))
    with pytest.raises(ValueError, match="shape"):
        update_norm({"a": np.zeros(4)}, base)
    with pytest.raises(ValueError, match="names"):
        update_norm({"b": np.zeros(3)}, base)
