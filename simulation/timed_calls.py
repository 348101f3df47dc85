"""ClientApp calls bounded in wall time: how the in-process engine honours a server's
``send_and_receive(timeout=...)`` without waiting past it.

Each call runs in its own (daemon) thread and is waited for at most ``budget`` seconds.
A call still running then is *late*: the server never gets its reply (Flower's
``send_and_receive`` returns the replies that arrived in time, without the others) and
the engine moves on. The late call keeps running in the background, and its node is
busy until it ends: the node's next message waits for it first, as a SuperNode handles
one message at a time, and that wait counts toward the next message's budget.

Calls still run one at a time, in order, so a seeded run gives the same results; only
a late call overlaps the calls after it (its reply is thrown away).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class TimedCalls(Generic[T]):
    """The nodes whose late calls are still running (``node id -> thread``)."""

    busy: dict[int, threading.Thread] = field(default_factory=dict)

    def call(
        self, node_id: int, run: Callable[[], T], *, budget_s: float
    ) -> tuple[T | None, float]:
        """``run()`` for ``node_id`` within ``budget_s`` wall seconds: its reply and the
        seconds it took, or ``(None, budget_s)`` when it did not finish in time."""
        started = time.perf_counter()
        earlier = self.busy.pop(node_id, None)
        if earlier is not None:
            earlier.join(budget_s)
            if earlier.is_alive():  # still busy with the earlier message: late again
                self.busy[node_id] = earlier
                return None, budget_s
        out: list[T] = []
        worker = threading.Thread(
            target=lambda: out.append(run()), name=f"clientapp-{node_id}", daemon=True
        )
        worker.start()
        worker.join(max(0.0, budget_s - (time.perf_counter() - started)))
        if worker.is_alive():
            self.busy[node_id] = worker
            return None, budget_s
        return (out[0] if out else None), time.perf_counter() - started

    def running(self) -> int:
        """Late calls still running in the background."""
        self.busy = {node: t for node, t in self.busy.items() if t.is_alive()}
        return len(self.busy)
