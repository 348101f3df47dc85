"""``fedfleet run autopilot``: execute the retraining runs the fleet creates on drift.

The fleet's promotion controller turns an agreed drift event into a fleet run with status
``created`` and ``config.reason = "drift"`` (docs/policies.md, *Drift → retraining*). The
autopilot polls the fleet for such runs (only through :mod:`fleet.client`) and executes
each one as ``fedfleet run submit --config run.toml --retrain RUN`` does: warm start from
the deployed model, follow the run, register the result into that fleet run, from where
the fleet's gates, bundles and waves take over.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fleet.client import FleetError, FleetUnreachableError

DRIFT_REASON = "drift"


def waiting_retrains(runs: Iterable[Any], *, tried: set[int]) -> list[int]:
    """Ids of fleet runs to execute, oldest first: ``created``, started by drift, and not
    tried before by this autopilot (a run that failed to start is not retried blindly)."""
    return sorted(
        run.id
        for run in runs
        if run.status == "created"
        and run.config.get("reason") == DRIFT_REASON
        and run.id not in tried
    )


def retry_later(err: FleetError, *, once: bool) -> bool:
    """Whether the polling loop waits for the next look instead of exiting: the fleet did
    not answer (``fleet serve`` restarting, the network down), and this is not ``--once``.
    A refused token or request is a mistake a retry does not fix: it ends the autopilot."""
    return not once and isinstance(err, FleetUnreachableError)
