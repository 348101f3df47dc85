"""A site's records from CSV, Parquet and NumPy: read per schema, mismatches named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from edge_client.site_config import DataSpec
from edge_client.site_data import SchemaError, load_site_data

SCHEMA = {"age": "int", "radius": "float", "smoker": "bool"}


def _records(n: int = 20) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = np.stack(
        [rng.integers(20, 90, n), rng.normal(size=n).round(4), rng.integers(0, 2, n)], axis=1
    ).astype(np.float32)
    return x, rng.integers(0, 2, n)


def _csv(path: Path, x: np.ndarray, y: np.ndarray) -> DataSpec:
    rows = ["age,radius,smoker,notes,label"]
    rows += [
        f"{int(a)},{r},{'true' if s else 'false'},free text,{lab}"
        for (a, r, s), lab in zip(x, y, strict=True)
    ]
    path.write_text("\n".join(rows) + "\n")
    return DataSpec(path=path, format="csv", label="label", schema=dict(SCHEMA))  # type: ignore[arg-type]


def _parquet(path: Path, x: np.ndarray, y: np.ndarray) -> DataSpec:
    table = pa.table(
        {
            "age": x[:, 0].astype(np.int64),
            "radius": x[:, 1].astype(np.float64),
            "smoker": x[:, 2].astype(bool),
            "label": y.astype(np.int64),
        }
    )
    pq.write_table(table, path)
    return DataSpec(path=path, format="parquet", label="label", schema=dict(SCHEMA))  # type: ignore[arg-type]


def _npz(path: Path, x: np.ndarray, y: np.ndarray) -> DataSpec:
    np.savez(path, x=x, y=y)
    return DataSpec(path=path, format="npz", label="label", schema=dict(SCHEMA))  # type: ignore[arg-type]


@pytest.mark.parametrize("writer", [_csv, _parquet, _npz], ids=["csv", "parquet", "npz"])
def test_every_format_reads_the_same_records(tmp_path: Path, writer) -> None:  # type: ignore[no-untyped-def]
    # Prepare
    x, y = _records()
    spec = writer(tmp_path / f"records.{writer.__name__.strip('_')}", x, y)
    # Execute
    data = load_site_data(spec, num_features=3, num_classes=2)
    # Assert: nothing lost, a 10% held-out split, values as written
    got_x = np.concatenate([data.x_train, data.x_eval])
    got_y = np.concatenate([data.y_train, data.y_eval])
    assert len(data.y_eval) == 2 and len(got_y) == 20
    order = np.lexsort(got_x.T)
    expected = np.lexsort(x.T)
    np.testing.assert_allclose(got_x[order], x[expected], rtol=1e-6)
    np.testing.assert_array_equal(got_y[order], y[expected])


def test_csv_wrong_type_names_column_row_and_type(tmp_path: Path) -> None:
    x, y = _records(4)
    spec = _csv(tmp_path / "r.csv", x, y)
    text = spec.path.read_text().splitlines()
    text[3] = text[3].replace(text[3].split(",")[0], "old", 1)
    spec.path.write_text("\n".join(text) + "\n")
    with pytest.raises(SchemaError, match=r"column 'age', row 4: 'old' is not a valid int"):
        load_site_data(spec, num_features=3, num_classes=2)


def test_missing_column_names_it_and_its_type(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("age,smoker,label\n1,true,0\n2,false,1\n")
    spec = DataSpec(path=path, format="csv", label="label", schema=dict(SCHEMA))  # type: ignore[arg-type]
    with pytest.raises(SchemaError, match=r"column 'radius' \(expected type float\) is missing"):
        load_site_data(spec, num_features=3, num_classes=2)


def test_parquet_wrong_column_type_is_named(tmp_path: Path) -> None:
    x, y = _records()
    path = tmp_path / "r.parquet"
    table = pa.table(
        {
            "age": [str(int(v)) for v in x[:, 0]],
            "radius": x[:, 1],
            "smoker": x[:, 2] > 0,
            "label": y,
        }
    )
    pq.write_table(table, path)
    spec = DataSpec(path=path, format="parquet", label="label", schema=dict(SCHEMA))  # type: ignore[arg-type]
    with pytest.raises(SchemaError, match=r"column 'age' has type string; the schema says age"):
        load_site_data(spec, num_features=3, num_classes=2)


def test_feature_count_and_label_range_checked_against_the_task(tmp_path: Path) -> None:
    x, y = _records()
    spec = _npz(tmp_path / "r.npz", x, y)
    with pytest.raises(SchemaError, match="3 feature columns but the task's model takes 30"):
        load_site_data(spec, num_features=30, num_classes=2)
    spec = _npz(tmp_path / "r2.npz", x, y + 5)
    with pytest.raises(SchemaError, match="out of range: the task has 2 classes"):
        load_site_data(spec, num_features=3, num_classes=2)


def test_bad_label_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("age,radius,smoker,label\n1,1.0,true,yes\n2,2.0,false,1\n")
    spec = DataSpec(path=path, format="csv", label="label", schema=dict(SCHEMA))  # type: ignore[arg-type]
    with pytest.raises(SchemaError, match="label column 'label', row 2: 'yes' is not a class"):
        load_site_data(spec, num_features=3, num_classes=2)
    missing = DataSpec(path=tmp_path / "nope.csv", format="csv", label="label", schema={})
    with pytest.raises(SchemaError, match="does not exist"):
        load_site_data(missing, num_features=3, num_classes=2)


def test_a_sites_raw_records_get_the_tasks_scaling(tmp_path: Path) -> None:
    """A site holds raw measurements; the model sees them scaled exactly as the task's
    own (simulated, evaluated, exported) data: the same rows give the same inputs."""
    from edge_client.site_data import load_for_task
    from tasks import get_task
    from tests.edge_client.site_testkit import make_site

    # Prepare: raw (unscaled) breast-cancer records, as a hospital would hold them.
    data = get_task("breast-cancer-mlp").load_data(3)
    assert data.input_mean is not None and data.input_std is not None
    rows = data.x_train[:40]
    raw = rows * data.input_std + data.input_mean
    assert raw.mean() > 10  # really raw: areas in the hundreds, not standardised values
    config = make_site(
        tmp_path,
        {
            'path = "data/records.csv"': 'path = "data/records.npz"',
            'age = "int"\nradius = "float"\n': "",
        },
    )
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "records.npz", x=raw, y=data.y_train[:40])
    # Execute
    site = load_for_task(config, "breast-cancer-mlp", seed=3)
    # Assert: every site row is one of the task's scaled rows, to float32 rounding
    got = np.concatenate([site.x_train, site.x_eval])
    distance = np.abs(got[:, None, :] - rows[None, :, :]).max(axis=2).min(axis=1)
    assert distance.max() < 1e-4
    assert abs(float(got.mean())) < 1.0
