"""Prepared datasets kept on disk, so that a run need not import what prepared them.

Preparing scikit-learn's digits means importing scikit-learn and SciPy: most of a
second, more than everything else a simulation does before its first round. The
prepared arrays are a pure function of the task, the seed and the version of the
library that prepared them, so :func:`cached_dataset` saves them once as ``.npz`` under
that key and reads them back afterwards. The folder is ``$FEDFLEET_CACHE_DIR``, else
``$XDG_CACHE_HOME/fedfleet``, else ``~/.cache/fedfleet``; ``FEDFLEET_CACHE_DIR=off``
turns the cache off. Files are written atomically; a missing, unreadable or damaged
file is prepared again, and a folder that cannot be written only costs the preparing.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import MISSING, fields
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from tasks.base import Dataset

ENV_CACHE_DIR = "FEDFLEET_CACHE_DIR"
_FORMAT = 1  # bump when the file layout changes


def cache_dir() -> Path | None:
    """The cache folder, or ``None`` when ``FEDFLEET_CACHE_DIR=off``."""
    configured = os.environ.get(ENV_CACHE_DIR, "")
    if configured.lower() == "off":
        return None
    if configured:
        return Path(configured)
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "fedfleet"


def library_version(distribution: str) -> str:
    """The installed version of ``distribution`` (without importing it)."""
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "absent"


def cached_dataset(key: str, prepare: Callable[[], Dataset]) -> Dataset:
    """The dataset saved under ``key`` (letters, digits, ``.-_``), else ``prepare()``'s,
    saved under ``key`` for next time."""
    if not key or not all(c.isalnum() or c in ".-_" for c in key):
        raise ValueError(f"cache key {key!r}: use letters, digits, '.', '-' and '_' only")
    folder = cache_dir()
    path = folder / f"{key}.v{_FORMAT}.npz" if folder is not None else None
    if path is not None:
        found = _read(path)
        if found is not None:
            return found
    dataset = prepare()
    if path is not None:
        _write(path, dataset)
    return dataset


def _read(path: Path) -> Dataset | None:
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        return None
    names = {f.name for f in fields(Dataset)}
    required = {f.name for f in fields(Dataset) if f.default is MISSING}
    if not required <= arrays.keys() or not arrays.keys() <= names:
        return None
    try:
        return Dataset(**arrays)
    except ValueError:
        return None


def _write(path: Path, dataset: Dataset) -> None:
    arrays = {
        f.name: getattr(dataset, f.name)
        for f in fields(Dataset)
        if getattr(dataset, f.name) is not None
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    except OSError:
        return  # no cache folder to write: prepared again next time
    try:
        with os.fdopen(handle, "wb") as out:
            np.savez(out, **arrays)
        os.replace(tmp, path)  # readers see the whole file or none
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
