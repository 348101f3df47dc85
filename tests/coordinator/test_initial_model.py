"""`initial-model`: a run starts from given weights (retraining a deployed model warm)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from coordinator.app import initial_arrays
from coordinator.config import RunConfig
from coordinator.retrain import RetrainPlan
from tasks import get_task


def _saved_model(path: Path, task: str, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    state = get_task(task).build_model().state_dict()
    torch.save(state, path)
    return state


def _flat(arrays) -> np.ndarray:
    return np.concatenate([a.numpy().ravel() for a in arrays.values()])


def test_run_starts_from_the_given_weights_not_from_its_seed(tmp_path: Path) -> None:
    saved = _saved_model(tmp_path / "model.pt", "breast-cancer-mlp", seed=123)
    warm = initial_arrays(
        RunConfig(task="breast-cancer-mlp", seed=0, initial_model=str(tmp_path / "model.pt"))
    )
    cold = initial_arrays(RunConfig(task="breast-cancer-mlp", seed=0))

    expected = np.concatenate([t.numpy().ravel() for t in saved.values()])
    assert np.array_equal(_flat(warm), expected)
    assert not np.array_equal(_flat(cold), expected)


def test_missing_file_is_refused_when_the_run_is_configured(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="initial-model .* is not a file"):
        RunConfig.from_run_config({"initial-model": str(tmp_path / "nope.pt")})


def test_a_model_of_another_task_is_refused_naming_what_differs(tmp_path: Path) -> None:
    _saved_model(tmp_path / "digits.pt", "digits-cnn", seed=0)
    config = RunConfig(task="breast-cancer-mlp", initial_model=str(tmp_path / "digits.pt"))
    with pytest.raises(ValueError, match="is not a breast-cancer-mlp model"):
        initial_arrays(config)


def test_a_same_named_layer_of_another_shape_is_refused(tmp_path: Path) -> None:
    state = get_task("breast-cancer-mlp").build_model().state_dict()
    name = next(iter(state))
    state[name] = torch.zeros(*(d + 1 for d in state[name].shape))
    torch.save(state, tmp_path / "wide.pt")
    with pytest.raises(ValueError, match=f"{name} has shape"):
        initial_arrays(RunConfig(task="breast-cancer-mlp", initial_model=str(tmp_path / "wide.pt")))


@pytest.mark.parametrize("content", [b"not a torch file", b""])
def test_garbage_is_refused(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "bad.pt").write_bytes(content)
    with pytest.raises(ValueError, match="not a readable model.pt"):
        initial_arrays(RunConfig(task="breast-cancer-mlp", initial_model=str(tmp_path / "bad.pt")))


def test_pickled_code_is_not_executed(tmp_path: Path) -> None:
    class Boom:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    torch.save({"w": Boom()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="not a readable model.pt"):
        initial_arrays(RunConfig(task="breast-cancer-mlp", initial_model=str(tmp_path / "evil.pt")))
    assert not (tmp_path / "pwned").exists()


def test_retrain_plan_sets_task_and_initial_model_and_refuses_conflicts(tmp_path: Path) -> None:
    plan = RetrainPlan(
        fleet_run_id=4, task="digits-cnn", parent_version=2, checkpoint=tmp_path / "m.pt"
    )
    config = plan.run_config({"num-server-rounds": 2})
    assert config["task"] == "digits-cnn"
    assert config["initial-model"] == str((tmp_path / "m.pt").resolve())
    assert config["num-server-rounds"] == 2
    with pytest.raises(ValueError, match="retrains model version 2 of task 'digits-cnn'"):
        plan.run_config({"task": "breast-cancer-mlp"})
    with pytest.raises(ValueError, match="initial-model is set by --retrain"):
        plan.run_config({"initial-model": "x.pt"})
