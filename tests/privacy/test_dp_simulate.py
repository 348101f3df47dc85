"""``fedfleet simulate --dp ...``: refusals before round 1, and the privacy–utility sweep."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner


def simulate(*args: str):
    from fedfleet.cli import build_app

    return CliRunner().invoke(build_app(), ["simulate", *args])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dp", "local", "--epsilon", "0"], "epsilon 0.0 must be a positive number"),
        (["--dp", "local", "--epsilon", "2", "--delta", "0.01"], "delta 0.01 is not below 1/N"),
        (["--dp", "central", "--noise-multiplier", "0"], "noise multiplier 0.0"),
        (["--dp", "central", "--epsilon", "2", "--strategy", "krum"], "not a mean"),
        (["--dp", "distributed", "--epsilon", "2"], "add --secagg"),
        (["--dp", "local"], "needs --epsilon"),
        (["--epsilon", "2"], "dp is 'none'"),
        (["--dp", "fancy", "--epsilon", "2"], "unknown dp mode 'fancy'"),
        (["--dp", "local", "--sweep-epsilon", "1,zero"], "'zero' is not a number"),
        (["--dp", "none", "--sweep-epsilon", "1,2"], "needs --dp"),
        (["--dp", "local", "--noise-multiplier", "1", "--sweep-epsilon", "1"], "drop --noise"),
    ],
)
def test_meaningless_privacy_is_refused_before_round_one(
    tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "run"
    result = simulate(*args, "--out", str(out))
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.slow
def test_sweep_writes_the_privacy_utility_table_and_plot(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path / "sweep"
        # no --dp: a sweep implies --dp local
        result = simulate(
            "--task", "breast-cancer-mlp", "--clients", "2", "--clients-per-round", "2",
            "--rounds", "2", "--lr", "0.3", "--sweep-epsilon", "1,8",
            "--quiet", "--out", str(out),
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((out / "privacy_utility.csv").open()))
    assert [float(r["target_epsilon"]) for r in rows] == [math.inf, 1.0, 8.0]
    for row in rows[1:]:
        assert 0 < float(row["epsilon_spent"]) <= float(row["target_epsilon"])
        assert 0 <= float(row["final_accuracy"]) <= 1
    assert float(rows[1]["noise_multiplier"]) > float(rows[2]["noise_multiplier"])
    assert (out / "privacy_utility.png").stat().st_size > 1000
    assert (out / "epsilon-1" / "privacy_ledger.sqlite").exists()  # DP-SGD at each client
    # --quiet hides progress, not the results: where they are, and the sweep's table.
    assert f"results: {out}/privacy_utility.png" in result.output
    assert "ε" in result.output and rows[2]["final_accuracy"][:4] in result.output
