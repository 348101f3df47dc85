"""References from a task's training inputs, and the bin convention devices share."""

from __future__ import annotations

import numpy as np
import pytest

from fleet.drift_reference import bin_counts, task_reference


def test_bins_are_closed_below_open_above() -> None:
    # A value equal to an edge counts in the bin above it: [lo, hi).
    counts = bin_counts(np.array([-5.0, 0.0, 0.5, 1.0, 9.0]), [0.0, 1.0])
    assert counts.tolist() == [1, 2, 2]


def test_digits_reference_bins_every_pixel_as_a_feature() -> None:
    # Prepare / Execute
    reference = task_reference("digits-cnn")

    # Assert: 8x8 pixels flattened, each with >= 2 bins summing to 1; blank corners
    # collapse to a single edge (two bins).
    assert len(reference.edges) == 64 and reference.samples > 1000
    assert all(
        len(p) == len(e) + 1 >= 2
        for e, p in zip(reference.edges, reference.proportions, strict=True)
    )
    assert all(abs(sum(p) - 1) < 1e-9 for p in reference.proportions)
    assert len(reference.edges[0]) == 1 and max(len(e) for e in reference.edges) >= 5


def test_an_unknown_task_has_no_reference_and_says_so() -> None:
    with pytest.raises(ValueError, match="PUT a reference"):
        task_reference("vendor-own-task")
