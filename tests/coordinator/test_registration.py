"""Reading a run folder for `fedfleet model register` (no network, no fleet)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from coordinator.registration import RunFolderError, _round_report, read_run_folder


def _folder(tmp_path: Path, doc: object, *, model: bool = True) -> Path:
    folder = tmp_path / "run-20260101-abc"
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps(doc))
    if model:
        (folder / "model.pt").write_bytes(b"weights")
    return folder


def test_a_coordinator_run_id_wins_over_the_folder_name(tmp_path: Path) -> None:
    doc = {
        "config": {"task": "digits-cnn", "strategy": "fedavg", "run-id": "run-42"},
        "rounds": [{"round": 1, "accuracy": 0.5, "loss": 1.0}, {"round": 2, "loss": 0.7}],
        "final_accuracy": 0.5,
        "wall_time_s": 3.5,
    }
    run = read_run_folder(_folder(tmp_path, doc))
    assert (run.run_id, run.task, run.strategy, run.last_round) == (
        "run-42",
        "digits-cnn",
        "fedavg",
        2,
    )
    assert run.model_metrics() == {
        "rounds": 2.0,
        "final_accuracy": 0.5,
        "final_loss": 0.7,
        "wall_time_s": 3.5,
    }


def test_a_simulate_folder_is_named_by_its_folder(tmp_path: Path) -> None:
    doc = {
        "config": {"task": "digits-cnn", "strategy": "Not A Slug"},
        "rounds": [],
        "final_accuracy": None,
    }
    run = read_run_folder(_folder(tmp_path, doc))
    assert run.run_id == "run-20260101-abc" and run.strategy is None and run.last_round is None
    assert run.model_metrics() == {"rounds": 0.0}


@pytest.mark.parametrize(
    ("doc", "model", "message"),
    [
        ({"config": {"task": "t"}, "rounds": []}, False, "has no model.pt"),
        ([1, 2], True, "is not a fedfleet metrics file"),
        ({"config": {}, "rounds": []}, True, "names no task"),
        (
            {"config": {"task": "t"}, "rounds": [{"round": "1"}]},
            True,
            r"rounds\[0\] has no integer",
        ),
        ({"config": {"task": "t"}, "rounds": [], "final_accuracy": "high"}, True, "not a number"),
    ],
)
def test_bad_run_folders_say_what_is_wrong(
    tmp_path: Path, doc: object, model: bool, message: str
) -> None:
    with pytest.raises(RunFolderError, match=message):
        read_run_folder(_folder(tmp_path, doc, model=model))


def test_unreadable_metrics_and_missing_folders(tmp_path: Path) -> None:
    with pytest.raises(RunFolderError, match="does not exist"):
        read_run_folder(tmp_path / "nope")
    folder = _folder(tmp_path, {})
    (folder / "metrics.json").write_text("{not json")
    with pytest.raises(RunFolderError, match="is not readable JSON"):
        read_run_folder(folder)


def test_round_reports_keep_what_the_fleet_accepts() -> None:
    row = {
        "round": 3,
        "accuracy": 0.9,
        "loss": math.nan,
        "duration_s": 0.25,
        "clients": 10,
        "applied": True,
        "note": "text",
        "bad key!": 1.0,
        "train_train-loss": 0.3,
    }
    assert _round_report(row) == {
        "accuracy": 0.9,
        "duration_s": 0.25,
        "metrics": {"clients": 10.0, "train_train-loss": 0.3},
    }
    assert "accuracy" not in _round_report({"round": 1, "accuracy": 1.5, "epsilon": -1})
