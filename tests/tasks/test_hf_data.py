"""Hugging Face datasets as tasks: small datasets of the real schemas, built here, saved
with ``save_to_disk`` and read back through the real loading code (tasks/hf_data.py);
the Hub is switched off (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) and the cache is empty."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

datasets = pytest.importorskip("datasets")
pytest.importorskip("flwr_datasets")

from PIL import Image  # noqa: E402

from tasks import PartitionSpec, get_task  # noqa: E402
from tasks.hf_data import SHAKESPEARE_LETTERS, split_clients, task_name  # noqa: E402

WRITERS = ("f0000_14", "f0001_41", "f0002_01", "f0003_22", "f0004_30", "f0005_07")


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No network and an empty Hugging Face cache, as on a machine that never downloaded."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    monkeypatch.setattr(datasets.config, "HF_MODULES_CACHE", tmp_path / "hf-modules")


def femnist_like(root: Path, *, rows: int = 60, seed: int = 0) -> Path:
    """flwrlabs/femnist's schema: image (28x28 L), writer_id, hsf_id, character
    (ClassLabel, 62); one 'train' split, as on the Hub."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 62, rows)
    images = [
        Image.fromarray((rng.random((28, 28)) * 40 + 4 * label).astype(np.uint8), mode="L")
        for label in labels
    ]
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
            "image": images,
            "writer_id": [WRITERS[i % len(WRITERS)] for i in range(rows)],
            "hsf_id": [i % 8 for i in range(rows)],
            "character": labels.tolist(),
        },
        features=features,
    )
    out = root / "femnist"
    datasets.DatasetDict({"train": ds}).save_to_disk(str(out))
    return out


def cifar_like(root: Path, *, rows: int = 40) -> Path:
    """uoft-cs/cifar10's schema: img (32x32 RGB), label (ClassLabel, 10); train/test."""
    rng = np.random.default_rng(1)
    features = datasets.Features(
        {"img": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)}
    )

    def split(n: int) -> datasets.Dataset:
        return datasets.Dataset.from_dict(
            {
                "img": [
                    Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8), "RGB")
                    for _ in range(n)
                ],
                "label": rng.integers(0, 10, n).tolist(),
            },
            features=features,
        )

    out = root / "cifar10"
    datasets.DatasetDict({"train": split(rows), "test": split(10)}).save_to_disk(str(out))
    return out


def shakespeare_like(root: Path, *, rows: int = 30) -> Path:
    """flwrlabs/shakespeare's schema: character_id, x (80 letters), y (the next one)."""
    rng = np.random.default_rng(2)
    letters = np.array(list(SHAKESPEARE_LETTERS))
    texts = ["".join(rng.choice(letters, 81)) for _ in range(rows)]
    ds = datasets.Dataset.from_dict(
        {
            "character_id": [f"THE_TEMPEST_ROLE{i % 3}" for i in range(rows)],
            "x": [t[:80] for t in texts],
            "y": [t[80] for t in texts],
        }
    )
    out = root / "shakespeare"
    ds.save_to_disk(str(out))
    return out


def test_femnist_loads_with_its_spec(tmp_path: Path) -> None:
    task = get_task(task_name("femnist", str(femnist_like(tmp_path))))
    data = task.load_data(0)
    assert task.input_shape == (1, 28, 28) and task.num_classes == 62
    assert data.x_train.shape == (54, 1, 28, 28) and data.x_test.shape == (6, 1, 28, 28)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert abs(float(data.x_train.mean())) < 1e-4  # standardised on the training rows
    model = task.build_model()
    assert model(__import__("torch").from_numpy(data.x_train[:2])).shape == (2, 62)


def test_natural_partition_gives_each_client_one_writer(tmp_path: Path) -> None:
    task = task_name("femnist", str(femnist_like(tmp_path)))
    train, _ = __import__("tasks.hf_data", fromlist=["open_splits"]).open_splits(task)
    rows, _ = __import__("tasks.hf_data", fromlist=["_rows"])._rows(task, 0)
    writers = np.asarray(train["writer_id"])[rows]
    parts = split_clients(task, 4, "natural:writer_id", 0)
    assert len(parts) == 4
    owners = [set(writers[p]) for p in parts]
    assert all(len(o) == 1 for o in owners)  # one writer per client
    assert len(set().union(*owners)) == 4  # four different writers
    # the default natural column of FEMNIST is writer_id
    assert [p.tolist() for p in split_clients(task, 4, "natural", 0)] == [p.tolist() for p in parts]


def test_dirichlet_and_iid_cover_every_training_row_once(tmp_path: Path) -> None:
    task = task_name("cifar10", str(cifar_like(tmp_path)))
    n = len(get_task(task).load_data(0).y_train)
    for partition in ("iid", "dirichlet:0.5", "dirichlet:0.5:label"):
        parts = split_clients(task, 5, partition, 0)
        joined = np.concatenate(parts)
        assert sorted(joined.tolist()) == list(range(n)), partition


def test_shakespeare_letters_and_lstm(tmp_path: Path) -> None:
    task = get_task(task_name("shakespeare", str(shakespeare_like(tmp_path))))
    data = task.load_data(0)
    assert data.x_train.shape[1:] == (80,) and task.num_classes == 80
    assert data.x_train.max() < 80 and data.y_train.max() < 80
    model = task.build_model()
    import torch

    assert model(torch.from_numpy(data.x_train[:3])).shape == (3, 80)
    assert len(split_clients(task.name, 3, "natural", 0)) == 3


def test_generic_tabular_dataset_is_inferred(tmp_path: Path) -> None:
    ds = datasets.Dataset.from_dict(
        {
            "a": [0.1 * i for i in range(30)],
            "b": list(range(30)),
            "cls": [i % 3 for i in range(30)],
        },
        features=datasets.Features(
            {
                "a": datasets.Value("float32"),
                "b": datasets.Value("int64"),
                "cls": datasets.ClassLabel(names=["x", "y", "z"]),
            }
        ),
    )
    ds.save_to_disk(str(tmp_path / "table"))
    task = get_task(task_name("my-table", str(tmp_path / "table")))
    assert task.input_shape == (2,) and task.num_classes == 3
    assert task.load_data(0).x_train.shape[1] == 2


def test_generic_dataset_without_classlabel_is_refused(tmp_path: Path) -> None:
    datasets.Dataset.from_dict({"a": [1.0, 2.0], "y": [0, 1]}).save_to_disk(str(tmp_path / "t"))
    with pytest.raises(ValueError, match="no ClassLabel column"):
        get_task(task_name("plain", str(tmp_path / "t")))


def test_column_partition_is_refused_for_builtin_tasks() -> None:
    from tasks import partition_indices

    with pytest.raises(ValueError, match="use it with --dataset"):
        partition_indices(np.zeros(4, np.int64), 2, PartitionSpec.parse("natural:w"), seed=0)


@pytest.mark.parametrize(
    ("text", "kind", "column"),
    [("natural:writer_id", "natural", "writer_id"), ("dirichlet:0.3:label", "dirichlet", "label")],
)
def test_partition_with_column_round_trips(text: str, kind: str, column: str) -> None:
    spec = PartitionSpec.parse(text)
    assert (spec.kind, spec.column, str(spec)) == (kind, column, text)


def test_generic_image_dataset_gets_a_cnn_of_its_shape(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    ds = datasets.Dataset.from_dict(
        {
            "image": [
                Image.fromarray(rng.integers(0, 255, (16, 16), np.uint8), "L") for _ in range(20)
            ],
            "label": [i % 2 for i in range(20)],
        },
        features=datasets.Features(
            {"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])}
        ),
    )
    datasets.DatasetDict({"train": ds, "test": ds.select(range(4))}).save_to_disk(
        str(tmp_path / "imgs")
    )
    task = get_task(task_name("someone/digits16", str(tmp_path / "imgs")))
    import torch

    data = task.load_data(0)
    assert task.input_shape == (1, 16, 16) and data.x_test.shape == (4, 1, 16, 16)
    assert task.build_model()(torch.from_numpy(data.x_train[:2])).shape == (2, 2)


def test_a_dataset_in_the_local_cache_is_read_by_name_offline(tmp_path: Path) -> None:
    """The cache as `load_dataset` leaves it (its parquet builder's output under
    <cache>/OWNER___NAME/default/0.0.0/HASH), read with the Hub off."""
    from datasets.packaged_modules.parquet.parquet import Parquet

    table = datasets.Dataset.from_dict(
        {"a": [float(i) for i in range(20)], "label": [i % 2 for i in range(20)]},
        features=datasets.Features(
            {"a": datasets.Value("float32"), "label": datasets.ClassLabel(names=["n", "y"])}
        ),
    )
    table.to_parquet(str(tmp_path / "t.parquet"))
    cache = Path(datasets.config.HF_DATASETS_CACHE)
    builder = Parquet(
        cache_dir=str(cache),
        dataset_name="cached-table",
        repo_id="tester/cached-table",
        data_files={"train": str(tmp_path / "t.parquet")},
        hash="0123abcd",
    )
    builder.download_and_prepare()
    (configs,) = (cache / "tester___cached-table").iterdir()
    configs.rename(configs.with_name("default"))  # a Hub dataset's config name
    task = get_task(task_name("tester/cached-table"))
    assert task.num_classes == 2 and len(task.load_data(0).y_train) == 18


def test_dataset_tasks_are_not_listed_among_the_tasks(tmp_path: Path) -> None:
    from tasks import available_tasks

    name = task_name("femnist", str(femnist_like(tmp_path)))
    assert get_task(name) is get_task(name)  # built once per process
    assert name not in available_tasks()


@pytest.fixture(scope="module")
def femnist_task(tmp_path_factory: pytest.TempPathFactory) -> str:
    return task_name("femnist", str(femnist_like(tmp_path_factory.mktemp("fem"), rows=48)))


@settings(max_examples=25, deadline=None)
@given(
    clients=st.integers(1, 6),
    alpha=st.floats(0.05, 100.0),
    seed=st.integers(0, 2**31 - 1),
    kind=st.sampled_from(["iid", "dirichlet", "natural"]),
)
def test_every_partition_is_disjoint_and_natural_ones_follow_owners(
    femnist_task: str, clients: int, alpha: float, seed: int, kind: str
) -> None:
    from tasks.hf_data import _rows, open_splits

    text = {"iid": "iid", "dirichlet": f"dirichlet:{alpha}", "natural": "natural"}[kind]
    parts = split_clients(femnist_task, clients, text, seed)
    joined = np.concatenate(parts)
    n_train = len(_rows(femnist_task, seed)[0])
    assert len(parts) == clients and len(set(joined.tolist())) == len(joined)
    if kind != "natural":
        assert sorted(joined.tolist()) == list(range(n_train))  # every row, once
    else:  # client i holds exactly the rows of the i-th writer (sorted ids)
        train, _ = open_splits(femnist_task)
        writers = np.asarray(train["writer_id"])[_rows(femnist_task, seed)[0]]
        owners = sorted(set(writers.tolist()))
        for i, part in enumerate(parts):
            assert part.tolist() == np.flatnonzero(writers == owners[i]).tolist()


def test_the_hub_is_switched_off_by_fedfleet_not_by_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With offline mode off everywhere, a dataset missing from the cache is still one
    clear error and no socket is opened; the flags are restored afterwards."""
    import socket

    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    dialled: list[object] = []

    def no_network(self: socket.socket, address: object) -> None:
        dialled.append(address)
        raise OSError("network is off in this test")

    def no_lookup(*args: object, **kwargs: object) -> None:
        dialled.append(args[0])
        raise OSError("network is off in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_lookup)
    with pytest.raises(ValueError, match="is not in the local Hugging Face cache; get it once"):
        get_task(task_name("someone/never-downloaded"))
    assert dialled == []
    assert datasets.config.HF_HUB_OFFLINE is False and constants.HF_HUB_OFFLINE is False
