"""Stopping a child process and everything it started, with a bound.

Beside :mod:`fedfleet.cli_support`, importing no other fedfleet package, so every command
may use it (``coordinator up`` stops its SuperLink's tree with it, ``site join`` its
SuperNode's and its pinned apps'). Convention: a stop requested by SIGINT/SIGTERM exits 0 after one
"stopped" line on stderr; children get SIGTERM, then SIGKILL after the bound, and are reaped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path


def descendants(pid: int) -> list[int]:
    """PIDs of every living descendant of ``pid`` (read from /proc; [] where unreadable)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError, ValueError):
                children = [int(c) for c in (task / "children").read_text().split()]
                found.extend(children)
                todo.extend(children)
    return found


def stop_tree(
    process: subprocess.Popen[bytes] | subprocess.Popen[str], *, timeout: float = 10.0
) -> None:
    """SIGTERM ``process`` and its descendants, SIGKILL whatever is left after ``timeout``
    seconds, and reap ``process``. Descendants are collected before the parent goes (an
    orphan is re-parented and could not be found afterwards)."""
    if process.poll() is not None:
        return
    tree = [process.pid, *descendants(process.pid)]
    for pid in tree:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=timeout)
    deadline = time.monotonic() + timeout
    for pid in tree[1:]:
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    for pid in tree:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if pid == process.pid and process.poll() is not None:
                continue
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    process.wait()


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone: its parent reaps it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
