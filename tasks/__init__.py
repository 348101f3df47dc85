"""Named federated tasks: model, offline dataset, partitioning, local train and evaluate.

``tasks`` imports no other fedfleet package; everyone else imports it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tasks.base import Dataset, TaskSpec, TrainDefaults
    from tasks.partition import PartitionSpec, partition_indices
    from tasks.registry import available_tasks, get_task, is_task_name, register_task
    from tasks.training import EvalResult, TrainResult, evaluate, reported_loss, train_local

# Each name's module, imported on first use: naming a task or a partition (validating
# `fedfleet simulate` flags) must not import torch (tests/test_cli_startup.py).
_HOMES = {
    "Dataset": "tasks.base",
    "TaskSpec": "tasks.base",
    "TrainDefaults": "tasks.base",
    "PartitionSpec": "tasks.partition",
    "partition_indices": "tasks.partition",
    "available_tasks": "tasks.registry",
    "get_task": "tasks.registry",
    "is_task_name": "tasks.registry",
    "register_task": "tasks.registry",
    "EvalResult": "tasks.training",
    "TrainResult": "tasks.training",
    "evaluate": "tasks.training",
    "reported_loss": "tasks.training",
    "train_local": "tasks.training",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'tasks' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


__all__ = [
    "Dataset",
    "EvalResult",
    "PartitionSpec",
    "TaskSpec",
    "TrainDefaults",
    "TrainResult",
    "available_tasks",
    "evaluate",
    "get_task",
    "is_task_name",
    "partition_indices",
    "register_task",
    "reported_loss",
    "train_local",
]
