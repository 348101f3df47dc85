"""Synthetic quality traffic: the knobs make a measurably worse or slower model."""

from __future__ import annotations

import pytest

from simulation.device_quality import TrafficModel, VersionQuality


def _accuracy(traffic: TrafficModel, version: int, windows: int = 40) -> float:
    correct = total = 0
    for seq in range(windows):
        _, feedback = traffic.window(seq=seq, model_version_id=version)
        assert feedback is not None and feedback.model_version_id == version
        correct += sum(v.correct for v in feedback.labels.values())
        total += sum(v.total for v in feedback.labels.values())
    return correct / total


def test_a_worse_and_a_slower_version_show_in_their_signals() -> None:
    # Prepare
    base = VersionQuality(accuracy=0.95, latency_ms=2.0)
    traffic = TrafficModel(by_version={1: base, 2: base.worse(3), 3: base.slower(2)}, seed=1)

    # Execute
    good, worse = _accuracy(traffic, 1), _accuracy(traffic, 2)
    fast, _ = traffic.window(seq=0, model_version_id=1)
    slow, _ = traffic.window(seq=1, model_version_id=3)

    # Assert
    assert 0.93 < good < 0.97 and 0.90 < worse < 0.94
    assert 1.7 < slow.latency_p95_ms / fast.latency_p95_ms < 2.3
    assert sum(fast.predictions.values()) == fast.count == 500


def test_bad_knobs_are_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="fractions in 0..1"):
        VersionQuality(accuracy=1.5)
    with pytest.raises(ValueError, match="labelled in 0..samples"):
        TrafficModel(samples=10, labelled=11)
