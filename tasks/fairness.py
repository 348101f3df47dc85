"""Fairness arithmetic: per-group confusion counts, and the group metrics that follow from
their sums. Pure functions; the client computes counts, the coordinator sums and reads them.

Only counts leave a client: for each group value, the true positives, false positives,
true negatives and false negatives of the model on the client's held-out data (positive
= class 1). Counts add up across clients, so the coordinator's metrics from the summed
counts equal the metrics computed centrally on the union of the clients' data — the
same numbers fairlearn's ``MetricFrame``, ``demographic_parity_difference`` and
``equalized_odds_difference`` (``method="between_groups"``, ``agg="worst_case"``) give
(tests/tasks/test_fairness_oracle.py). Sums of counts can travel inside a
secure-aggregation sum like any other vector of integers.

Per-client accuracies (what a plain federated evaluation already returns) give the
distribution over clients: worst decile, standard deviation, largest gap.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# Order of the four counts of one group in a flat vector.
COUNT_FIELDS = ("tp", "fp", "tn", "fn")


def group_confusion_counts(
    y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray, *, n_groups: int
) -> np.ndarray:
    """``(n_groups, 4)`` int64 counts (:data:`COUNT_FIELDS`) of a binary classifier's
    predictions per group code ``0 .. n_groups - 1`` (positive = class 1)."""
    y_true = np.asarray(y_true).astype(np.int64)
    y_pred = np.asarray(y_pred).astype(np.int64)
    groups = np.asarray(groups).astype(np.int64)
    if not (len(y_true) == len(y_pred) == len(groups)):
        raise ValueError("labels, predictions and groups must have one value per sample")
    if len(groups) and (groups.min() < 0 or groups.max() >= n_groups):
        raise ValueError(f"group codes must lie in 0..{n_groups - 1}")
    # cell = group * 4 + index in COUNT_FIELDS
    kind = np.where(y_pred == 1, np.where(y_true == 1, 0, 1), np.where(y_true == 1, 3, 2)).astype(
        np.int64
    )
    flat = np.bincount(groups * 4 + kind, minlength=n_groups * 4)
    return flat.reshape(n_groups, 4).astype(np.int64)


def counts_from_flat(values: Sequence[int], *, n_groups: int) -> np.ndarray:
    """A flat count vector (as it travels in a metric record) back to ``(n_groups, 4)``."""
    arr = np.asarray(values, dtype=np.int64)
    if arr.shape != (n_groups * 4,) or (arr < 0).any():
        raise ValueError(f"fairness counts: expected {n_groups * 4} counts >= 0")
    return arr.reshape(n_groups, 4)


def sum_counts(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Element-wise sum of clients' ``(n_groups, 4)`` counts (what secure aggregation
    would reveal)."""
    if not parts:
        raise ValueError("sum_counts needs at least one client's counts")
    return np.sum(np.stack(parts), axis=0).astype(np.int64)


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def _spread(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return max(finite) - min(finite) if finite else math.nan


def group_metrics(counts: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """Per-group and between-group metrics from summed counts.

    Returns ``groups`` ({name: {n, accuracy, selection_rate, tpr, fpr}}; groups with no
    sample are left out, as fairlearn leaves out groups absent from the data),
    ``demographic_parity_difference`` (largest minus smallest selection rate) and
    ``equalized_odds_difference`` (the larger of the TPR and FPR spreads; a rate whose
    denominator is 0 in a group is left out of its spread).
    """
    if counts.shape != (len(names), 4):
        raise ValueError(f"counts must be shaped ({len(names)}, 4)")
    groups: dict[str, dict[str, float | int]] = {}
    for name, (tp, fp, tn, fn) in zip(names, counts.tolist(), strict=True):
        n = tp + fp + tn + fn
        if n == 0:
            continue
        groups[name] = {
            "n": n,
            "accuracy": (tp + tn) / n,
            "selection_rate": (tp + fp) / n,
            "tpr": _ratio(tp, tp + fn),
            "fpr": _ratio(fp, fp + tn),
        }
    rows = groups.values()
    tpr_gap = _spread([float(g["tpr"]) for g in rows])
    fpr_gap = _spread([float(g["fpr"]) for g in rows])
    return {
        "groups": groups,
        "demographic_parity_difference": _spread([float(g["selection_rate"]) for g in rows]),
        "equalized_odds_difference": max(
            (gap for gap in (tpr_gap, fpr_gap) if not math.isnan(gap)), default=math.nan
        ),
    }


def accuracy_distribution(accuracies: Sequence[float]) -> dict[str, float]:
    """Worst-decile mean (the mean of the lowest ``ceil(10 %)`` values), population
    standard deviation and largest gap (max − min) of per-client accuracies."""
    values = sorted(float(a) for a in accuracies if not math.isnan(float(a)))
    if not values:
        return {"worst_decile_accuracy": math.nan, "accuracy_std": math.nan, "max_gap": math.nan}
    k = max(1, math.ceil(len(values) / 10))
    return {
        "worst_decile_accuracy": float(np.mean(values[:k])),
        "accuracy_std": float(np.std(values)),
        "max_gap": values[-1] - values[0],
    }


def fairness_summary(
    *,
    client_accuracies: Mapping[str, tuple[int, float]],
    counts: np.ndarray | None = None,
    group_names: Sequence[str] = (),
    sensitive_attribute: str | None = None,
) -> dict[str, Any]:
    """One round's fairness record (the ``fairness`` object of metrics.json).

    ``client_accuracies`` maps a client's name to (held-out samples, accuracy); empty
    when secure aggregation hides per-client values. With ``counts`` (summed per-group
    counts of ``sensitive_attribute``) the groups are its values; without, the clients.
    ``max_gap`` is the largest gap between the groups' accuracies, ``client_max_gap``
    that between clients'; ``worst_decile_accuracy`` and ``accuracy_std`` are over clients.
    """
    spread = accuracy_distribution([acc for _, acc in client_accuracies.values()])
    summary: dict[str, Any] = {
        "worst_decile_accuracy": spread["worst_decile_accuracy"],
        "accuracy_std": spread["accuracy_std"],
        "client_max_gap": spread["max_gap"],
        "clients": len(client_accuracies),
    }
    if counts is not None and sensitive_attribute:
        metrics = group_metrics(counts, group_names)
        accuracies = [float(g["accuracy"]) for g in metrics["groups"].values()]
        summary.update(
            group_by=sensitive_attribute,
            sensitive_attribute=sensitive_attribute,
            groups=metrics["groups"],
            demographic_parity_difference=metrics["demographic_parity_difference"],
            equalized_odds_difference=metrics["equalized_odds_difference"],
        )
    else:
        summary.update(
            group_by="client",
            groups={
                name: {"n": n, "accuracy": acc}
                for name, (n, acc) in sorted(client_accuracies.items())
            },
        )
        accuracies = [acc for _, acc in client_accuracies.values()]
    finite = [a for a in accuracies if not math.isnan(a)]
    summary["worst_group_accuracy"] = min(finite) if finite else math.nan
    summary["max_gap"] = _spread(finite)
    return summary


def reweighed_indices(y: np.ndarray, groups: np.ndarray, *, seed: int) -> np.ndarray:
    """Uniform resampling (Kamiran & Calders, "Data preprocessing techniques for
    classification without discrimination", KAIS 2012, §4.2): indices into ``(y, groups)``
    where each (group, label) cell holds its expected size under independence,
    ``n_g · n_y / n``, drawn with replacement from the cell (deterministic by ``seed``).
    The label then no longer depends on the group in the training data; a cell that is
    empty stays empty. The total stays ``n`` up to rounding.
    """
    y = np.asarray(y)
    groups = np.asarray(groups)
    n = len(y)
    rng = np.random.default_rng(seed)
    picked = []
    for g in np.unique(groups):
        in_group = groups == g
        for label in np.unique(y):
            cell = np.flatnonzero(in_group & (y == label))
            if len(cell) == 0:
                continue
            target = round(int(in_group.sum()) * int((y == label).sum()) / n)
            picked.append(rng.choice(cell, size=target, replace=True))
    return np.sort(np.concatenate(picked)) if picked else np.empty(0, dtype=np.int64)


def positive_weighted_indices(
    y: np.ndarray, groups: np.ndarray, weights: Sequence[float], *, seed: int
) -> np.ndarray:
    """Indices into ``(y, groups)`` in which the positives (``y == 1``) of group code
    ``g`` count ``weights[g]`` times (expected): a weight ``w ≥ 1`` keeps every one and
    adds ``round((w - 1) · n_cell)`` drawn with replacement, a weight below 1 keeps
    ``round(w · n_cell)`` of them. Every other sample is kept once. Resampling is the
    client's form of a weighted loss (deterministic by ``seed``); the weights come from
    :func:`equal_opportunity_step`.
    """
    y = np.asarray(y)
    groups = np.asarray(groups)
    if any(not (w >= 0.0 and math.isfinite(w)) for w in weights):
        raise ValueError("fairness weights must be finite and >= 0")
    rng = np.random.default_rng(seed)
    picked = [np.flatnonzero((y != 1) | (groups >= len(weights)))]
    for g, w in enumerate(weights):
        cell = np.flatnonzero((y == 1) & (groups == g))
        if len(cell) == 0:
            continue
        if w >= 1.0:
            extra = round((w - 1.0) * len(cell))
            picked += [cell, rng.choice(cell, size=extra, replace=True)]
        else:
            picked.append(rng.choice(cell, size=round(w * len(cell)), replace=False))
    return np.sort(np.concatenate(picked)).astype(np.int64)


def equal_opportunity_step(
    log_weights: Sequence[float],
    group_tpr: Sequence[float],
    *,
    rate: float,
    max_log_weight: float,
) -> list[float]:
    """One multiplier step of the equal-opportunity reweighting of Jiang & Nachum
    ("Identifying and correcting label bias in machine learning", AISTATS 2020):
    ``λ_g ← clip(λ_g + rate · (TPR̄ − TPR_g), 0, max_log_weight)`` with ``TPR̄`` the
    mean of the groups' true-positive rates; the positives of group ``g`` then weigh
    ``exp(λ_g)``. A group whose TPR is below the mean gains weight on its positives, one
    above loses it (never below weight 1). A group without a TPR this round (nan: no
    positives) keeps its multiplier and is left out of the mean.

    Under label bias that records some positives of one group as negatives (Blum &
    Stangl, "Recovering from biased data", FORC 2020) the observed positives of that
    group are still an unbiased sample of its true positives, so its TPR on the
    recorded labels measures its TPR on the true ones: equalising it undoes the bias.
    """
    if len(log_weights) != len(group_tpr):
        raise ValueError("one multiplier per group")
    if not (rate >= 0.0 and max_log_weight >= 0.0):
        raise ValueError("rate and max_log_weight must be >= 0")
    known = [t for t in group_tpr if not math.isnan(t)]
    target = sum(known) / len(known) if known else math.nan
    out = []
    for lam, tpr in zip(log_weights, group_tpr, strict=True):
        if math.isnan(tpr):
            out.append(float(lam))
            continue
        out.append(float(min(max(lam + rate * (target - tpr), 0.0), max_log_weight)))
    return out
