"""The task contract: what every named task provides."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the contract names torch's Module; importing a task loads no torch
    from torch import nn

    from tasks.partition import PartitionSpec


@dataclass(frozen=True)
class Dataset:
    """A task's full offline dataset, already preprocessed.

    ``x_*`` are float32 arrays shaped ``(n, *input_shape)``; ``y_*`` are int64 class ids.
    ``groups_train`` holds the natural owner of each training sample (for the synthetic
    task, the generating user), or ``None`` where the data has no natural owners.

    ``input_mean``/``input_std`` are the task's input scaling: ``x = (raw - mean) / std``,
    fit on the raw TRAINING split only (never the test split) and already applied to
    ``x_train`` and ``x_test``; their shapes broadcast against one sample of
    ``input_shape`` (a scalar for images, one value per column for tables). A site that
    reads its own raw records applies the same scaling (:meth:`scale_raw`), so every
    party feeds the model what it was trained on. ``None`` where the raw features are
    the model's inputs already.

    ``sensitive_train``/``sensitive_test`` hold, for a task that declares a sensitive
    attribute (:attr:`TaskSpec.sensitive_attribute`), each sample's group code
    (``0 .. len(TaskSpec.sensitive_groups) - 1``); the attribute is not a model input.
    ``None`` for tasks without one.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    groups_train: np.ndarray | None = None
    input_mean: np.ndarray | None = None
    input_std: np.ndarray | None = None
    sensitive_train: np.ndarray | None = None
    sensitive_test: np.ndarray | None = None

    def __post_init__(self) -> None:
        if len(self.x_train) != len(self.y_train) or len(self.x_test) != len(self.y_test):
            raise ValueError("Dataset: features and labels must have the same length")
        if (self.sensitive_train is None) != (self.sensitive_test is None):
            raise ValueError("Dataset: sensitive_train and sensitive_test are given together")
        if self.sensitive_train is not None and (
            len(self.sensitive_train) != len(self.y_train)
            or len(self.sensitive_test) != len(self.y_test)  # type: ignore[arg-type]
        ):
            raise ValueError("Dataset: sensitive attributes must have one value per sample")
        if (self.input_mean is None) != (self.input_std is None):
            raise ValueError("Dataset: input_mean and input_std are given together or not at all")

    def scale_raw(self, x_raw: np.ndarray) -> np.ndarray:
        """Raw records (shaped ``(n, *input_shape)``) scaled as ``x_train`` was, float32."""
        if self.input_mean is None or self.input_std is None:
            return np.asarray(x_raw, dtype=np.float32)
        return ((x_raw - self.input_mean) / self.input_std).astype(np.float32)


def fit_scaling(x_train_raw: np.ndarray, *, per_feature: bool) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of the raw training split: one pair per feature
    (tables) or one for all values (images, whose pixels share a scale). A constant
    feature gets std 1, so it scales to 0 rather than to a division by zero."""
    if per_feature:
        mean, std = x_train_raw.mean(axis=0), x_train_raw.std(axis=0)
    else:
        mean, std = np.asarray(x_train_raw.mean()), np.asarray(x_train_raw.std())
    std = np.where(std > 0, std, 1.0)
    return mean.astype(np.float32), std.astype(np.float32)


def scaled_split(x_raw: np.ndarray, y: np.ndarray, *, seed: int, per_feature: bool) -> Dataset:
    """A stratified 80/20 split by ``seed``, scaled with :func:`fit_scaling` of the
    training split only (the test split is never looked at)."""
    from sklearn.model_selection import train_test_split

    x_tr, x_te, y_tr, y_te = train_test_split(
        x_raw, y, test_size=0.2, random_state=seed, stratify=y
    )
    mean, std = fit_scaling(x_tr, per_feature=per_feature)
    return Dataset(
        x_train=((x_tr - mean) / std).astype(np.float32),
        y_train=y_tr,
        x_test=((x_te - mean) / std).astype(np.float32),
        y_test=y_te,
        input_mean=mean,
        input_std=std,
    )


@dataclass(frozen=True)
class TrainDefaults:
    """Default local-training hyper-parameters of a task (minibatch SGD with momentum).

    The one home of these defaults: the coordinator fills every one a run does not set
    from its task's (``RunConfig.with_task_defaults``), and sends them to the clients
    with each round. ``momentum`` is SGD's heavy-ball coefficient (``torch.optim.SGD``,
    no dampening), its buffer starting at zero each round. Each built-in task's values
    were measured to reach its accuracy target in a few rounds (docs/simulation.md).
    """

    learning_rate: float = 0.05
    momentum: float = 0.0
    batch_size: int = 16
    local_epochs: int = 1


@dataclass(frozen=True)
class TaskSpec:
    """Everything the coordinator, clients, simulator and exporter need about a task.

    ``build_model`` must be deterministic given torch's global seed and use no
    BatchNorm (it breaks DP-SGD and batched per-client training).
    ``load_data(seed)`` generates or loads the dataset offline; it never downloads.
    ``feature_names`` names the input columns of a tabular task (a site's CSV schema).
    ``sensitive_attribute`` names a protected attribute the task's data carries (not a
    model input; fairness audits group by it), ``sensitive_groups`` its values' names in
    code order (``Dataset.sensitive_*`` hold the codes).
    ``split_clients(num_clients, partition, seed)``, where given, replaces
    ``tasks.partition_indices`` for this task: one index array into ``x_train`` per client
    (a Hugging Face dataset is split by flwr-datasets' partitioners: tasks/hf_data.py).
    """

    name: str
    description: str
    build_model: Callable[[], nn.Module]
    load_data: Callable[[int], Dataset]
    num_classes: int
    input_shape: tuple[int, ...]
    defaults: TrainDefaults = field(default_factory=TrainDefaults)
    feature_names: tuple[str, ...] | None = None
    sensitive_attribute: str | None = None
    sensitive_groups: tuple[str, ...] = ()
    split_clients: Callable[[int, PartitionSpec, int], list[np.ndarray]] | None = None
