"""Real federated datasets: Hugging Face ``datasets``, split by flwr-datasets' partitioners.

A run names a dataset (``fedfleet simulate --dataset femnist``); it becomes the task
``hf:NAME`` (``hf:NAME@DIR`` with ``--data-dir DIR``), so every process of a run —
coordinator, clients, Flower's engine — rebuilds the same task from its name alone.

The data is read, never downloaded: from ``DIR`` (``datasets.load_from_disk``, what
``save_to_disk`` wrote) or by name from the local Hugging Face cache, with the Hub
switched off for the call. Missing data is one line saying how to get it once.

What a dataset's columns mean is its :class:`DatasetSpec`: the built-in ones (FEMNIST,
CIFAR-10, Shakespeare, with the columns of their Hugging Face copies) or one inferred
from the features of any other dataset (a ``ClassLabel`` column to predict, and an
``Image`` column or numeric columns as inputs). Clients are split by flwr-datasets:
``NaturalIdPartitioner`` (``natural[:COLUMN]``), ``DirichletPartitioner``
(``dirichlet:ALPHA[:COLUMN]``) and ``IidPartitioner`` (``iid``), over the training rows
in a seeded order.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from tasks.base import Dataset, TaskSpec, TrainDefaults, fit_scaling
from tasks.partition import PartitionSpec

if TYPE_CHECKING:
    from torch import nn

PREFIX = "hf:"
HOLDOUT = 0.1  # test share of a dataset with one split (seeded rows)
# LEAF's Shakespeare vocabulary (80 letters); a letter outside it maps to the space.
SHAKESPEARE_LETTERS = (
    "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
)

Kind = Literal["image", "text", "tabular"]


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset's columns mean. ``input_columns``: the image column, the text
    column, or a table's numeric columns; ``natural_column``: the owner column a plain
    ``natural`` partition splits by ("" where there is none)."""

    name: str
    hub_id: str
    kind: Kind
    input_columns: tuple[str, ...]
    label_column: str
    input_shape: tuple[int, ...]
    num_classes: int
    build_model: Callable[[], nn.Module]
    natural_column: str = ""
    defaults: TrainDefaults = field(default_factory=TrainDefaults)
    description: str = ""


def _femnist_model() -> nn.Module:
    from tasks.hf_models import LeafFemnistCNN

    return LeafFemnistCNN(62)


def _cifar_model() -> nn.Module:
    from tasks.hf_models import SmallCNN

    return SmallCNN((3, 32, 32), 10)


def _shakespeare_model() -> nn.Module:
    from tasks.hf_models import LeafCharLSTM

    return LeafCharLSTM(len(SHAKESPEARE_LETTERS))


BUILTIN: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="femnist",
            hub_id="flwrlabs/femnist",
            kind="image",
            input_columns=("image",),
            label_column="character",
            input_shape=(1, 28, 28),
            num_classes=62,
            build_model=_femnist_model,
            natural_column="writer_id",
            defaults=TrainDefaults(learning_rate=0.05, momentum=0.9, batch_size=10),
            description="FEMNIST (LEAF): 28x28 handwritten characters, 62 classes, by writer",
        ),
        DatasetSpec(
            name="cifar10",
            hub_id="uoft-cs/cifar10",
            kind="image",
            input_columns=("img",),
            label_column="label",
            input_shape=(3, 32, 32),
            num_classes=10,
            build_model=_cifar_model,
            defaults=TrainDefaults(learning_rate=0.05, momentum=0.9, batch_size=32),
            description="CIFAR-10: 32x32 colour images, 10 classes",
        ),
        DatasetSpec(
            name="shakespeare",
            hub_id="flwrlabs/shakespeare",
            kind="text",
            input_columns=("x",),
            label_column="y",
            input_shape=(80,),
            num_classes=len(SHAKESPEARE_LETTERS),
            build_model=_shakespeare_model,
            natural_column="character_id",
            defaults=TrainDefaults(learning_rate=0.8, momentum=0.0, batch_size=10),
            description="Shakespeare (LEAF): next letter after 80, by speaking role",
        ),
    )
}
BY_HUB_ID = {spec.hub_id: spec.name for spec in BUILTIN.values()}


# --- names --------------------------------------------------------------------------
def task_name(dataset: str, data_dir: str = "") -> str:
    """The task name of ``--dataset`` (and ``--data-dir``): ``hf:NAME[@DIR]``."""
    name = BY_HUB_ID.get(dataset, dataset)
    if not name or "@" in name or name != name.strip():
        raise ValueError(f"dataset {dataset!r}: give a name such as femnist or OWNER/NAME")
    if not data_dir and name not in BUILTIN and name.count("/") != 1:
        raise ValueError(
            f"unknown dataset {dataset!r}; choose {', '.join(BUILTIN)}, a Hugging Face id "
            "(OWNER/NAME) in the local cache, or any name with --data-dir DIR"
        )
    return PREFIX + name + (f"@{Path(data_dir).resolve()}" if data_dir else "")


def is_dataset_task(name: str) -> bool:
    """Whether ``name`` is a dataset task's name (syntax only; nothing is loaded)."""
    return name.startswith(PREFIX) and len(name) > len(PREFIX)


def _parse(task: str) -> tuple[str, str]:
    name, _, data_dir = task[len(PREFIX) :].partition("@")
    return name, data_dir


# --- loading --------------------------------------------------------------------------
@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """The Hugging Face Hub switched off for this block: a run reads, never downloads."""
    import datasets
    from huggingface_hub import constants

    saved = datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved


def _how_to_get(name: str) -> str:
    hub_id = BUILTIN[name].hub_id if name in BUILTIN else name
    return (
        f'get it once with network: python -c "import datasets; datasets.load_dataset('
        f"'{hub_id}').save_to_disk('DIR')\", then pass --data-dir DIR"
    )


@lru_cache(maxsize=4)
def open_splits(task: str) -> tuple[Any, Any]:
    """The (train, test or None) ``datasets.Dataset`` splits of a dataset task."""
    import datasets

    name, data_dir = _parse(task)
    try:
        if data_dir:
            if not Path(data_dir).is_dir():
                raise ValueError(f"--data-dir {data_dir} does not exist; {_how_to_get(name)}")
            loaded = datasets.load_from_disk(data_dir)
        else:
            hub_id = BUILTIN[name].hub_id if name in BUILTIN else name
            with _hub_offline(), contextlib.redirect_stderr(io.StringIO()):
                loaded = datasets.load_dataset(hub_id)
    except (ConnectionError, FileNotFoundError, datasets.exceptions.DatasetNotFoundError):
        where = f"in {data_dir}" if data_dir else "in the local Hugging Face cache"
        raise ValueError(f"dataset {name!r} is not {where}; {_how_to_get(name)}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise ValueError(
                f"dataset {name!r} has no 'train' split (it has {', '.join(loaded)}); "
                "save a DatasetDict with a 'train' split"
            )
        return loaded["train"], loaded.get("test")
    return loaded, None


def dataset_spec(task: str) -> DatasetSpec:
    """The built-in spec of the dataset, else one inferred from its features."""
    name, _ = _parse(task)
    train, _ = open_splits(task)
    spec = BUILTIN.get(name) or infer_spec(name, train.features, task=task)
    missing = [c for c in (*spec.input_columns, spec.label_column) if c not in train.features]
    if missing:
        raise ValueError(
            f"dataset {name!r} has no column {missing[0]!r} (its columns: "
            f"{', '.join(train.column_names)}); give the data of {spec.hub_id}"
        )
    return spec


def infer_spec(name: str, features: Any, *, task: str) -> DatasetSpec:
    """A spec from the features: the ``ClassLabel`` column (``label`` if several) is
    predicted from the first ``Image`` column (a small CNN) or else from every numeric
    column (an MLP)."""
    import datasets

    labels = [c for c, f in features.items() if isinstance(f, datasets.ClassLabel)]
    if not labels:
        raise ValueError(
            f"dataset {name!r} has no ClassLabel column to predict (its columns: "
            f"{', '.join(features)}); cast the label with dataset.class_encode_column(COLUMN)"
        )
    label = "label" if "label" in labels else labels[0]
    num_classes = features[label].num_classes
    images = [c for c, f in features.items() if isinstance(f, datasets.Image)]
    if images:
        return DatasetSpec(
            name=name,
            hub_id=name,
            kind="image",
            input_columns=(images[0],),
            label_column=label,
            input_shape=(),  # read from the first image (image_shape)
            num_classes=num_classes,
            build_model=lambda: _generic_model(task),
        )
    numeric = tuple(
        c
        for c, f in features.items()
        if c != label
        and isinstance(f, datasets.Value)
        and (f.dtype.startswith(("int", "uint", "float")) or f.dtype == "bool")
    )
    if not numeric:
        raise ValueError(
            f"dataset {name!r} has neither an Image column nor numeric columns to learn "
            f"{label!r} from (its columns: {', '.join(features)})"
        )
    return DatasetSpec(
        name=name,
        hub_id=name,
        kind="tabular",
        input_columns=numeric,
        label_column=label,
        input_shape=(len(numeric),),
        num_classes=num_classes,
        build_model=lambda: _generic_model(task),
    )


def _generic_model(task: str) -> nn.Module:
    spec = get_dataset_task(task)
    from tasks.hf_models import SmallCNN, TabularMLP

    if len(spec.input_shape) == 3:
        return SmallCNN(spec.input_shape, spec.num_classes)  # type: ignore[arg-type]
    return TabularMLP(spec.input_shape[0], spec.num_classes)


# --- features -------------------------------------------------------------------------
def _images(column: Any, spec: DatasetSpec, name: str) -> np.ndarray:
    """(n, C, H, W) float pixels in 0..1; every image must have the spec's shape."""
    channels = spec.input_shape[0] if spec.input_shape else None
    arrays: list[np.ndarray] = []
    for i, image in enumerate(column):
        mode = "L" if channels == 1 or (channels is None and image.mode in ("L", "1")) else "RGB"
        pixels = np.asarray(image.convert(mode), dtype=np.float32) / 255.0
        pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
        want = spec.input_shape or (arrays[0].shape if arrays else pixels.shape)
        if pixels.shape != want:
            raise ValueError(
                f"dataset {name!r}: image {i} is {pixels.shape} (channels, height, width), "
                f"expected {tuple(want)}; resize the images to one size"
            )
        channels = pixels.shape[0]
        arrays.append(pixels)
    return np.stack(arrays) if arrays else np.zeros((0, *spec.input_shape), np.float32)


def _letters(texts: list[str], length: int, name: str, column: str) -> np.ndarray:
    index = {c: i for i, c in enumerate(SHAKESPEARE_LETTERS)}
    space = index[" "]
    out = np.empty((len(texts), length), dtype=np.float32)
    for i, text in enumerate(texts):
        if len(text) != length:
            raise ValueError(
                f"dataset {name!r}: row {i} of column {column!r} has {len(text)} letters, "
                f"expected {length}"
            )
        out[i] = [index.get(c, space) for c in text]
    return out


def _features(split: Any, spec: DatasetSpec, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Raw model inputs (float32) and class ids (int64) of one split."""
    if spec.kind == "image":
        x = _images(split[spec.input_columns[0]], spec, name)
    elif spec.kind == "text":
        x = _letters(list(split[spec.input_columns[0]]), spec.input_shape[0], name, "x")
    else:
        x = np.stack([np.asarray(split[c], dtype=np.float32) for c in spec.input_columns], axis=1)
    labels = split[spec.label_column]
    if spec.kind == "text":
        y = _letters(list(labels), 1, name, spec.label_column)[:, 0].astype(np.int64)
    else:
        y = np.asarray(labels, dtype=np.int64)
    return x, y


# --- the task -------------------------------------------------------------------------
@lru_cache(maxsize=4)
def _rows(task: str, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Training rows of the train split, and its held-out test rows where the dataset
    has no test split (``HOLDOUT``, seeded)."""
    train, test = open_splits(task)
    n = len(train)
    if test is not None or n < 2:
        return np.arange(n), None
    perm = np.random.default_rng(seed).permutation(n)
    cut = max(1, round(n * HOLDOUT))
    return np.sort(perm[cut:]), np.sort(perm[:cut])


@lru_cache(maxsize=4)
def load_dataset_task(task: str, seed: int) -> Dataset:
    """The task's arrays: inputs scaled by the training rows' mean and std (images and
    tables; letters stay ids)."""
    spec = get_dataset_task(task)
    name, _ = _parse(task)
    train, test = open_splits(task)
    train_rows, held_out = _rows(task, seed)
    x_train, y_train = _features(train.select(train_rows), spec, name)
    if held_out is not None:
        x_test, y_test = _features(train.select(held_out), spec, name)
    else:
        x_test, y_test = _features(test, spec, name)
    if spec.kind == "text":
        return Dataset(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    mean, std = fit_scaling(x_train, per_feature=spec.kind == "tabular")
    return Dataset(
        x_train=((x_train - mean) / std).astype(np.float32),
        y_train=y_train,
        x_test=((x_test - mean) / std).astype(np.float32),
        y_test=y_test,
        input_mean=mean,
        input_std=std,
    )


def _partition_column(task: str, spec: DatasetSpec, partition: PartitionSpec) -> str:
    name, _ = _parse(task)
    train, _ = open_splits(task)
    if partition.kind == "shards":
        raise ValueError(
            f"partition {partition} is not available with --dataset; use iid, "
            "dirichlet:ALPHA[:COLUMN] or natural[:COLUMN]"
        )
    column = partition.column
    if not column and partition.kind == "natural":
        column = spec.natural_column
        if not column:
            raise ValueError(
                f"dataset {name!r} has no natural owner column known to fedfleet; name one: "
                f"--partition natural:COLUMN (its columns: {', '.join(train.column_names)})"
            )
    column = column or spec.label_column
    if column not in train.column_names:
        raise ValueError(
            f"dataset {name!r} has no column {column!r} for --partition {partition}; "
            f"its columns: {', '.join(train.column_names)}"
        )
    return column


@lru_cache(maxsize=8)
def split_clients(task: str, num_clients: int, partition: str, seed: int) -> list[np.ndarray]:
    """One sorted index array into ``x_train`` per client, by flwr-datasets' partitioner
    over the training rows in a seeded order. ``natural``: client ``i`` holds the
    ``i``-th owner's rows (owners beyond ``num_clients`` are left out)."""
    import datasets
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        NaturalIdPartitioner,
        Partitioner,
    )

    part = PartitionSpec.parse(partition)
    spec = get_dataset_task(task)
    column = _partition_column(task, spec, part)
    train, _ = open_splits(task)
    train_rows, _ = _rows(task, seed)
    values = np.asarray(train[column], dtype=object)[train_rows] if part.kind != "iid" else None
    order = np.random.default_rng(seed).permutation(len(train_rows))
    table: dict[str, Any] = {"__row__": order.tolist()}
    if values is not None:
        table[column] = values[order].tolist()
    rows = datasets.Dataset.from_dict(table)
    partitioner: Partitioner
    if part.kind == "natural":
        partitioner = NaturalIdPartitioner(partition_by=column)
    elif part.kind == "dirichlet":
        partitioner = DirichletPartitioner(
            num_partitions=num_clients,
            partition_by=column,
            alpha=part.alpha,
            min_partition_size=0,
            seed=seed,
        )
    else:
        partitioner = IidPartitioner(num_partitions=num_clients)
    partitioner.dataset = rows
    with contextlib.redirect_stderr(io.StringIO()):  # flwr-datasets' progress bars
        available = partitioner.num_partitions
        if num_clients > available:
            name, _ = _parse(task)
            raise ValueError(
                f"dataset {name!r} has {available} owners in column {column!r}; use "
                f"--clients {available} or fewer"
            )
        return [
            np.sort(np.asarray(partitioner.load_partition(i)["__row__"], dtype=np.int64))
            for i in range(num_clients)
        ]


@lru_cache(maxsize=8)
def get_dataset_task(task: str) -> DatasetSpec:
    """The dataset spec of a task name, with the input shape of an inferred image
    dataset read from its first image."""
    name, _ = _parse(task)
    spec = dataset_spec(task)
    if spec.kind == "image" and not spec.input_shape:
        train, _ = open_splits(task)
        if len(train) == 0:
            raise ValueError(f"dataset {name!r} has no rows")
        first = _images(train.select([0])[spec.input_columns[0]], spec, name)
        spec = DatasetSpec(**{**spec.__dict__, "input_shape": tuple(first.shape[1:])})
    return spec


def build_task(task: str) -> TaskSpec:
    """The :class:`TaskSpec` of a dataset task name (opens the data; loads no rows)."""
    spec = get_dataset_task(task)
    return TaskSpec(
        name=task,
        description=spec.description or f"Hugging Face dataset {spec.name}",
        build_model=spec.build_model,
        load_data=lambda seed: load_dataset_task(task, seed),
        num_classes=spec.num_classes,
        input_shape=spec.input_shape,
        defaults=spec.defaults,
        split_clients=lambda n, part, seed: split_clients(task, n, str(part), seed),
    )


def check(task: str, *, num_clients: int, partition: str, seed: int) -> None:
    """Open the data and split it as a run would: every bad input is a ``ValueError``
    before a run starts."""
    split_clients(task, num_clients, partition, seed)
