"""`fedfleet simulate --dataset`: a FEMNIST-schema dataset built here and saved with
``save_to_disk``, run for two rounds with its natural writer partition in a subprocess
with the Hub off; and the refusals (one line, exit 2, no run folder)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

datasets = pytest.importorskip("datasets")
pytest.importorskip("flwr_datasets")

from PIL import Image  # noqa: E402

FEDFLEET = [sys.executable, "-c", "from fedfleet.cli import main; main()"]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        FLWR_TELEMETRY_ENABLED="0",
        COLUMNS="200",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HOME=str(cwd / "hf-home"),  # an empty cache: nothing was ever downloaded
    )
    return subprocess.run(
        [*FEDFLEET, "simulate", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def femnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 rows of flwrlabs/femnist's schema from 6 writers; a writer's characters are
    bright or dark by class, so two rounds learn something."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 60)
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "writer_id": datasets.Value("string"),
            "hsf_id": datasets.Value("int64"),
            "character": datasets.ClassLabel(num_classes=62),
        }
    )
    ds = datasets.Dataset.from_dict(
        {
            "image": [
                Image.fromarray((rng.random((28, 28)) * 30 + 60 * c).astype(np.uint8), "L")
                for c in labels
            ],
            "writer_id": [f"f{i % 6:04d}_00" for i in range(60)],
            "hsf_id": [0] * 60,
            "character": labels.tolist(),
        },
        features=features,
    )
    out = tmp_path_factory.mktemp("data") / "femnist"
    datasets.DatasetDict({"train": ds}).save_to_disk(str(out))
    return out


def test_femnist_natural_partition_runs_two_rounds(tmp_path: Path, femnist_dir: Path) -> None:
    out = tmp_path / "run"
    proc = _run(
        [
            "--dataset",
            "femnist",
            "--data-dir",
            str(femnist_dir),
            "--partition",
            "natural:writer_id",
            "--clients",
            "6",
            "--clients-per-round",
            "3",
            "--rounds",
            "2",
            "--local-epochs",
            "1",
            "--out",
            str(out),
            "--quiet",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in doc["rounds"]] == [1, 2]
    assert doc["config"]["task"] == f"hf:femnist@{femnist_dir.resolve()}"
    assert doc["config"]["partition"] == "natural:writer_id"
    assert 0.0 <= doc["final_accuracy"] <= 1.0
    assert (out / "model.pt").stat().st_size > 6_000_000  # LEAF's CNN: ~6.6M parameters


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "nosuch"], "unknown dataset 'nosuch'"),
        (["--dataset", "someone/not-cached"], "is not in the local Hugging Face cache"),
        (["--dataset", "femnist"], "save_to_disk"),
        (["--partition", "natural:author"], "has no column 'author'"),
        (["--clients", "7", "--partition", "natural"], "has 6 owners"),
        (["--partition", "shards:2"], "not available with --dataset"),
        (["--task", "digits-cnn"], "not both"),
    ],
)
def test_bad_dataset_input_is_one_line_and_no_run_folder(
    tmp_path: Path, femnist_dir: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "run"
    data = [] if "--dataset" in args else ["--dataset", "femnist", "--data-dir", str(femnist_dir)]
    proc = _run([*data, *args, "--clients-per-round", "2", "--out", str(out)], tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not out.exists()
