"""What ``fedfleet simulate`` says: config type errors in one line, ``--quiet`` still
saying where the results are, and a warning when clients get no data."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from simulation.runner import empty_clients_warning
from simulation.settings import SimulateSettings


def simulate(*args: str):
    from fedfleet.cli import build_app

    return CliRunner().invoke(build_app(), ["simulate", *args])


@pytest.mark.parametrize(
    ("toml", "line"),
    [
        ('rounds = "3"', 'rounds = "3" is a string; expected an integer (write rounds = 3'),
        ("lr = true", "lr = true is a boolean (true or false); expected a number"),
        ("secagg = 1", "secagg = 1 is an integer; expected a boolean (true or false)"),
        ('epsilon = "two"', 'epsilon = "two" is a string; expected a number'),
        ("clients = 2.5", "clients = 2.5 is a number; expected an integer"),
        # settings whose default is the task's (None) still have their type checked
        ("local-epochs = 2.5", "local-epochs = 2.5 is a number; expected an integer"),
        ('momentum = "0.9"', 'momentum = "0.9" is a string; expected a number'),
    ],
)
def test_a_config_value_of_the_wrong_type_is_one_line(tmp_path: Path, toml: str, line: str) -> None:
    config = tmp_path / "sim.toml"
    config.write_text(toml + "\n")
    result = simulate("--config", str(config), "--out", str(tmp_path / "run"))
    assert result.exit_code == 2
    [output] = result.output.strip().splitlines()  # one line, no traceback
    assert output.startswith(f"error: config file {config}: {line}")
    assert not (tmp_path / "run").exists()


def test_an_integer_is_a_valid_float_setting(tmp_path: Path) -> None:
    config = tmp_path / "sim.toml"
    config.write_text("lr = 1\n")
    settings = SimulateSettings.build(config_file=config, overrides={})
    assert settings.lr == 1.0


def test_quiet_still_says_where_the_results_are(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = simulate(
        "--task", "breast-cancer-mlp", "--clients", "4", "--clients-per-round", "2",
        "--rounds", "1", "--quiet", "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines() == [
        f"results: {out}/metrics.json, {out}/accuracy.png, {out}/model.pt"
    ]


def test_more_clients_than_records_warns_once_with_the_fix() -> None:
    settings = SimulateSettings.build(
        config_file=None, overrides={"clients": 10000, "clients_per_round": 200, "rounds": 1}
    )
    assert empty_clients_warning(settings) == (
        "warning: 8563 of 10000 clients hold no training data (digits-cnn has 1437 training "
        "rows, split by --partition iid); use --clients 1437 or fewer"
    )


def test_every_client_with_data_gives_no_warning() -> None:
    settings = SimulateSettings.build(config_file=None, overrides={"clients": 1437})
    assert empty_clients_warning(settings) is None


@pytest.mark.slow
def test_the_warning_is_printed_and_the_run_goes_on(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = simulate(
        "--task", "breast-cancer-mlp", "--clients", "1000", "--clients-per-round", "5",
        "--rounds", "1", "--quiet", "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    [warning] = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert warning.startswith("warning: 545 of 1000 clients hold no training data")
    assert warning.endswith("use --clients 455 or fewer")
    assert (out / "metrics.json").is_file()


def test_a_momentum_out_of_range_is_one_line(tmp_path: Path) -> None:
    result = simulate("--momentum", "1.5", "--out", str(tmp_path / "run"))
    assert result.exit_code == 2
    [output] = result.output.strip().splitlines()
    assert output == "error: momentum must be >= 0 and < 1 (0 = plain SGD)"
    assert not (tmp_path / "run").exists()
