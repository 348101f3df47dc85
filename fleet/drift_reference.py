"""A model version's drift reference from its task's training inputs.

The reference drift is measured against (:class:`fleet.models.ota.Reference`) is, per
**feature**, the interior edges of ``n_bins`` quantile bins of the training inputs and the
fraction of training samples in each bin. A feature is one column of the model's input
flattened per sample (``x.reshape(n, -1)``, C order) — exactly what a device bins
(``edge_client/device_agent.py``): a table's columns, an image's pixels (the digits task:
64 pixels of 8×8). Bins are ``[lo, hi)``: a value equal to an edge falls in the bin
above it (``searchsorted(side="right")``), the first bin is ``(-inf, e0)``, the last
``[e_last, +inf)``. Quantile edges that coincide (a pixel that is nearly always 0) are
merged, so such a feature has fewer bins.

:func:`task_reference` builds one from a registered task's training split when a model
version is registered (``fleet.crud.registry.register_model``). It refuses (ValueError
with the reason) a task the fleet does not know, or inputs of more than 4096 features
(the protocol's ``MAX_FEATURES``: larger images would need a summary the device does not
compute, e.g. block means; such versions get their reference by ``PUT``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fleet.models.ota import REFERENCE_MAX_FEATURES, Reference

DEFAULT_BINS = 10


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


def task_reference(task: str, *, seed: int = 0, n_bins: int = DEFAULT_BINS) -> Reference:
    """The reference of task ``task``'s training inputs (its data loaded with ``seed``, as
    the model's inputs: already scaled); ValueError naming why there is none."""
    from tasks.registry import available_tasks, get_task

    if task not in available_tasks():
        raise ValueError(f"task '{task}' is not one the fleet knows; PUT a reference instead")
    spec = get_task(task)
    features = int(np.prod(spec.input_shape))
    if features > REFERENCE_MAX_FEATURES:
        raise ValueError(
            f"task '{task}' has {features} input values per sample, more than the "
            f"{REFERENCE_MAX_FEATURES} features a device bins; PUT a reference instead"
        )
    return reference_from_data(spec.load_data(seed).x_train, n_bins=n_bins)
