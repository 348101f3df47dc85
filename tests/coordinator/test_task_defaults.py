"""Training settings a run leaves unset are its task's defaults (one home:
``tasks.TrainDefaults``); settings the run gives win, and every party sees the same."""

from __future__ import annotations

from dataclasses import asdict

import pytest
from flwr.app import ConfigRecord, Context, RecordDict

from coordinator.app import build_loop
from coordinator.config import TASK_DEFAULTED, RunConfig
from edge_client.protocol import keys as k
from edge_client.settings import ClientSettings
from tasks import get_task


@pytest.mark.parametrize("task", ["digits-cnn", "breast-cancer-mlp", "synthetic-logreg"])
def test_unset_training_settings_are_the_tasks(task: str) -> None:
    config = RunConfig.from_run_config({"task": task})
    assert all(getattr(config, name) is None for name in TASK_DEFAULTED)
    assert not set(config.as_run_config()) & {"learning-rate", "momentum"}  # left to the task
    resolved = config.with_task_defaults()
    assert {n: getattr(resolved, n) for n in TASK_DEFAULTED} == asdict(get_task(task).defaults)


def test_settings_the_run_gives_win_one_by_one() -> None:
    config = RunConfig.from_run_config(
        {"task": "digits-cnn", "learning-rate": 0.2, "momentum": 0, "local-epochs": "2"}
    )
    train = config.train_defaults()
    digits = get_task("digits-cnn").defaults
    assert (train.learning_rate, train.momentum, train.local_epochs) == (0.2, 0.0, 2)
    assert train.batch_size == digits.batch_size
    assert config.with_task_defaults().as_run_config()["momentum"] == 0.0


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"momentum": 1.0}, "momentum must be >= 0 and < 1"),
        ({"momentum": -0.1}, "momentum must be >= 0 and < 1"),
        ({"momentum": "lots"}, "run config momentum='lots' is not a valid float"),
        ({"batch-size": 0}, "batch-size must be >= 1"),
    ],
)
def test_bad_training_settings_are_refused(overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RunConfig.from_run_config(overrides)


def test_the_round_instruction_carries_the_tasks_defaults() -> None:
    loop = build_loop(RunConfig(task="breast-cancer-mlp", momentum=0.5))
    sent = dict(loop.train_config)
    defaults = get_task("breast-cancer-mlp").defaults
    assert sent[k.MOMENTUM] == 0.5
    assert sent[k.LEARNING_RATE] == defaults.learning_rate
    assert sent[k.LOCAL_EPOCHS] == defaults.local_epochs
    assert sent[k.BATCH_SIZE] == defaults.batch_size


def test_a_client_lacking_a_setting_uses_the_tasks_default() -> None:
    context = Context(
        run_id=1,
        node_id=1,
        node_config={k.NC_PARTITION_ID: 0, k.NC_NUM_PARTITIONS: 2},
        state=RecordDict(),
        run_config={k.RC_TASK: "digits-cnn"},
    )
    settings = ClientSettings.from_message(context, ConfigRecord({k.LEARNING_RATE: 0.3}))
    digits = get_task("digits-cnn").defaults
    assert settings.learning_rate == 0.3
    assert settings.momentum == digits.momentum
    assert settings.local_epochs == digits.local_epochs
