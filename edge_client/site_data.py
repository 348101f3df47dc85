"""A site's own records: CSV, Parquet or NumPy files read and checked against its schema.

The schema in ``site.toml`` lists every feature column with its type; the label column
holds class indices. Any mismatch — a missing column, a value of the wrong type, a
feature count the task cannot take — is a ``SchemaError`` naming the column and the
expected type, raised before any training. Columns not in the schema are never read.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge_client.data import ClientData
from edge_client.site_config import ColumnType, DataSpec

EVAL_FRACTION = 0.1
_SPLIT_SEED = 0x517E


class SchemaError(ValueError):
    """The site's data does not match its schema (or the task)."""


def _parse(value: str, ctype: ColumnType, column: str, row: int) -> float:
    text = value.strip()
    try:
        if ctype == "bool":
            lowered = text.lower()
            if lowered in ("true", "1"):
                return 1.0
            if lowered in ("false", "0"):
                return 0.0
            raise ValueError(text)
        if ctype == "int":
            return float(int(text))
        parsed = float(text)
        if not math.isfinite(parsed):
            raise ValueError(text)
        return parsed
    except ValueError:
        raise SchemaError(
            f"column {column!r}, row {row}: {value!r} is not a valid {ctype} "
            f'(the schema says {column} = "{ctype}")'
        ) from None


def _label(value: float | str, column: str, row: int) -> int:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number == int(number) and number >= 0):
        raise SchemaError(
            f"label column {column!r}, row {row}: {value!r} is not a class index (an int >= 0)"
        )
    return int(number)


def read_csv(spec: DataSpec) -> tuple[np.ndarray, np.ndarray]:
    """Features (float32, schema order) and labels (int64) from a CSV with a header."""
    with spec.path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        _check_columns(header, spec)
        rows_x, rows_y = [], []
        for row_no, row in enumerate(reader, start=2):
            rows_x.append([_parse(row[c] or "", t, c, row_no) for c, t in spec.schema.items()])
            rows_y.append(_label(row[spec.label] or "", spec.label, row_no))
    return np.asarray(rows_x, dtype=np.float32).reshape(-1, len(spec.schema)), np.asarray(
        rows_y, dtype=np.int64
    )


def read_parquet(spec: DataSpec) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels from a Parquet file; column types are checked, not coerced."""
    try:
        import pyarrow.parquet as pq
        import pyarrow.types as pat
    except ModuleNotFoundError:
        raise SchemaError("reading Parquet needs pyarrow: pip install pyarrow") from None
    table = pq.read_table(spec.path)
    _check_columns(table.column_names, spec)
    checks = {
        "float": lambda t: pat.is_floating(t) or pat.is_integer(t),
        "int": pat.is_integer,
        "bool": pat.is_boolean,
    }
    columns = []
    for column, ctype in spec.schema.items():
        arrow_type = table.schema.field(column).type
        if not checks[ctype](arrow_type):
            raise SchemaError(
                f'column {column!r} has type {arrow_type}; the schema says {column} = "{ctype}"'
            )
        values = table.column(column)
        if values.null_count:
            raise SchemaError(f"column {column!r} has {values.null_count} missing values")
        columns.append(values.to_numpy().astype(np.float32))
    labels = table.column(spec.label)
    if not pat.is_integer(labels.type):
        raise SchemaError(
            f"label column {spec.label!r} has type {labels.type}; it must hold int class indices"
        )
    y = labels.to_numpy().astype(np.int64)
    if (y < 0).any():
        raise SchemaError(f"label column {spec.label!r} has negative class indices")
    return np.stack(columns, axis=1), y


def read_npz(spec: DataSpec) -> tuple[np.ndarray, np.ndarray]:
    """Arrays ``x`` (rows × features) and ``y`` (class indices) from a ``.npz`` file."""
    with np.load(spec.path, allow_pickle=False) as npz:
        missing = {"x", "y"} - set(npz.files)
        if missing:
            raise SchemaError(
                f"{spec.path.name} lacks array {sorted(missing)[0]!r} (needs x and y)"
            )
        x, y = npz["x"], npz["y"]
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
        raise SchemaError(
            f"array 'x' must be 2-D numbers (rows × features), got {x.dtype}{x.shape}"
        )
    if spec.schema and x.shape[1] != len(spec.schema):
        raise SchemaError(
            f"array 'x' has {x.shape[1]} columns but data.schema lists {len(spec.schema)}"
        )
    if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer) or (y < 0).any():
        raise SchemaError("array 'y' must hold one int class index >= 0 per row of 'x'")
    return x.astype(np.float32), y.astype(np.int64)


def _check_columns(present: Sequence[str], spec: DataSpec) -> None:
    for column, ctype in spec.schema.items():
        if column not in present:
            raise SchemaError(
                f"column {column!r} (expected type {ctype}) is missing from {spec.path.name}"
            )
    if spec.label not in present:
        raise SchemaError(
            f"label column {spec.label!r} is missing from {spec.path.name}; set data.label"
        )


_READERS = {"csv": read_csv, "parquet": read_parquet, "npz": read_npz}


def load_site_data(spec: DataSpec, *, num_features: int, num_classes: int) -> ClientData:
    """Read the site's records and split off a held-out 10% for local evaluation.

    ``num_features``/``num_classes`` are what the task's model takes; a mismatch is a
    ``SchemaError`` before any training.
    """
    if not spec.path.is_file():
        raise SchemaError(f"data file {spec.path} does not exist; fix data.path in site.toml")
    x, y = _READERS[spec.format](spec)
    if len(y) < 2:
        raise SchemaError(f"{spec.path.name} has {len(y)} records; a site needs at least 2")
    if x.shape[1] != num_features:
        raise SchemaError(
            f"the data has {x.shape[1]} feature columns but the task's model takes "
            f"{num_features}; fix data.schema or choose another task"
        )
    if int(y.max()) >= num_classes:
        raise SchemaError(
            f"label {int(y.max())} is out of range: the task has {num_classes} classes "
            f"(0..{num_classes - 1})"
        )
    order = np.random.default_rng(_SPLIT_SEED).permutation(len(y))
    n_eval = max(1, int(len(y) * EVAL_FRACTION))
    eval_idx, train_idx = order[:n_eval], order[n_eval:]
    return ClientData(
        x_train=x[train_idx], y_train=y[train_idx], x_eval=x[eval_idx], y_eval=y[eval_idx]
    )


def load_for_task(config_path: Path, task_name: str, *, seed: int) -> ClientData:
    """The site's data shaped and scaled for ``task_name`` (ClientApp entry point).

    The site's files hold raw records (a hospital's measurements as recorded); they are
    scaled with the task's own input scaling (``Dataset.input_mean``/``input_std`` of
    ``load_data(seed)``, fit on the task's training split, ``seed`` the run's), the
    scaling every other party's copy of the model sees: the simulator, the
    coordinator's evaluation and the exported bundles."""
    from edge_client.site_config import SiteConfig
    from tasks import get_task

    config = SiteConfig.load(config_path)
    task = get_task(task_name)
    num_features = int(np.prod(task.input_shape))
    data = load_site_data(config.data, num_features=num_features, num_classes=task.num_classes)
    reference = task.load_data(seed)
    shape = (-1, *task.input_shape)
    return ClientData(
        x_train=reference.scale_raw(data.x_train.reshape(shape)),
        y_train=data.y_train,
        x_eval=reference.scale_raw(data.x_eval.reshape(shape)),
        y_eval=data.y_eval,
    )
