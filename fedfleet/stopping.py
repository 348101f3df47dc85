"""Stopping a long-running command, and a child process with everything it started.

Beside :mod:`fedfleet.cli_support`, importing no other fedfleet package, so every command
may use it (``coordinator up`` stops its SuperLink's tree with it, ``site join`` its
SuperNode's and its pinned apps'; ``fleet serve``, ``fleet mqtt`` and ``device run`` take
their stop requests through :class:`StopSignals`). Convention: a stop requested by
SIGINT/SIGTERM exits 0 after one "stopped" line on stderr (:func:`say_stopped`); children
get SIGTERM, then SIGKILL after the bound, and are reaped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Within its ``with`` block, SIGINT and SIGTERM request a stop instead of raising:
    :attr:`requested` is set and :attr:`signum` says which. The previous handlers come back
    on exit. Enter it before anything is started, so that a signal during start-up stops
    the command instead of leaving half of it behind or printing a traceback."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *_exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, _frame: object) -> None:
        self.signum = signum
        self.requested.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds (None: for ever); whether a stop was requested."""
        return self.requested.wait(timeout)


def say_stopped(who: str, signum: int | None = None) -> None:
    """The one line a command prints on stderr when a signal stopped it."""
    cause = f" ({signal.Signals(signum).name})" if signum is not None else ""
    print(f"{who}: stopped{cause}", file=sys.stderr, flush=True)


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
