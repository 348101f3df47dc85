"""A process tree's pids and resident memory, read from /proc (Linux): what the benches
measure from outside the processes they start."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path


def tree(root: int) -> set[int]:
    """``root`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def rss_bytes(pid: int) -> int:
    """``pid``'s resident set in bytes (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass
class Sampler:
    """Samples the summed RSS of a process tree until stopped (``run`` in a thread)."""

    root: int
    peak_bytes: int = 0
    peak_processes: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self._stop.is_set():
            pids = tree(self.root)
            total = sum(rss_bytes(p) for p in pids)
            if total > self.peak_bytes:
                self.peak_bytes, self.peak_processes = total, len(pids)
            self._stop.wait(0.2)

    def stop(self) -> None:
        self._stop.set()
