"""The round's fairness audit, from the replies of a federated evaluation.

Clients send their held-out accuracy and, when the run names the task's sensitive
attribute, per-group confusion counts (``eval-fairness-counts``; never predictions or
records). The coordinator sums the counts and reads group metrics from the sum
(:mod:`tasks.fairness`), and reads the accuracy distribution over clients from the
per-client accuracies a plain federated evaluation already returns.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Message

from edge_client.protocol import keys as k
from edge_client.protocol.secagg import AGGREGATED_CLIENTS
from tasks.fairness import counts_from_flat, fairness_summary, sum_counts

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
