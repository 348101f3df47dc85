"""``breast-cancer-mlp``: scikit-learn's Wisconsin breast-cancer table with an MLP.

The hospital case: 30 numeric columns per patient, a binary diagnosis.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from tasks.base import Dataset, TaskSpec, TrainDefaults, scaled_split
from tasks.dataset_cache import cached_dataset, library_version
from tasks.registry import register_task

if TYPE_CHECKING:
    from torch import nn

# Column names as a site's CSV carries them: scikit-learn's, lower case, underscores
# (tests/tasks/test_tasks.py checks them against scikit-learn). Written out so that
# naming the task's columns imports neither scikit-learn nor torch.
FEATURE_NAMES = tuple(
    f"{part}_{name}" if part == "mean" or part == "worst" else f"{name}_{part}"
    for part in ("mean", "error", "worst")
    for name in (
        "radius",
        "texture",
        "perimeter",
        "area",
        "smoothness",
        "compactness",
        "concavity",
        "concave_points",
        "symmetry",
        "fractal_dimension",
    )
)

# Bump when the prepared arrays change, so that caches of the old ones are not read.
_PREPARATION = 1


def build_mlp() -> nn.Module:
    """30 → 32 → 2 with ReLU."""
    from torch import nn

    return nn.Sequential(nn.Linear(30, 32), nn.ReLU(), nn.Linear(32, 2))


@lru_cache(maxsize=4)
def load_breast_cancer_dataset(seed: int = 0) -> Dataset:
    """Features standardised with the training split's mean and std (per column; the
    test split is never looked at); stratified 80/20 (prepared once per scikit-learn
    version and kept on disk: tasks/dataset_cache.py)."""
    key = f"breast-cancer-seed{seed}-prep{_PREPARATION}-sklearn{library_version('scikit-learn')}"
    return cached_dataset(key, lambda: prepare_breast_cancer(seed))


def prepare_breast_cancer(seed: int) -> Dataset:
    """:func:`load_breast_cancer_dataset`, prepared with scikit-learn."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    x = bunch.data.astype(np.float32)
    y = bunch.target.astype(np.int64)
    return scaled_split(x, y, seed=seed, per_feature=True)


SPEC = register_task(
    TaskSpec(
        name="breast-cancer-mlp",
        description="scikit-learn breast cancer (30 features, 2 classes), MLP",
        build_model=build_mlp,
        load_data=load_breast_cancer_dataset,
        num_classes=2,
        input_shape=(30,),
        # 0.96 after 3 rounds of 10 iid clients (docs/simulation.md).
        defaults=TrainDefaults(learning_rate=0.05, momentum=0.9, batch_size=16, local_epochs=5),
        feature_names=FEATURE_NAMES,
    )
)
