"""The on-disk dataset cache: the same arrays as preparing them, and never in the way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks.base import Dataset
from tasks.dataset_cache import ENV_CACHE_DIR, cached_dataset
from tasks.digits import prepare_digits


def _assert_same(a: Dataset, b: Dataset) -> None:
    for name in ("x_train", "y_train", "x_test", "y_test"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)
    assert (a.groups_train is None) == (b.groups_train is None)


def test_digits_from_the_cache_equal_digits_prepared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    monkeypatch.setenv(ENV_CACHE_DIR, str(tmp_path))
    calls: list[int] = []

    def prepare() -> Dataset:
        calls.append(1)
        return prepare_digits(3)

    # Execute: the first call prepares and saves, the second reads the file.
    first = cached_dataset("digits-test", prepare)
    second = cached_dataset("digits-test", prepare)
    # Assert
    assert len(calls) == 1 and len(list(tmp_path.glob("digits-test*.npz"))) == 1
    _assert_same(first, prepare_digits(3))
    _assert_same(second, prepare_digits(3))
    assert not list(tmp_path.glob("*.tmp"))


def test_a_damaged_file_is_prepared_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_CACHE_DIR, str(tmp_path))
    data = Dataset(
        x_train=np.ones((3, 2), np.float32),
        y_train=np.zeros(3, np.int64),
        x_test=np.ones((1, 2), np.float32),
        y_test=np.zeros(1, np.int64),
        groups_train=np.arange(3),
    )
    cached_dataset("tiny", lambda: data)
    (file,) = tmp_path.glob("tiny*.npz")
    file.write_bytes(file.read_bytes()[:50])  # truncated
    calls: list[int] = []
    again = cached_dataset("tiny", lambda: calls.append(1) or data)  # type: ignore[func-returns-value]
    assert calls == [1]
    _assert_same(again, data)
    _assert_same(cached_dataset("tiny", lambda: data), data)  # rewritten whole
    assert cached_dataset("tiny", lambda: data).groups_train is not None


def test_off_and_unwritable_folders_only_cost_the_preparing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = prepare_digits(0)
    monkeypatch.setenv(ENV_CACHE_DIR, "off")
    assert cached_dataset("digits-off", lambda: data) is data
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(ENV_CACHE_DIR, str(blocker / "cache"))
    assert cached_dataset("digits-blocked", lambda: data) is data


def test_keys_that_are_not_file_names_are_refused() -> None:
    with pytest.raises(ValueError, match="letters, digits"):
        cached_dataset("../escape", lambda: prepare_digits(0))
