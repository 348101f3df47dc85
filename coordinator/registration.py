"""Hand a finished run's model to the fleet's model registry, with its lineage.

A run folder (``fedfleet simulate --out DIR``, or a coordinator run's folder) holds
``metrics.json`` (``{"config", "rounds", "final_accuracy"}``, see
:mod:`coordinator.results`) and ``model.pt`` (the final state dict). Registering it:

1. checks both files locally (the checkpoint must load into the task's model) before
   anything is written to the fleet;
2. records the run in the fleet (``POST /runs``, one ``PUT /runs/{id}/rounds/{n}`` per
   round: accuracy, loss, duration, ε, the other numeric metrics);
3. registers a model version (``POST /models``) with ``source_run_id``/``source_round``
   and the final metrics, and uploads ``model.pt`` as its ``torch`` artifact (target
   ``any``) with its SHA-256 (and a signature when a key is given);
4. marks the run completed with that version as its final model.

If a step after the run was recorded fails, the run is marked ``failed`` and a version
already created is deprecated, so nothing half-registered can be rolled out.

The fleet is reached only over HTTP (:mod:`fleet.client`): the coordinator never imports
the fleet's database code.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from firmware_images.keys import sign_digest
from fleet.client import FleetClient, FleetError, RoundReportBody

METRICS_FILE = "metrics.json"
MODEL_FILE = "model.pt"
RUN_ID_KEY = "run-id"  # run folders record their id in config (= protocol.keys.RC_RUN_ID)
_METRIC_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,62}")
_SLUG = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_ROUND_FIELDS = ("accuracy", "loss", "duration_s", "epsilon")
_MAX_METRICS = 64


class RunFolderError(ValueError):
    """The run folder cannot be registered; the message says how to fix it."""


@dataclass(frozen=True)
class RunFolder:
    """What a run folder says about its model."""

    path: Path
    run_id: str
    task: str
    strategy: str | None
    config: dict[str, Any]
    rounds: list[dict[str, Any]]
    final_accuracy: float | None
    checkpoint: Path
    extra: dict[str, float] = field(default_factory=dict)
    fairness: dict[str, Any] | None = None  # metrics.json's last fairness audit

    @property
    def last_round(self) -> int | None:
        numbers = [int(r["round"]) for r in self.rounds]
        return max(numbers) if numbers else None

    def model_metrics(self) -> dict[str, float]:
        """The version's metrics: final accuracy/loss/ε, rounds, wall time."""
        metrics: dict[str, float] = {"rounds": float(len(self.rounds))}
        if self.final_accuracy is not None:
            metrics["final_accuracy"] = self.final_accuracy
        if self.rounds:
            last = self.rounds[-1]
            for name in ("loss", "epsilon"):
                value = _finite(last.get(name))
                if value is not None:
                    metrics[f"final_{name}"] = value
        metrics.update(self.extra)
        return metrics


def read_run_folder(path: Path) -> RunFolder:
    """Read and check ``metrics.json`` and ``model.pt`` of a run folder (no network)."""
    path = Path(path)
    if not path.is_dir():
        raise RunFolderError(
            f"run folder {path} does not exist; pass the folder `fedfleet simulate` printed "
            "after 'results:' (runs/<stamp>)"
        )
    metrics_path = path / METRICS_FILE
    checkpoint = path / MODEL_FILE
    for needed in (metrics_path, checkpoint):
        if not needed.is_file():
            raise RunFolderError(
                f"run folder {path} has no {needed.name}; a finished `fedfleet simulate` or "
                "coordinator run writes metrics.json and model.pt there"
            )
    try:
        doc = json.loads(metrics_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunFolderError(f"{metrics_path} is not readable JSON ({exc})") from None
    config = doc.get("config") if isinstance(doc, dict) else None
    rounds = doc.get("rounds") if isinstance(doc, dict) else None
    if not isinstance(config, dict) or not isinstance(rounds, list):
        raise RunFolderError(
            f"{metrics_path} is not a fedfleet metrics file (it needs 'config' and 'rounds')"
        )
    task = config.get("task")
    if not isinstance(task, str) or not task:
        raise RunFolderError(f"{metrics_path} names no task in config.task")
    for i, row in enumerate(rounds):
        if not isinstance(row, dict) or not isinstance(row.get("round"), int):
            raise RunFolderError(f"{metrics_path}: rounds[{i}] has no integer 'round'")
    final = doc.get("final_accuracy")
    if final is not None and _finite(final) is None:
        raise RunFolderError(f"{metrics_path}: final_accuracy {final!r} is not a number")
    extra: dict[str, float] = {}
    wall = _finite(doc.get("wall_time_s"))
    if wall is not None:
        extra["wall_time_s"] = wall
    fairness = doc.get("fairness")
    fairness = fairness if isinstance(fairness, dict) else None
    extra.update(_fairness_metrics(fairness or {}, prefix="final_fairness_"))
    strategy = config.get("strategy")
    run_id = config.get(RUN_ID_KEY)
    return RunFolder(
        path=path,
        run_id=str(run_id) if isinstance(run_id, str) and run_id else path.resolve().name,
        task=task,
        strategy=strategy if isinstance(strategy, str) and _SLUG.fullmatch(strategy) else None,
        config=config,
        rounds=rounds,
        final_accuracy=_finite(final),
        checkpoint=checkpoint,
        extra=extra,
        fairness=fairness,
    )


# The fairness audit's numbers a registered run carries (its per-round reports and its
# model version's metrics), as ``fairness_<name>``.
_FAIRNESS_NUMBERS = (
    "worst_group_accuracy",
    "max_gap",
    "worst_decile_accuracy",
    "accuracy_std",
    "demographic_parity_difference",
    "equalized_odds_difference",
)


def _fairness_metrics(audit: dict[str, Any], *, prefix: str) -> dict[str, float]:
    """The audit's finite numbers, and each sensitive group's accuracy (not the clients':
    there may be thousands) as ``<prefix>accuracy_<group>``."""
    out: dict[str, float] = {}
    for name in _FAIRNESS_NUMBERS:
        value = _finite(audit.get(name))
        if value is not None:
            out[f"{prefix}{name}"] = value
    groups = audit.get("groups")
    if audit.get("group_by") not in (None, "client") and isinstance(groups, dict):
        for group, row in groups.items():
            value = _finite(row.get("accuracy")) if isinstance(row, dict) else None
            name = f"{prefix}accuracy_{group}"
            if value is not None and _METRIC_NAME.fullmatch(name):
                out[name] = value
    return out


def check_max_group_gap(run: RunFolder, max_group_gap: float) -> None:
    """Refuse a run whose last fairness audit shows a gap between groups' accuracies
    above ``max_group_gap`` (or that was never audited), naming the numbers."""
    if run.fairness is None or _finite(run.fairness.get("max_gap")) is None:
        raise RunFolderError(
            f"run {run.run_id} has no fairness audit to check --max-group-gap against; "
            "rerun with --fraction-evaluate (and --sensitive-attribute where the task has one)"
        )
    gap = float(run.fairness["max_gap"])
    if gap > max_group_gap:
        groups = run.fairness.get("groups") or {}
        accuracies = ", ".join(
            f"{name} {row['accuracy']:.3f}"
            for name, row in list(groups.items())[:6]
            if isinstance(row, dict) and _finite(row.get("accuracy")) is not None
        )
        raise RunFolderError(
            f"run {run.run_id} not registered: its largest accuracy gap between groups "
            f"(by {run.fairness.get('group_by')}) is {gap:.4f} > --max-group-gap "
            f"{max_group_gap:g} ({accuracies}); train fairer (e.g. --strategy qffl) or "
            "raise the limit"
        )


def check_checkpoint(run: RunFolder) -> str:
    """Load ``model.pt`` into the task's model (raises with the fix); its SHA-256."""
    from firmware_images.export import CheckpointError, file_sha256, load_checkpoint
    from tasks import get_task

    try:
        load_checkpoint(get_task(run.task), run.checkpoint)
    except (CheckpointError, ValueError) as exc:
        raise RunFolderError(str(exc)) from None
    return file_sha256(run.checkpoint)


@dataclass(frozen=True)
class Registered:
    """What the registry now holds for the run."""

    model_version: int
    fleet_run_id: int
    artifact_id: int
    sha256: str


def register_run(
    client: FleetClient,
    run: RunFolder,
    *,
    sha256: str,
    name: str | None = None,
    description: str = "",
    private_key: Any = None,
    on_step: Callable[[str], None] | None = None,
    fleet_run_id: int | None = None,
    parent_id: int | None = None,
) -> Registered:
    """Record ``run`` in the fleet and register its model (see the module docstring).

    ``fleet_run_id`` reports into a run the fleet already holds (a retraining run created
    from a drift event) instead of recording a new one; ``parent_id`` is the model
    version the run started from (the new version's lineage)."""
    step = on_step or (lambda _s: None)
    label = name if name is not None else f"{run.task} from run {run.run_id}"
    if fleet_run_id is None:
        step("record the run")
        fleet_run = client.create_run(
            name=f"{run.run_id}",
            task=run.task,
            strategy=run.strategy,
            config=run.config,
            what=f"recording run {run.run_id}",
        ).id
    else:
        fleet_run = fleet_run_id
    version: int | None = None
    try:
        for row in run.rounds:
            client.report_round(
                fleet_run,
                int(row["round"]),
                _round_report(row),
                what=f"reporting round {row['round']} of run {run.run_id}",
            )
        step("register the model version")
        version = client.register_model(
            task=run.task,
            name=label,
            description=description,
            source_run_id=fleet_run,
            metrics=run.model_metrics(),
            source_round=run.last_round,
            parent_id=parent_id,
            what="registering the model",
        ).id
        step("upload the checkpoint")
        artifact = client.upload_artifact(
            version,
            run.checkpoint,
            format="torch",
            target="any",
            sha256=sha256,
            signature=sign_digest(private_key, sha256) if private_key is not None else None,
        )
        client.update_run(
            fleet_run,
            status="completed",
            final_model_version_id=version,
            what=f"completing run {run.run_id}",
        )
    except FleetError as exc:
        _undo(client, fleet_run=fleet_run, version=version)
        undone = f"fleet run {fleet_run} marked failed"
        if version is not None:
            undone += f", model version {version} deprecated"
        raise FleetError(f"{exc} ({undone})") from None
    return Registered(
        model_version=version, fleet_run_id=fleet_run, artifact_id=artifact.id, sha256=sha256
    )


def _undo(client: FleetClient, *, fleet_run: int, version: int | None) -> None:
    """Best effort: nothing half-registered stays usable (errors here are secondary)."""
    try:
        if version is not None:
            client.deprecate_model(version, what="deprecating")
        client.update_run(fleet_run, status="failed", what="failing")
    except FleetError:
        pass


def _round_report(row: dict[str, Any]) -> RoundReportBody:
    """A ``RoundReport`` body from a metrics.json round row."""
    report: dict[str, Any] = {}
    for name in _ROUND_FIELDS:
        value = _finite(row.get(name))
        if value is not None:
            report[name] = value
    if "accuracy" in report and not 0.0 <= report["accuracy"] <= 1.0:
        del report["accuracy"]
    if "duration_s" in report and report["duration_s"] < 0:
        del report["duration_s"]
    if "epsilon" in report and report["epsilon"] < 0:
        del report["epsilon"]
    metrics: dict[str, float] = {}
    for key, raw in row.items():
        value = _finite(raw)
        if (
            key in _ROUND_FIELDS
            or key == "round"
            or value is None
            or not _METRIC_NAME.fullmatch(key)
            or len(metrics) >= _MAX_METRICS
        ):
            continue
        metrics[key] = value
    audit = row.get("fairness")
    if isinstance(audit, dict):
        for key, value in _fairness_metrics(audit, prefix="fairness_").items():
            if len(metrics) < _MAX_METRICS:
                metrics[key] = value
    report["metrics"] = metrics
    return cast("RoundReportBody", report)


def _finite(value: Any) -> float | None:
    """``value`` as a finite float, else None (bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None
