"""The fairness audit of ``fedfleet simulate`` end to end (real CLI, in-process engine).

Oracle: the last round's group metrics in metrics.json — summed from the clients' counts
— equal fairlearn's, computed centrally with the run's final model on the union of the
clients' held-out data.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

from edge_client.data import partition_data
from tasks import get_task

FEDFLEET = [sys.executable, "-c", "from fedfleet.cli import main; main()"]
ENV = dict(os.environ, FLWR_TELEMETRY_ENABLED="0")


def _simulate(*flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FEDFLEET, "simulate", *flags, "--quiet"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_audit_from_client_counts_equals_fairlearn_on_the_union(tmp_path: Path) -> None:
    # Prepare / Execute: 8 clients, non-IID by group (branches), every client evaluates.
    out = tmp_path / "run"
    proc = _simulate(
        "--task", "credit-scoring", "--clients", "8", "--clients-per-round", "8",
        "--rounds", "2", "--partition", "natural", "--fraction-evaluate", "1",
        "--sensitive-attribute", "sex", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "metrics.json").read_text())
    # Assert: the contract's keys, per round and at the top level
    audit = doc["fairness"]
    assert audit["round"] == 2 and audit == {"round": 2, **doc["rounds"][-1]["fairness"]}
    assert audit["group_by"] == "sex" and set(audit["groups"]) == {"male", "female"}
    for key in ("worst_group_accuracy", "worst_decile_accuracy", "accuracy_std", "max_gap"):
        assert isinstance(audit[key], float)
    # ... and the numbers against fairlearn on the union of the clients' held-out data
    spec = get_task("credit-scoring")
    model = spec.build_model()
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    shares = [
        partition_data(
            task_name="credit-scoring", partition_id=i, num_partitions=8,
            partition="natural", seed=0,
        )
        for i in range(8)
    ]  # fmt: skip
    x = np.concatenate([s.x_eval for s in shares])
    y = np.concatenate([s.y_eval for s in shares])
    sex = np.concatenate([s.s_eval for s in shares if s.s_eval is not None])
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    assert audit["demographic_parity_difference"] == pytest.approx(
        demographic_parity_difference(y, pred, sensitive_features=sex), abs=1e-9
    )
    assert audit["equalized_odds_difference"] == pytest.approx(
        equalized_odds_difference(y, pred, sensitive_features=sex), abs=1e-9
    )
    female = sex == 1
    assert audit["groups"]["female"]["n"] == int(female.sum())
    assert audit["groups"]["female"]["accuracy"] == pytest.approx(
        float((pred[female] == y[female]).mean())
    )
    # per-client accuracies: one per client, their worst no better than the worst decile
    assert audit["clients"] == 8 and audit["clients_counted"] == 8
    # files: csv flattens the scalars, fairness.png exists
    with (out / "metrics.csv").open() as f:
        row = next(csv.DictReader(f))
    assert float(row["fairness_max_gap"]) > 0
    assert (out / "fairness.png").stat().st_size > 1000


def test_without_an_attribute_the_groups_are_the_clients(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _simulate(
        "--task", "breast-cancer-mlp", "--clients", "5", "--clients-per-round", "5",
        "--rounds", "1", "--fraction-evaluate", "1", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    audit = json.loads((out / "metrics.json").read_text())["fairness"]
    assert audit["group_by"] == "client" and len(audit["groups"]) == 5
    assert "demographic_parity_difference" not in audit
    accs = [g["accuracy"] for g in audit["groups"].values()]
    assert audit["worst_group_accuracy"] == min(accs)
    assert audit["max_gap"] == pytest.approx(max(accs) - min(accs))


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--task", "digits-cnn", "--sensitive-attribute", "sex"], "has no sensitive attribute"),
        (["--task", "credit-scoring", "--sensitive-attribute", "race"], "it has only 'sex'"),
        (["--task", "credit-scoring", "--sensitive-attribute", "sex"], "--fraction-evaluate"),
        (["--task", "credit-scoring", "--fairness-reweigh"], "fairness-reweigh needs"),
        (["--task", "credit-scoring", "--equal-opportunity", "2"], "equal-opportunity needs"),
        (
            [
                "--task",
                "credit-scoring",
                "--sensitive-attribute",
                "sex",
                "--equal-opportunity",
                "-1",
            ],
            "equal-opportunity must be a step rate >= 0",
        ),
    ],
)
def test_a_sensitive_attribute_the_run_cannot_audit_is_one_line_exit_2(
    tmp_path: Path, flags: list[str], says: str
) -> None:
    out = tmp_path / "run"
    evaluate = [] if says == "--fraction-evaluate" else ["--fraction-evaluate", "1"]
    proc = _simulate(*flags, *evaluate, "--out", str(out))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0]
    assert not out.exists()


def _tpr_gap(doc: dict[str, Any]) -> float:
    groups = doc["fairness"]["groups"]
    return float(groups["male"]["tpr"] - groups["female"]["tpr"])


def test_equal_opportunity_weights_travel_each_round_and_narrow_the_tpr_gap(
    tmp_path: Path,
) -> None:
    # Prepare: the same run with and without the server's equal-opportunity weights
    common = [
        "--task", "credit-scoring", "--clients", "6", "--clients-per-round", "6",
        "--rounds", "6", "--partition", "natural", "--fraction-evaluate", "1",
        "--sensitive-attribute", "sex", "--seed", "1",
    ]  # fmt: skip
    # Execute
    plain = _simulate(*common, "--out", str(tmp_path / "plain"))
    fair = _simulate(*common, "--equal-opportunity", "2", "--out", str(tmp_path / "eo"))
    # Assert
    assert plain.returncode == 0, plain.stderr
    assert fair.returncode == 0, fair.stderr
    base = json.loads((tmp_path / "plain" / "metrics.json").read_text())
    doc = json.loads((tmp_path / "eo" / "metrics.json").read_text())
    female = [r["eo_weight_female"] for r in doc["rounds"]]
    assert all(r["eo_weight_male"] == 1.0 for r in doc["rounds"])
    assert female[0] > 1.0 and female[-1] > female[0]  # the women's TPR stayed below
    assert "eo_weight_female" not in base["rounds"][0]
    assert 0 < _tpr_gap(doc) < _tpr_gap(base)  # the weights reached the clients' training
