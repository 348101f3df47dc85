"""Retraining a deployed model: the fleet's run record → a warm-started federated run.

The fleet creates a run (status ``created``) from a drift event (``POST
/api/v1/drift-events/{id}/runs``); its config names the deployed model
(``parent_model_version_id``). ``fedfleet run submit --retrain RUN`` closes the loop:
:func:`prepare_retrain` reads that record, downloads the parent's checkpoint (hash
checked) and returns what the run needs — the task and ``initial-model`` — so the new
run starts from the weights the devices run today; when the run has finished its model
is registered into the same fleet run, with the parent as its lineage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firmware_images.registry import fetch_checkpoint
from fleet.client import FleetClient, FleetError

PARENT_KEY = "parent_model_version_id"


@dataclass(frozen=True)
class RetrainPlan:
    """A fleet run to execute: its id, task, the parent version and its checkpoint."""

    fleet_run_id: int
    task: str
    parent_version: int
    checkpoint: Path

    def run_config(self, run_config: dict[str, Any]) -> dict[str, Any]:
        """``run_config`` (from run.toml) with the task and the initial model set.

        Raises:
            ValueError: run.toml names another task than the model to retrain.
        """
        task = run_config.get("task", self.task)
        if task != self.task:
            raise ValueError(
                f"run.toml trains task {task!r}, but fleet run {self.fleet_run_id} retrains "
                f"model version {self.parent_version} of task {self.task!r}; remove "
                f"run.task or set it to {self.task!r}"
            )
        if "initial-model" in run_config:
            raise ValueError(
                "run.initial-model is set by --retrain (the parent model's checkpoint); remove it"
            )
        return {**run_config, "task": self.task, "initial-model": str(self.checkpoint.resolve())}


def prepare_retrain(client: FleetClient, fleet_run_id: int, *, dest_dir: Path) -> RetrainPlan:
    """Read fleet run ``fleet_run_id`` and download its parent model's checkpoint.

    Raises:
        FleetError: the run is unknown, already started, names no parent model, or
            the parent has no checkpoint; or the fleet could not be reached.
    """
    what = f"fleet run {fleet_run_id}"
    run = client.get_run(fleet_run_id)
    if run.status != "created":
        raise FleetError(
            f"{what} is {run.status!r}, not 'created': a retraining run is executed "
            "once; create a new one from the drift event"
        )
    parent = run.config.get(PARENT_KEY)
    if not isinstance(parent, int) or isinstance(parent, bool):
        raise FleetError(
            f"{what} names no model to retrain (config.{PARENT_KEY}); create it from a "
            "drift event: POST /api/v1/drift-events/{id}/runs"
        )
    dest_dir.mkdir(parents=True, exist_ok=True)
    fetched = fetch_checkpoint(client, parent, dest_dir=dest_dir, task=run.task)
    return RetrainPlan(
        fleet_run_id=fleet_run_id,
        task=run.task,
        parent_version=parent,
        checkpoint=fetched.path,
    )


def mark_running(client: FleetClient, plan: RetrainPlan) -> None:
    """Tell the fleet the run has started (the dashboard shows it running)."""
    client.update_run(
        plan.fleet_run_id, status="running", what=f"starting fleet run {plan.fleet_run_id}"
    )


def mark_failed(client: FleetClient, plan: RetrainPlan) -> None:
    """Tell the fleet the run failed (or timed out), so it does not stay ``running`` for
    ever: the dashboard and the timeline show that it ended."""
    client.update_run(
        plan.fleet_run_id, status="failed", what=f"ending failed fleet run {plan.fleet_run_id}"
    )
