"""``fedfleet simulate --app DIR``: a third-party Flower app runs unchanged in process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from simulation.flower_app import load_flower_app
from simulation.settings import SimulateSettings

APP = Path(__file__).parent / "flower_app"
FEDFLEET = [sys.executable, "-c", "from fedfleet.cli import main; main()"]


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", COLUMNS="200", OMP_NUM_THREADS="1")
    return subprocess.run(
        [*FEDFLEET, "simulate", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_quickstart_style_app_runs_unchanged(tmp_path: Path) -> None:
    # Execute: the app's own config, one key overridden as `flwr run --run-config` would.
    out = tmp_path / "run"
    proc = _cli(
        [
            "--app",
            str(APP),
            "--clients",
            "20",
            "--run-config",
            "num-server-rounds=2",
            "--out",
            str(out),
            # in process: this is about the app, not the workers (test_app_workers*.py);
            # `auto` adds a forkserver and two workers, 2-4x the wall time on 2 busy cores
            "--app-workers",
            "0",
        ],
        tmp_path,
    )
    # Assert: 2 rounds of FedAvg.start (train then evaluate), 10 of 20 clients each
    # (fraction-train 0.5), and the files the app itself wrote, in the run folder.
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "exchanges.json").read_text())
    kinds = [(e["message_type"], e["messages"], e["replies"]) for e in doc["exchanges"]]
    assert kinds == [("train", 10, 10), ("evaluate", 10, 10)] * 2
    assert doc["run_config"]["num-server-rounds"] == 2 and doc["run_config"]["lr"] == 0.1
    assert doc["clients"] == 20 and doc["clients_materialised"] <= 20
    state = torch.load(out / "final_model.pt")
    assert set(state) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    history = json.loads((out / "history.json").read_text())
    assert sorted(history) == ["1", "2"] and history["2"]["eval_acc"] > 0.3


def test_app_config_is_read_and_overridden_like_flwr_run() -> None:
    app = load_flower_app(APP, overrides="num-server-rounds=7 lr=0.5")
    assert app.serverapp == "quickstart_app.server_app:app"
    assert app.clientapp == "quickstart_app.client_app:app"
    assert app.run_config["num-server-rounds"] == 7 and app.run_config["lr"] == 0.5
    assert app.run_config["batch-size"] == 8


def _build(**overrides: Any) -> SimulateSettings:
    return SimulateSettings.build(config_file=None, overrides=overrides)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"app": "/nowhere"}, "no pyproject.toml there"),
        ({"app": str(APP), "app_config": "epochs=3"}, "'epochs' is not in the app's"),
        ({"app": str(APP), "app_config": "lr"}, "'lr' is not KEY=VALUE"),
        ({"app": str(APP), "rounds": 5}, "--rounds configures fedfleet's own apps"),
        ({"app": str(APP), "engine": "flower"}, "use `flwr run DIR`"),
        ({"app_config": "lr=1"}, "needs --app DIR"),
        ({"devices": "toaster=1"}, "unknown device profile 'toaster'"),
        ({"devices": "rpi5", "engine": "flower"}, "drop --engine flower"),
        ({"devices": "rpi5", "speeds": "pareto:1.5"}, "keep one"),
        ({"deadline": 5.0}, "add --devices"),
        ({"threads": -1}, "--threads must be"),
    ],
)
def test_bad_fleet_or_app_settings_say_what_to_change(
    overrides: dict[str, Any], needle: str
) -> None:
    with pytest.raises(ValueError, match=needle):
        _build(**overrides)


def test_bad_app_input_is_one_line_and_leaves_no_run_folder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _cli(["--app", str(APP), "--run-config", "epochs=3", "--out", str(out)], tmp_path)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "epochs" in lines[0], proc.stderr
    assert not out.exists()
