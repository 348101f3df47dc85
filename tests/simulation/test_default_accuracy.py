"""Each built-in task's defaults learn: ``fedfleet simulate`` with only the size of the
federation given reaches the task's accuracy target in a few rounds.

Real integration: the ``fedfleet simulate`` command in a subprocess, the in-process
engine, the task's own data and defaults. The targets and the rounds are the ones
docs/simulation.md's table states ("Defaults that learn").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from tasks import available_tasks, get_task

FEDFLEET = [sys.executable, "-c", "from fedfleet.cli import main; main()"]

# (task, flags beyond --task, minimum final accuracy): docs/simulation.md's targets.
TARGETS = [
    ("digits-cnn", ["--clients", "30", "--clients-per-round", "10", "--rounds", "5"], 0.85),
    ("breast-cancer-mlp", ["--rounds", "3"], 0.90),
    ("credit-scoring", ["--rounds", "3"], 0.85),
    (
        "synthetic-logreg",
        ["--clients", "30", "--clients-per-round", "10", "--rounds", "3"],
        0.70,
    ),
]


def test_every_built_in_task_has_a_target() -> None:
    assert sorted(name for name, _, _ in TARGETS) == available_tasks()


@pytest.mark.parametrize(("task", "flags", "target"), TARGETS)
def test_defaults_reach_the_target(
    tmp_path: Path, task: str, flags: list[str], target: float
) -> None:
    # Prepare
    out = tmp_path / "run"
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0")
    # Execute
    proc = subprocess.run(
        [*FEDFLEET, "simulate", "--task", task, *flags, "--quiet", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # Assert
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["final_accuracy"] >= target, [r["accuracy"] for r in doc["rounds"]]
    # the run trained with the task's defaults, and says so in metrics.json
    defaults = asdict(get_task(task).defaults)
    recorded = {name: doc["config"][name.replace("_", "-")] for name in defaults}
    assert recorded == defaults
