"""Each task trains to a sensible accuracy centrally; the registry refuses mistakes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks import available_tasks, evaluate, get_task, register_task, train_local

# (task, epochs, minimum test accuracy after centralised training)
EXPECTED = [("digits-cnn", 8, 0.90), ("breast-cancer-mlp", 5, 0.93), ("synthetic-logreg", 5, 0.75)]


def test_registry_lists_the_three_tasks() -> None:
    assert {"digits-cnn", "breast-cancer-mlp", "synthetic-logreg"} <= set(available_tasks())


@pytest.mark.parametrize(("name", "epochs", "minimum"), EXPECTED)
def test_task_trains_to_sensible_accuracy(name: str, epochs: int, minimum: float) -> None:
    task = get_task(name)
    data = task.load_data(0)
    torch.manual_seed(0)
    model = task.build_model()
    before = evaluate(model, data.x_test, data.y_test).accuracy
    train_local(
        model,
        data.x_train,
        data.y_train,
        epochs=epochs,
        batch_size=task.defaults.batch_size,
        learning_rate=task.defaults.learning_rate,  # plain SGD: the defaults' momentum
        seed=1,  # is tuned for a client's few steps a round, not 90 steps an epoch
    )
    after = evaluate(model, data.x_test, data.y_test).accuracy
    assert after >= minimum
    assert after > before


@pytest.mark.parametrize("name", ["digits-cnn", "breast-cancer-mlp", "synthetic-logreg"])
def test_data_is_offline_deterministic_and_shaped(name: str) -> None:
    task = get_task(name)
    a, b = task.load_data(3), task.load_data(3)
    assert a.x_train.shape[1:] == task.input_shape
    assert a.x_train.dtype == np.float32 and a.y_train.dtype == np.int64
    np.testing.assert_array_equal(a.y_train, b.y_train)
    assert set(np.unique(a.y_train)) <= set(range(task.num_classes))


def test_training_is_reproducible_for_a_seed() -> None:
    task = get_task("breast-cancer-mlp")
    data = task.load_data(0)
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        model = task.build_model()
        train_local(
            model, data.x_train, data.y_train, epochs=1, batch_size=16, learning_rate=0.05, seed=7
        )
        states.append(model.state_dict())
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key])


def test_unknown_task_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown task 'nope'.*digits-cnn"):
        get_task("nope")


def test_registering_a_duplicate_is_refused() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_task(get_task("digits-cnn"))


def test_training_on_no_data_reports_zero_examples() -> None:
    task = get_task("breast-cancer-mlp")
    result = train_local(
        task.build_model(),
        np.empty((0, 30), np.float32),
        np.empty(0, np.int64),
        epochs=1,
        batch_size=8,
        learning_rate=0.1,
        seed=0,
    )
    assert result.num_examples == 0 and result.steps == 0


def test_each_built_in_task_comes_from_its_own_module_alone() -> None:
    import subprocess
    import sys

    from tasks.registry import BUILTIN_TASKS

    # Each built-in name is registered by the module the registry names for it ...
    for name in BUILTIN_TASKS:
        assert get_task(name).name == name
    # ... and looking one task up imports no other task's module (a fresh process).
    code = (
        "import sys; from tasks import get_task; get_task('synthetic-logreg'); "
        "print(sorted(m for m in sys.modules if m.startswith('tasks.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "tasks.digits" not in out.stdout and "tasks.breast_cancer" not in out.stdout
    assert "tasks.synthetic" in out.stdout


@pytest.mark.parametrize("name", ["digits-cnn", "breast-cancer-mlp"])
def test_scaling_is_fit_on_the_training_split_only(name: str) -> None:
    """x = (raw − mean) / std with mean and std of the raw TRAINING split: the scaled
    training split is standardised, the test split only approximately (no leakage)."""
    data = get_task(name).load_data(0)
    assert data.input_mean is not None and data.input_std is not None
    axis = 0 if name == "breast-cancer-mlp" else None  # per column / one for all pixels
    np.testing.assert_allclose(data.x_train.mean(axis=axis), 0.0, atol=1e-4)
    np.testing.assert_allclose(data.x_train.std(axis=axis), 1.0, atol=1e-3)
    # fit on train + test, the statistics would differ: the test split was not used
    raw_train = data.x_train * data.input_std + data.input_mean
    raw_test = data.x_test * data.input_std + data.input_mean
    both = np.concatenate([raw_train, raw_test])
    assert not np.allclose(both.mean(axis=axis), data.input_mean, rtol=1e-4, atol=0)
    # raw records of either split scale back to the task's inputs
    np.testing.assert_allclose(data.scale_raw(raw_test), data.x_test, atol=1e-4)


def test_fit_scaling_keeps_constant_features_finite() -> None:
    from tasks.base import fit_scaling

    x = np.array([[1.0, 5.0], [3.0, 5.0]], dtype=np.float32)
    mean, std = fit_scaling(x, per_feature=True)
    np.testing.assert_array_equal(mean, [2.0, 5.0])
    np.testing.assert_array_equal(std, [1.0, 1.0])  # the constant column: std 1, not 0
    assert fit_scaling(x, per_feature=False)[0].shape == ()


def test_synthetic_features_are_not_rescaled() -> None:
    data = get_task("synthetic-logreg").load_data(0)
    assert data.input_mean is None
    np.testing.assert_array_equal(data.scale_raw(data.x_test), data.x_test)


def test_breast_cancer_columns_are_scikit_learns() -> None:
    # Oracle: the written-out column names are scikit-learn's, as a site's CSV carries them.
    from sklearn.datasets import load_breast_cancer

    expected = tuple(n.replace(" ", "_") for n in load_breast_cancer().feature_names)
    assert get_task("breast-cancer-mlp").feature_names == expected


@pytest.mark.parametrize("name", ["digits-cnn", "breast-cancer-mlp", "synthetic-logreg"])
def test_naming_a_task_and_loading_its_data_loads_no_torch(name: str) -> None:
    # A fresh interpreter: the flag checks of `fedfleet simulate` load a task's data; the
    # model (torch) is imported only when one is built.
    import json
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import json, sys\n"
        "from tasks import get_task\n"
        f"data = get_task({name!r}).load_data(0)\n"
        "loaded = 'torch' in sys.modules\n"
        f"model = get_task({name!r}).build_model()\n"
        "print(json.dumps([loaded, len(data.y_train), sum(p.numel() for p in model.parameters())]))\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
        env={**__import__("os").environ, "PYTHONPATH": str(root)},
    )
    loaded, rows, params = json.loads(out.stdout)
    assert not loaded and rows > 0 and params > 0


def test_credit_scoring_is_deterministic_and_biased_against_its_protected_group() -> None:
    from tasks.credit_scoring import generate_credit

    a = generate_credit(applicants=2000, branches=5, seed=4)
    b = generate_credit(applicants=2000, branches=5, seed=4)
    assert all((x == y).all() for x, y in zip(a, b, strict=True))
    _, y, sex, branch = a
    assert y[sex == 1].mean() < y[sex == 0].mean() - 0.1  # label bias + pay gap
    share = [sex[branch == k].mean() for k in range(5)]
    assert share[0] < share[-1]  # branches differ in their mix: non-IID by group
    spec = get_task("credit-scoring")
    data = spec.load_data(0)
    assert spec.sensitive_attribute == "sex"
    assert data.sensitive_test is not None and set(data.sensitive_test) == {0, 1}
