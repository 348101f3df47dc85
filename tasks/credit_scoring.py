"""``credit-scoring``: a bank's loan book from a generator with a protected attribute, MLP.

The bank case: each applicant has eight numeric columns and a binary label, 1 = the
loan was repaid. The generator (deterministic by seed, no downloads) builds in the two
biases fairness audits look for in lending data (Barocas, Hardt & Narayanan, *Fairness
and Machine Learning*, ch. 3; Kamiran & Calders 2012 for label bias):

- **A group-dependent shift of the features.** ``sex`` (0 = male, 1 = female) is drawn
  per applicant, with a share of women that differs by branch (5 % to 80 %). Women's
  log-income is 0.25 lower at equal age (a pay gap) and they work part time more often;
  income, debt-to-income ratio and part time then carry the attribute into the model
  although ``sex`` itself is not an input.
- **Label bias.** Repayment follows a latent creditworthiness that does not depend on
  ``sex`` — but the recorded label of 20 % of the women who did repay says default
  (historical decisions and collection practice written into the data).

Each applicant belongs to one of 20 branches (``groups_train``), so
``--partition natural`` gives every client the mix of its branches: non-IID by group.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from tasks.base import Dataset, TaskSpec, TrainDefaults, fit_scaling
from tasks.registry import register_task

if TYPE_CHECKING:
    from torch import nn

FEATURE_NAMES = (
    "income",
    "debt",
    "debt_to_income",
    "age",
    "credit_history_years",
    "late_payments",
    "open_accounts",
    "part_time",
)
SENSITIVE_ATTRIBUTE = "sex"
SENSITIVE_GROUPS = ("male", "female")
APPLICANTS = 12_000
BRANCHES = 20
PAY_GAP = 0.25  # lower log-income of women at equal age
LABEL_BIAS = 0.20  # share of women who repaid recorded as a default


def generate_credit(
    *, applicants: int, branches: int, seed: int, label_bias: float = LABEL_BIAS
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_raw, y, sex, branch)`` of ``applicants`` loan applications (see the module).

    ``x_raw`` is float32 in :data:`FEATURE_NAMES` order (income and debt in thousands a
    year), ``y`` int64 (1 = repaid), ``sex`` int64 codes of :data:`SENSITIVE_GROUPS`,
    ``branch`` int64 in ``0 .. branches - 1``.
    """
    if applicants < 1 or branches < 1 or not 0.0 <= label_bias <= 1.0:
        raise ValueError("credit generator: applicants, branches >= 1 and label_bias in [0, 1]")
    rng = np.random.default_rng([seed, 0xC4ED17])
    branch = rng.integers(0, branches, applicants)
    female_share = np.linspace(0.05, 0.8, branches)[branch]
    sex = (rng.random(applicants) < female_share).astype(np.int64)
    age = rng.uniform(21, 70, applicants)
    part_time = (rng.random(applicants) < np.where(sex == 1, 0.35, 0.08)).astype(np.float64)
    log_income = (
        np.log(45.0) + 0.012 * (age - 40) - PAY_GAP * sex - 0.45 * part_time
    ) + rng.normal(0, 0.35, applicants)
    income = np.exp(log_income)
    debt = income * rng.beta(2, 5, applicants) * 1.2
    history = np.minimum(age - 18, rng.gamma(4, 3, applicants))
    open_accounts = rng.poisson(3 + 0.05 * history)
    # Latent creditworthiness: no term in `sex`; late payments follow it, with noise.
    score = (
        1.5 * np.log(income / 40.0)
        - 3.0 * debt / income
        + 0.04 * history
        + rng.normal(0, 0.7, applicants)
    )
    late = rng.poisson(np.exp(-0.8 * score))
    repaid = (score - 0.25 * late > -1.3).astype(np.int64)
    flipped = (sex == 1) & (repaid == 1) & (rng.random(applicants) < label_bias)
    y = np.where(flipped, 0, repaid).astype(np.int64)
    x = np.column_stack(
        [income, debt, debt / income, age, history, late, open_accounts, part_time]
    ).astype(np.float32)
    return x, y, sex, branch.astype(np.int64)


def _test_mask(y: np.ndarray, sex: np.ndarray, seed: int) -> np.ndarray:
    """The 20 % test split, stratified by (recorded label, sex)."""
    rng = np.random.default_rng([seed, 0x5E7])
    is_test = np.zeros(len(y), dtype=bool)
    for stratum in np.unique(y * 2 + sex):
        idx = rng.permutation(np.flatnonzero(y * 2 + sex == stratum))
        is_test[idx[: round(len(idx) * 0.2)]] = True
    return is_test


def true_test_labels(seed: int = 0) -> np.ndarray:
    """Whether each applicant of the test split (``load_credit_dataset(seed).y_test``
    order) actually repaid: the labels before the label bias, which only a generator
    knows. The task's own labels, in training and test, are the recorded ones."""
    _, y, sex, _ = generate_credit(applicants=APPLICANTS, branches=BRANCHES, seed=seed)
    _, repaid, _, _ = generate_credit(
        applicants=APPLICANTS, branches=BRANCHES, seed=seed, label_bias=0.0
    )  # the same draws: only the flips are left out
    return repaid[_test_mask(y, sex, seed)]


@lru_cache(maxsize=4)
def load_credit_dataset(seed: int = 0) -> Dataset:
    """The generated book, split 80/20 stratified by (label, sex) and standardised per
    column with the training split's mean and std."""
    x, y, sex, branch = generate_credit(applicants=APPLICANTS, branches=BRANCHES, seed=seed)
    is_test = _test_mask(y, sex, seed)
    mean, std = fit_scaling(x[~is_test], per_feature=True)
    return Dataset(
        x_train=((x[~is_test] - mean) / std).astype(np.float32),
        y_train=y[~is_test],
        x_test=((x[is_test] - mean) / std).astype(np.float32),
        y_test=y[is_test],
        groups_train=branch[~is_test],
        input_mean=mean,
        input_std=std,
        sensitive_train=sex[~is_test],
        sensitive_test=sex[is_test],
    )


def build_mlp() -> nn.Module:
    """8 → 16 → 2 with ReLU."""
    from torch import nn

    return nn.Sequential(nn.Linear(len(FEATURE_NAMES), 16), nn.ReLU(), nn.Linear(16, 2))


SPEC = register_task(
    TaskSpec(
        name="credit-scoring",
        description="generated loan book with a protected attribute (sex), 8 features, MLP",
        build_model=build_mlp,
        load_data=load_credit_dataset,
        num_classes=2,
        input_shape=(len(FEATURE_NAMES),),
        defaults=TrainDefaults(learning_rate=0.05, momentum=0.9, batch_size=32, local_epochs=2),
        feature_names=FEATURE_NAMES,
        sensitive_attribute=SENSITIVE_ATTRIBUTE,
        sensitive_groups=SENSITIVE_GROUPS,
    )
)
