"""State files only their owner can read: folders 0700, files 0600, whatever the umask.

Databases, privacy ledgers, audit logs and run outputs say what a site or a coordinator
did (and, for a ledger, how much of a privacy budget is left); another local user has no
business reading them. Every fedfleet package that writes state creates it through these
functions. They create with ``os.open``/``os.mkdir`` and the private mode, then set the
mode again with ``fchmod``/``chmod``: the umask can only remove bits at creation, and a
umask such as 0o277 would otherwise leave a file the owner cannot write.

This module lives in ``privacy/`` (which imports nothing from the other fedfleet
packages) so that the coordinator, the fleet, the site runtime and the simulator can all
use it without breaking the layering of docs/DESIGN.md. Existing files and folders are
left as they are (a folder the user made, e.g. ``--out .``, keeps its mode); only what
these functions create is made private.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def private_dir(path: Path | str) -> Path:
    """Create folder ``path`` and its missing parents, each 0700; return ``path``.

    Folders that already exist keep their mode.
    """
    path = Path(path)
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, PRIVATE_DIR_MODE)
        except FileExistsError:  # another process made it first: it is theirs to set
            continue
        os.chmod(folder, PRIVATE_DIR_MODE)
    if not path.is_dir():
        raise NotADirectoryError(f"{path} exists and is not a folder; choose another path")
    return path


def create_private_file(path: Path | str) -> Path:
    """Create ``path`` empty with mode 0600 (its folder 0700) unless it exists; return it.

    For files another library opens by name, e.g. an SQLite database: SQLite gives its
    ``-wal``/``-shm``/``-journal`` files the database file's mode, so they are private too.
    """
    path = Path(path)
    private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    except FileExistsError:
        return path
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
    finally:
        os.close(fd)
    return path


def open_private(path: Path | str, flags: int) -> int:
    """``os.open(path, flags | O_CREAT)`` with mode 0600 (also for an existing file, which
    must be ours since we write it); return the descriptor."""
    fd = os.open(path, flags | os.O_CREAT, PRIVATE_FILE_MODE)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def fsync_dir(path: Path | str) -> None:
    """Make a rename or a new file in folder ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private_bytes(path: Path | str, data: bytes) -> None:
    """Replace ``path`` by ``data`` atomically: a 0600 temporary file in the same folder
    (created 0700 if missing), fsynced, renamed over ``path``, the folder fsynced."""
    path = Path(path)
    private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
