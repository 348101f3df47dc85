"""``digits-cnn``: scikit-learn's 8x8 handwritten digits with a small CNN."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from tasks.base import Dataset, TaskSpec, TrainDefaults, scaled_split
from tasks.dataset_cache import cached_dataset, library_version
from tasks.registry import register_task

if TYPE_CHECKING:
    from torch import nn


def build_digits_cnn() -> nn.Module:
    """:class:`tasks.digits_model.DigitsCNN` (its own module: importing the task loads
    no torch, so ``fedfleet simulate`` checks its flags against the data without it)."""
    from tasks.digits_model import DigitsCNN

    return DigitsCNN()


# Bump when the prepared arrays change, so that caches of the old ones are not read.
_PREPARATION = 2  # 2: standardised pixels (was: pixels / 16)


@lru_cache(maxsize=4)
def load_digits_dataset(seed: int = 0) -> Dataset:
    """Standardised pixels, shape (n, 1, 8, 8); a stratified 80/20 split by ``seed``
    (prepared once per scikit-learn version and kept on disk: tasks/dataset_cache.py)."""
    key = f"digits-cnn-seed{seed}-prep{_PREPARATION}-sklearn{library_version('scikit-learn')}"
    return cached_dataset(key, lambda: prepare_digits(seed))


def prepare_digits(seed: int) -> Dataset:
    """:func:`load_digits_dataset`, prepared with scikit-learn.

    The raw pixels (0..16, as scikit-learn and a site's records hold them) are scaled by
    one mean and standard deviation over all pixels of the training split: zero-mean,
    unit-variance inputs let the default learning rate train in a few rounds."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.data.astype(np.float32).reshape(-1, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    return scaled_split(x, y, seed=seed, per_feature=False)


SPEC = register_task(
    TaskSpec(
        name="digits-cnn",
        description="scikit-learn digits (8x8 images, 10 classes), small CNN",
        build_model=build_digits_cnn,
        load_data=load_digits_dataset,
        num_classes=10,
        input_shape=(1, 8, 8),
        # 0.93 after 5 rounds of 10 of 30 iid clients (docs/simulation.md); with one
        # local epoch and no momentum a client takes 3 small steps a round: chance.
        defaults=TrainDefaults(learning_rate=0.05, momentum=0.9, batch_size=16, local_epochs=5),
    )
)
