"""Makes a deployment run's progress and stalls visible: ``status.json`` and refusals.

The ServerApp of a deployment run (its run config has ``run-id``) wraps its Grid in
``TrackingGrid``. Every wait is written down before it starts — "waiting for sites:
2 connected", "round 2: waiting for nodes [..] until 12:03:10" — so ``fedfleet run
status`` can say what a stalled run waits for. Error replies whose reason starts with
the site policy's prefix are recorded as refusals (``refusals.jsonl``) and counted in
the round's metrics (``refused``). Simulation runs get a tracker that does nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

from coordinator.grid_view import DelegatingGrid
from coordinator.results import RoundRecord, atomic_write_bytes
from edge_client.protocol import keys as k
from privacy.private_files import open_private

REFUSAL_PREFIX = "site policy refused: "  # the site's edge_client.site_policy prefix
# A site's privacy ledger refusing a DP training (issue 4's error code).
DP_REFUSED_CODE: int = getattr(k, "ERROR_DP_REFUSED", 4601)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def message_round(message: Message) -> int | None:
    """The server round an instruction belongs to (``server-round`` or secagg ``round``)."""
    if message.has_error():
        return None
    for record in message.content.config_records.values():
        for key in (k.SERVER_ROUND, "round"):
            value = record.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    return None


class RunTracker:
    """Writes ``status.json``/``refusals.jsonl`` in ``run_dir`` (no-op when None)."""

    def __init__(self, run_dir: Path | None, *, run_id: str = "") -> None:
        self.run_dir = run_dir
        self.run_id = run_id
        self.round = 0
        self._refused: dict[int, int] = {}
        self._last_status: dict[str, Any] = {}

    @classmethod
    def for_run(cls, run_config: Mapping[str, Any]) -> RunTracker:
        run_id = str(run_config.get(k.RC_RUN_ID, ""))
        out_dir = str(run_config.get("out-dir", ""))
        if not run_id or not out_dir:
            return cls(None)
        return cls(Path(out_dir), run_id=run_id)

    def wrap(self, grid: Grid) -> Grid:
        return grid if self.run_dir is None else TrackingGrid(grid, self)

    def write_status(self, **status: Any) -> None:
        if self.run_dir is None or status == self._last_status:
            return
        self._last_status = dict(status)
        doc = {"run-id": self.run_id, "updated": _now(), **status}
        atomic_write_bytes(self.run_dir / "status.json", json.dumps(doc, indent=2).encode())

    def record_failure(self, exc: BaseException, *, flower_run: int | None = None) -> None:
        """Write ``phase = "failed"`` with the exception as one line (read by
        :mod:`coordinator.run_outcome`; ``flower-run`` tells a resumed run's attempts apart)."""
        message = " ".join(str(exc).split()) or "no message"
        self.write_status(
            phase="failed",
            error=f"{type(exc).__name__}: {message}",
            **({} if flower_run is None else {"flower-run": flower_run}),
        )

    def record_replies(self, replies: list[Message]) -> None:
        if self.run_dir is None:
            return
        lines = []
        for reply in replies:
            if not reply.has_error():
                continue
            reason = reply.error.reason or ""
            if reason.startswith(REFUSAL_PREFIX) or reply.error.code == DP_REFUSED_CODE:
                self._refused[self.round] = self._refused.get(self.round, 0) + 1
                lines.append(
                    json.dumps(
                        {
                            "round": self.round,
                            "node-id": reply.metadata.src_node_id,
                            "reason": reason.removeprefix(REFUSAL_PREFIX),
                            "time": _now(),
                        }
                    )
                )
        if lines:
            fd = open_private(self.run_dir / "refusals.jsonl", os.O_WRONLY | os.O_APPEND)
            with os.fdopen(fd, "a") as fh:
                fh.write("\n".join(lines) + "\n")

    def annotate(self, record: RoundRecord) -> None:
        """Add the round's refusal count to its metrics and mark the round done."""
        if self.run_dir is None:
            return
        record.extra["refused"] = float(self._refused.get(record.round, 0))
        self.write_status(
            phase="round-done",
            round=record.round,
            clients=record.clients,
            selected=record.selected,
            applied=record.applied,
        )


class TrackingGrid(DelegatingGrid):
    """A Grid that reports what it waits for to a :class:`RunTracker`."""

    def __init__(self, inner: Grid, tracker: RunTracker) -> None:
        super().__init__(inner)
        self._tracker = tracker

    def get_node_ids(self) -> Iterable[int]:
        nodes = sorted(self._inner.get_node_ids())
        if self._tracker.round == 0:
            self._tracker.write_status(phase="waiting-for-sites", connected=nodes)
        return nodes

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        rounds = {r for m in messages if (r := message_round(m)) is not None}
        if rounds:
            self._tracker.round = max(rounds)
        deadline = (
            dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=timeout)
            if timeout is not None
            else None
        )
        waiting = sorted(m.metadata.dst_node_id for m in messages)
        self._tracker.write_status(
            phase="waiting-for-replies",
            round=self._tracker.round,
            message_type=messages[0].metadata.message_type if messages else "",
            waiting_for=waiting,
            deadline=deadline.isoformat(timespec="seconds") if deadline else None,
        )
        t0 = time.monotonic()
        replies = list(self._inner.send_and_receive(messages, timeout=timeout))
        self._tracker.record_replies(replies)
        answered = sorted(r.metadata.src_node_id for r in replies if not r.has_error())
        self._tracker.write_status(
            phase="replies-received",
            round=self._tracker.round,
            answered=answered,
            missing=sorted(set(waiting) - {r.metadata.src_node_id for r in replies}),
            seconds=round(time.monotonic() - t0, 3),
        )
        return replies
