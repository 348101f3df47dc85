"""Whether a deployment run has failed, and why, in one line.

A run fails in two places, and both are read here so that ``fedfleet run submit --wait``
and ``fedfleet run status`` never wait in silence:

* the ServerApp raises (a config it refuses, too few sites for secure aggregation...):
  fedfleet's ServerApp writes ``status.json`` with ``phase = "failed"``, the exception as
  ``error`` and the Flower run it belongs to (so a resumed run is not judged by the
  failure of an earlier attempt) — see :meth:`coordinator.run_tracker.RunTracker.record_failure`;
* the ServerApp process never got that far (import error, killed, stopped): Flower's run
  status (``flwr ls --run-id N``) says ``finished:failed`` or ``finished:stopped``; the
  cause is then the last ``XxxError: message`` line of the run's log (``flwr log N --show``),
  or Flower's own status details.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from coordinator.superlink import CONNECTION, CoordinatorSettings, bin_dir, flwr_env, flwr_json

FAILED_PHASE = "failed"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# "ValueError: ...", "flwr.common.exception.FooException: ..." — a raised exception's line.
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?([A-Za-z_]\w*(?:Error|Exception)): (.+)$")
_FLOWER_PREFIX = "ServerApp failed with exception: "


def failure_cause(log_text: str) -> str | None:
    """The last ``XxxError: message`` line of a log (colour codes removed), or None."""
    cause = None
    for raw in log_text.splitlines():
        line = _ANSI.sub("", raw).strip()
        match = _EXCEPTION_LINE.match(line)
        if match:
            cause = f"{match.group(1)}: {match.group(2)}"
    return cause


@dataclass(frozen=True)
class FlowerRunStatus:
    """Flower's view of one run: ``status`` is e.g. ``running`` or ``finished:failed``."""

    status: str
    details: str

    @property
    def failed(self) -> bool:
        return self.status in ("finished:failed", "finished:stopped")

    @property
    def finished(self) -> bool:
        return self.status.startswith("finished")


def flower_run_status(
    settings: CoordinatorSettings, flower_run: int, *, timeout: float = 60.0
) -> FlowerRunStatus:
    """``flwr ls --run-id N``; ``ValueError`` when the SuperLink does not answer."""
    doc = flwr_json(settings, ["ls", CONNECTION, "--run-id", str(flower_run)], timeout=timeout)
    runs = doc.get("runs") or [{}]
    details = str(runs[0].get("status-details") or "")
    return FlowerRunStatus(
        status=str(runs[0].get("status", "")), details="" if details == "N/A" else details
    )


def flower_log(settings: CoordinatorSettings, flower_run: int, *, timeout: float = 60.0) -> str:
    """The run's log as Flower keeps it (``flwr log N --show``); empty when unavailable."""
    try:
        result = subprocess.run(
            [str(bin_dir() / "flwr"), "log", str(flower_run), CONNECTION, "--show"],
            env=flwr_env(settings),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return ""
    return result.stdout


def recorded_failure(status: dict[str, Any], flower_run: int | None) -> str | None:
    """The failure the ServerApp wrote in ``status.json`` for ``flower_run``, or None."""
    if status.get("phase") != FAILED_PHASE:
        return None
    recorded = status.get("flower-run")
    if flower_run is not None and recorded is not None and int(recorded) != flower_run:
        return None  # an earlier attempt's failure; this run was resumed since
    return str(status.get("error") or "the ServerApp failed")


def flower_failure(
    settings: CoordinatorSettings, flower_run: int, *, done: Callable[[], bool]
) -> str | None:
    """The cause when Flower says the run ended badly, or None while it runs (or when it
    finished its work: ``done()``, asked after Flower answered, so a run finishing
    meanwhile is not taken for a failure). ``ValueError`` when the SuperLink is
    unreachable."""
    status = flower_run_status(settings, flower_run)
    if status.failed:
        if status.status == "finished:stopped":
            return f"Flower run {flower_run} was stopped"
        cause = failure_cause(flower_log(settings, flower_run))
        if cause is None and status.details:
            cause = status.details.removeprefix(_FLOWER_PREFIX)
        return cause or f"Flower run {flower_run} failed; see `flwr log {flower_run}`"
    if status.finished and not done():
        return (
            f"the ServerApp of Flower run {flower_run} ended before the last round; "
            f"see `flwr log {flower_run}`"
        )
    return None
