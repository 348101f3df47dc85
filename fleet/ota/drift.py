"""Input drift: the Population Stability Index per feature against the training reference.

Pure functions, no state. The training reference (:class:`fleet.models.ota.Reference`,
stored with the admin app's models) is, per feature, the interior edges of
``n_bins`` quantile bins of the training inputs and the fraction of training samples in
each bin. Devices count their inputs in the same bins (the edges travel in the install
command), so the fleet only ever sees counts, never inputs.

PSI (Siddiqi, *Credit Risk Scorecards*, 2006; statistical properties in Yurdakul,
"Statistical Properties of Population Stability Index", 2018)::

    PSI = sum_i (a_i - e_i) * ln(a_i / e_i)

over bins, with expected fractions ``e`` and actual fractions ``a`` (both floored at
``eps`` so an empty bin stays finite). Rule of thumb: < 0.1 stable, 0.1–0.25 moderate
shift, > 0.25 significant shift; the fleet raises a drift event above 0.2 by default.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fleet.models.ota import Reference

DEFAULT_BINS = 10
DEFAULT_THRESHOLD = 0.2
EPS = 1e-4


def reference_from_data(x: np.ndarray, *, n_bins: int = DEFAULT_BINS) -> Reference:
    """Quantile bins of each feature of ``x`` (shape ``(n, features...)``, flattened)."""
    if n_bins < 2:
        raise ValueError("n_bins must be at least 2")
    data = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    if len(data) < n_bins:
        raise ValueError(f"need at least {n_bins} samples to build {n_bins} bins")
    edges, props = [], []
    for column in data.T:
        interior = np.unique(np.quantile(column, np.linspace(0, 1, n_bins + 1)[1:-1]))
        counts = bin_counts(column, interior)
        edges.append(tuple(float(e) for e in interior))
        props.append(tuple(float(c) for c in counts / counts.sum()))
    return Reference(edges=tuple(edges), proportions=tuple(props), samples=len(data))


def bin_counts(values: np.ndarray, edges: Sequence[float] | np.ndarray) -> np.ndarray:
    """How many ``values`` fall in each bin (``v < e0``, ``e0 <= v < e1``, ..., ``v >= e_last``)."""
    index = np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="right")
    return np.bincount(index, minlength=len(edges) + 1)


def psi(expected: Sequence[float], actual: Sequence[float], *, eps: float = EPS) -> float:
    """Population Stability Index of ``actual`` against ``expected`` (fractions or counts)."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape or e.ndim != 1 or len(e) < 2:
        raise ValueError("expected and actual must be 1-D with the same number (>= 2) of bins")
    if np.any(e < 0) or np.any(a < 0) or e.sum() <= 0 or a.sum() <= 0:
        raise ValueError("bin counts must be non-negative with a positive total")
    e = np.maximum(e / e.sum(), eps)
    a = np.maximum(a / a.sum(), eps)
    return float(np.sum((a - e) * np.log(a / e)))


def psi_per_feature(reference: Reference, counts: Sequence[Sequence[int]]) -> list[float]:
    """PSI of each feature's observed bin ``counts``; features with no counts give 0."""
    if len(counts) != len(reference.proportions):
        raise ValueError(
            f"got counts for {len(counts)} features, the reference has {len(reference.proportions)}"
        )
    out = []
    for expected, observed in zip(reference.proportions, counts, strict=True):
        if len(observed) != len(expected):
            raise ValueError("observed bins do not match the reference's bins")
        out.append(psi(expected, observed) if sum(observed) > 0 else 0.0)
    return out
