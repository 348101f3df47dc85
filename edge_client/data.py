"""Where a client's training data comes from.

In simulation a client is a partition of a task's dataset: ``partition-id`` and
``num-partitions`` from the node config select the index array. Sites in deployment
read their own files instead (see the site runtime).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from tasks import PartitionSpec, get_task
from tasks.fairness import positive_weighted_indices, reweighed_indices
from tasks.partition import Partitions, partition


@dataclass(frozen=True)
class ClientData:
    """A client's local training and evaluation arrays; ``s_eval`` holds the sensitive
    attribute's group code of each evaluation sample when the task declares one."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_eval: np.ndarray
    y_eval: np.ndarray
    s_eval: np.ndarray | None = None
    s_train: np.ndarray | None = None

    def positive_weighted(self, weights: list[float], *, seed: int) -> ClientData:
        """This data with each group's positives counted ``weights[group]`` times
        (``tasks.fairness.positive_weighted_indices``; the server's equal-opportunity
        weights)."""
        if self.s_train is None:
            raise ValueError("equal-opportunity needs a task with a sensitive attribute")
        idx = positive_weighted_indices(self.y_train, self.s_train, weights, seed=seed)
        return replace(
            self, x_train=self.x_train[idx], y_train=self.y_train[idx], s_train=self.s_train[idx]
        )

    def reweighed(self, *, seed: int) -> ClientData:
        """This data with the training split resampled so that the label does not depend
        on the sensitive group (``tasks.fairness.reweighed_indices``)."""
        if self.s_train is None:
            raise ValueError("fairness-reweigh needs a task with a sensitive attribute")
        idx = reweighed_indices(self.y_train, self.s_train, seed=seed)
        return replace(
            self, x_train=self.x_train[idx], y_train=self.y_train[idx], s_train=self.s_train[idx]
        )


@lru_cache(maxsize=16)
def cached_partitions(
    task_name: str, num_partitions: int, partition_text: str, seed: int
) -> Partitions:
    """All clients' index arrays for one (task, N, partition, seed): computed once, kept
    as two flat arrays (``tasks.partition.Partitions``), whatever N is."""
    task = get_task(task_name)
    spec = PartitionSpec.parse(partition_text)
    if task.split_clients is not None:  # its own partitioner (a Hugging Face dataset)
        return Partitions.from_arrays(task.split_clients(num_partitions, spec, seed))
    data = task.load_data(seed)
    return partition(data.y_train, num_partitions, spec, seed=seed, groups=data.groups_train)


def partition_data(
    *, task_name: str, partition_id: int, num_partitions: int, partition: str, seed: int
) -> ClientData:
    """The simulated client's share of the task's training data.

    Each client evaluates on a held-out 10% of its own share (at least one sample when
    it has two or more).
    """
    if not 0 <= partition_id < num_partitions:
        raise ValueError(
            f"partition-id {partition_id} is outside 0..{num_partitions - 1}; "
            "check the node config of this client"
        )
    data = get_task(task_name).load_data(seed)
    idx = cached_partitions(task_name, num_partitions, partition, seed)[partition_id]
    n_eval = len(idx) // 10 if len(idx) >= 10 else min(1, len(idx) // 2)
    train_idx, eval_idx = idx[n_eval:], idx[:n_eval]
    return ClientData(
        x_train=data.x_train[train_idx],
        y_train=data.y_train[train_idx],
        x_eval=data.x_train[eval_idx],
        y_eval=data.y_train[eval_idx],
        s_eval=None if data.sensitive_train is None else data.sensitive_train[eval_idx],
        s_train=None if data.sensitive_train is None else data.sensitive_train[train_idx],
    )
