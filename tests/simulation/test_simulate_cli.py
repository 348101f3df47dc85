"""`fedfleet simulate` end to end in a subprocess, and its refusals of bad input."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

FEDFLEET = [sys.executable, "-c", "from fedfleet.cli import main; main()"]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", COLUMNS="200", TERMINAL_WIDTH="200")
    return subprocess.run(
        [*FEDFLEET, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_simulate_writes_the_contracted_results(tmp_path: Path) -> None:
    out = tmp_path / "run"
    old_umask = os.umask(0)  # the run folder must be private even so (issue 14)
    try:
        proc = _run(
            [
                "simulate",
                "--task",
                "breast-cancer-mlp",
                "--clients",
                "8",
                "--clients-per-round",
                "4",
                "--rounds",
                "2",
                "--out",
                str(out),
            ],
            tmp_path,
        )
    finally:
        os.umask(old_umask)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in doc["rounds"]] == [1, 2]
    for key in ("round", "accuracy", "loss", "duration_s", "clients"):
        assert key in doc["rounds"][0]
    assert doc["config"]["num-clients"] == 8 and doc["final_accuracy"] > 0.5
    for name in ("metrics.csv", "model.pt", "accuracy.png"):
        assert (out / name).stat().st_size > 0
    assert "round   2" in proc.stderr or "round   2" in proc.stdout
    # fedfleet's own apps show their progress, not Flower's INFO line per sampling step
    assert "aggregate_train" not in proc.stderr + proc.stdout, proc.stderr
    modes = {p.relative_to(tmp_path): stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*")}
    modes[Path("run")] = stat.S_IMODE(out.stat().st_mode)
    assert all(m == (0o700 if (tmp_path / p).is_dir() else 0o600) for p, m in modes.items()), {
        str(p): oct(m) for p, m in modes.items()
    }


def test_config_file_gives_the_same_settings(tmp_path: Path) -> None:
    cfg = tmp_path / "sim.toml"
    cfg.write_text('task = "breast-cancer-mlp"\nclients = 4\nclients-per-round = 2\nrounds = 1\n')
    proc = _run(
        ["simulate", "--config", str(cfg), "--out", str(tmp_path / "r"), "--quiet"], tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert doc["config"]["clients-per-round"] == 2 and len(doc["rounds"]) == 1


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--task", "mnist"], "unknown task 'mnist'"),
        (["--strategy", "fedmagic"], "unknown strategy 'fedmagic'"),
        (["--partition", "zipf:2"], "unknown partition 'zipf:2'"),
        (["--clients", "100", "--clients-per-round", "500"], "lower --clients-per-round"),
        (["--engine", "warp"], "unknown engine"),
    ],
)
def test_bad_input_one_clear_line_and_no_run_folder(
    tmp_path: Path, args: list[str], needle: str
) -> None:
    out = tmp_path / "run"
    proc = _run(["simulate", *args, "--out", str(out)], tmp_path)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0]
    assert not out.exists()
    assert not (tmp_path / "runs").exists()


def test_malformed_toml_is_one_clear_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("clients = [unterminated\n")
    proc = _run(["simulate", "--config", str(cfg), "--out", str(tmp_path / "r")], tmp_path)
    assert proc.returncode != 0
    assert "is not valid TOML" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_unknown_key_in_config_file_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("clientz = 3\n")
    proc = _run(["simulate", "--config", str(cfg), "--out", str(tmp_path / "r")], tmp_path)
    assert proc.returncode != 0 and "unknown setting 'clientz'" in proc.stderr


def test_help_names_every_option_with_its_default(tmp_path: Path) -> None:
    proc = _run(["simulate", "--help"], tmp_path)
    assert proc.returncode == 0
    for option in (
        "--task",
        "--clients",
        "--clients-per-round",
        "--rounds",
        "--local-epochs",
        "--partition",
        "--seed",
        "--engine",
        "--out",
        "--config",
    ):
        assert option in proc.stdout
    assert "default: digits-cnn" in proc.stdout
