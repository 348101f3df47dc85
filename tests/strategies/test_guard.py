"""The update guard: non-finite, oversized and malformed updates are rejected and counted."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

from strategies.aggregation import BLOCK, update_norm
from strategies.guard import BaseArrays, UpdateGuard, Verdict

BASE = {"w": np.zeros((2, 2), dtype=np.float32), "b": np.zeros(2, dtype=np.float32)}


def _arrays(value: float, w: float | None = None) -> dict[str, np.ndarray]:
    return {
        "w": np.full((2, 2), value if w is None else w, dtype=np.float32),
        "b": np.full(2, value, dtype=np.float32),
    }


def test_guard_keeps_good_updates_and_counts_each_rejection(make_reply, record_of) -> None:
    # Prepare: norms 0.6 (ok), 6.0 (too big), a NaN, an inf, a wrong shape.
    base = record_of(BASE)
    replies = [
        make_reply(1000, _arrays(0.2, w=0.2)),
        make_reply(1001, _arrays(2.0, w=2.0)),
        make_reply(1002, _arrays(0.1, w=math.nan)),
        make_reply(1003, _arrays(math.inf)),
        make_reply(1004, {"w": np.zeros((3, 2), dtype=np.float32), "b": np.zeros(2, np.float32)}),
    ]
    guard = UpdateGuard(max_norm=1.0)
    # Execute
    kept, stats = guard.filter(3, replies, base_of=lambda m: base)
    # Assert
    assert [m.metadata.src_node_id for m in kept] == [1000]
    assert stats["rejected"] == 4
    assert stats["rejected_norm"] == 1
    assert stats["rejected_nonfinite"] == 2
    assert stats["rejected_malformed"] == 1
    assert stats["update_norm_max"] == pytest.approx(np.sqrt(6 * 0.2**2), rel=1e-6)


def test_without_a_bound_large_finite_updates_pass(make_reply, record_of) -> None:
    guard = UpdateGuard(max_norm=None)
    verdict, norm = guard.verdict(make_reply(1, _arrays(1e6)), record_of(BASE))
    assert verdict is Verdict.OK
    assert norm == pytest.approx(np.sqrt(6) * 1e6, rel=1e-6)


def test_unknown_base_still_rejects_non_finite(make_reply) -> None:
    guard = UpdateGuard(max_norm=1.0)
    assert guard.verdict(make_reply(1, _arrays(5.0)), None)[0] is Verdict.OK
    assert guard.verdict(make_reply(1, _arrays(math.nan)), None)[0] is Verdict.NON_FINITE


@pytest.mark.parametrize("weight", [-1.0, math.inf, math.nan])
def test_bad_example_counts_are_malformed(weight: float, make_reply, record_of) -> None:
    guard = UpdateGuard()
    verdict, _ = guard.verdict(make_reply(1, _arrays(0.0), num_examples=weight), record_of(BASE))
    assert verdict is Verdict.MALFORMED


def test_replies_without_arrays_or_weight_are_malformed(make_instruction, record_of) -> None:
    no_arrays = Message(
        RecordDict({"metrics": MetricRecord({"num-examples": 3})}), reply_to=make_instruction(1)
    )
    no_weight = Message(
        RecordDict({"arrays": ArrayRecord(), "metrics": MetricRecord({"loss": 1.0})}),
        reply_to=make_instruction(2),
    )
    guard = UpdateGuard()
    assert guard.verdict(no_arrays, record_of(BASE))[0] is Verdict.MALFORMED
    assert guard.verdict(no_weight, record_of(BASE))[0] is Verdict.MALFORMED


@pytest.mark.parametrize("bound", [0.0, -1.0, math.inf, math.nan])
def test_a_bound_must_be_a_positive_number(bound: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        UpdateGuard(max_norm=bound)


def test_base_decoded_once_gives_update_norms_exact_value(record_of) -> None:
    # Oracle: the precomputed base must give update_norm's float64 value bit for bit,
    # also for a layer longer than one summation block.
    rng = np.random.default_rng(7)
    base = {
        "w": rng.normal(size=(BLOCK + 123,)).astype(np.float32),
        "b": rng.normal(size=(3, 5)).astype(np.float32),
    }
    update = {
        k: (v + rng.normal(scale=0.1, size=v.shape)).astype(np.float32) for k, v in base.items()
    }
    decoded = BaseArrays(record_of(base))
    assert decoded.distance(update) == update_norm(update, base)
    assert decoded.distance(update) == decoded.distance(update)  # the scratch is reusable
    with pytest.raises(ValueError, match="shape"):
        decoded.distance({"w": base["w"], "b": np.zeros((5, 3), np.float32)})
    with pytest.raises(ValueError, match="names"):
        decoded.distance({"w": base["w"]})
