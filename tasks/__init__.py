"""Named federated tasks: model, offline dataset, partitioning, local train and evaluate.

``tasks`` imports no other fedfleet package; everyone else imports it.
"""

from tasks.base import Dataset, TaskSpec, TrainDefaults
from tasks.partition import PartitionSpec, partition_indices
from tasks.registry import available_tasks, get_task, register_task
from tasks.training import EvalResult, TrainResult, evaluate, reported_loss, train_local

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
    "partition_indices",
    "register_task",
    "reported_loss",
    "train_local",
]
