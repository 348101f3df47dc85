"""The round's fairness audit, from the replies of a federated evaluation.

Clients send their held-out accuracy and, when the run names the task's sensitive
attribute, per-group confusion counts (``eval-fairness-counts``; never predictions or
records). The coordinator sums the counts and reads group metrics from the sum
(:mod:`tasks.fairness`), and reads the accuracy distribution over clients from the
per-client accuracies a plain federated evaluation already returns.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Message

from edge_client.protocol import keys as k
from edge_client.protocol.secagg import AGGREGATED_CLIENTS
from tasks.fairness import (
    counts_from_flat,
    equal_opportunity_step,
    fairness_summary,
    sum_counts,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FairnessAudit:
    """What a run audits: ``sensitive_attribute`` ("" = group by client) and the names
    of its group codes (the task's ``sensitive_groups``)."""

    sensitive_attribute: str = ""
    group_names: tuple[str, ...] = ()

    @classmethod
    def for_task(cls, task_name: str, sensitive_attribute: str) -> FairnessAudit:
        """The audit of a run of ``task_name`` (RunConfig has validated the attribute)."""
        if not sensitive_attribute:
            return cls()
        from tasks import get_task

        return cls(sensitive_attribute, get_task(task_name).sensitive_groups)

    def summarize(
        self, replies: list[Message], *, secure_counts: Message | None = None
    ) -> dict[str, Any] | None:
        """The round's fairness record from the evaluate replies; None without replies.

        A reply without counts (a client that could not count) is left out of the group
        metrics, and the record says how many clients' counts it holds. Under secure
        aggregation the counts are not in the evaluate replies: ``secure_counts`` is the
        round's aggregated train reply, whose ``eval-fairness-counts`` is the unmasked sum
        of the survivors' counts of the model the round started from.
        """
        accuracies: dict[str, tuple[int, float]] = {}
        parts = []
        for reply in replies:
            metrics = reply.content.metric_records.get(k.METRICS)
            if metrics is None or k.EVAL_ACCURACY not in metrics:
                continue
            node = str(reply.metadata.src_node_id)
            accuracies[node] = (
                int(metrics.get(k.NUM_EXAMPLES, 0)),  # type: ignore[arg-type]
                float(metrics[k.EVAL_ACCURACY]),  # type: ignore[arg-type]
            )
            flat = metrics.get(k.EVAL_FAIRNESS_COUNTS)
            if self.sensitive_attribute and isinstance(flat, list):
                try:
                    parts.append(counts_from_flat(flat, n_groups=len(self.group_names)))  # type: ignore[arg-type]
                except ValueError as exc:  # one client's bad vector never spoils the audit
                    log.warning("client %s: %s; left out of the fairness audit", node, exc)
        if not accuracies:
            return None
        counted = len(parts)
        if secure_counts is not None:
            parts, counted = self._unmasked(secure_counts)
        summary = fairness_summary(
            client_accuracies=accuracies,
            counts=sum_counts(parts) if parts else None,
            group_names=self.group_names,
            sensitive_attribute=self.sensitive_attribute if parts else None,
        )
        if self.sensitive_attribute:
            summary["clients_counted"] = counted
        if secure_counts is not None:
            summary["counts"] = "secure-aggregation sum, model at the start of the round"
        return summary

    def _unmasked(self, reply: Message) -> tuple[list[np.ndarray], int]:
        metrics = reply.content.metric_records[k.METRICS]
        flat = metrics.get(k.EVAL_FAIRNESS_COUNTS)
        clients = metrics.get(AGGREGATED_CLIENTS, 0)
        if not isinstance(flat, list):
            return [], 0
        return [counts_from_flat(flat, n_groups=len(self.group_names))], int(clients)  # type: ignore[arg-type,call-overload]


MAX_POSITIVE_WEIGHT = 3.0  # cap on a group's positive weight (exp of the multiplier)


@dataclass
class EqualOpportunityWeights:
    """The server's equal-opportunity multipliers (``--equal-opportunity RATE``).

    After each round's audit it steps the multipliers from the groups' true-positive
    rates (:func:`tasks.fairness.equal_opportunity_step`, Jiang & Nachum 2020) and the
    next train instruction carries ``exp(λ_g)`` per group code
    (``fairness-positive-weights``); clients count their positives of group ``g`` that
    many times (:func:`tasks.fairness.positive_weighted_indices`). It reads only the
    audit's summed counts, so it works unchanged under secure aggregation; the model
    does not take the attribute as input, nor does serving it need it.
    """

    group_names: tuple[str, ...]
    rate: float
    log_weights: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.log_weights:
            self.log_weights = [0.0] * len(self.group_names)

    def weights(self) -> list[float]:
        """``exp(λ_g)`` per group code: what the next train instruction carries."""
        return [math.exp(lam) for lam in self.log_weights]

    def update(self, audit: dict[str, Any] | None) -> None:
        """Step from a round's audit (no step without per-group rates)."""
        groups = (audit or {}).get("groups")
        if not isinstance(groups, dict) or not any(name in groups for name in self.group_names):
            return
        tpr = [float(groups.get(name, {}).get("tpr", math.nan)) for name in self.group_names]
        self.log_weights = equal_opportunity_step(
            self.log_weights, tpr, rate=self.rate, max_log_weight=math.log(MAX_POSITIVE_WEIGHT)
        )

    def restore(self, extra: dict[str, float]) -> None:
        """Resume from the weights a checkpointed round recorded (:meth:`round_stats`)."""
        for i, name in enumerate(self.group_names):
            weight = extra.get(f"eo_weight_{name}")
            if weight is not None and weight > 0:
                self.log_weights[i] = math.log(weight)

    def round_stats(self) -> dict[str, float]:
        """The weights as per-round floats for ``RoundRecord.extra``."""
        return {
            f"eo_weight_{name}": w for name, w in zip(self.group_names, self.weights(), strict=True)
        }
