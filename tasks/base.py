"""The task contract: what every named task provides."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from torch import nn


@dataclass(frozen=True)
class Dataset:
    """A task's full offline dataset, already preprocessed.

    ``x_*`` are float32 arrays shaped ``(n, *input_shape)``; ``y_*`` are int64 class ids.
    ``groups_train`` holds the natural owner of each training sample (for the synthetic
    task, the generating user), or ``None`` where the data has no natural owners.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    groups_train: np.ndarray | None = None

    def __post_init__(self) -> None:
        if len(self.x_train) != len(self.y_train) or len(self.x_test) != len(self.y_test):
            raise ValueError("Dataset: features and labels must have the same length")


@dataclass(frozen=True)
class TrainDefaults:
    """Default local-training hyper-parameters of a task (plain minibatch SGD)."""

    learning_rate: float = 0.05
    batch_size: int = 16
    local_epochs: int = 1


@dataclass(frozen=True)
class TaskSpec:
    """Everything the coordinator, clients, simulator and exporter need about a task.

    ``build_model`` must be deterministic given torch's global seed and use no
    BatchNorm (it breaks DP-SGD and batched per-client training).
    ``load_data(seed)`` generates or loads the dataset offline; it never downloads.
    ``feature_names`` names the input columns of a tabular task (a site's CSV schema).
    """

    name: str
    description: str
    build_model: Callable[[], nn.Module]
    load_data: Callable[[int], Dataset]
    num_classes: int
    input_shape: tuple[int, ...]
    defaults: TrainDefaults = field(default_factory=TrainDefaults)
    feature_names: tuple[str, ...] | None = None
