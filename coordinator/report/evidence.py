"""What the run folder says, and what software produced the report.

A run folder is what ``fedfleet simulate --out DIR`` or a coordinator run leaves
(``<state>/runs/<run-id>/``): ``metrics.json`` (config, rounds, final accuracy and, when
measured, the ``fairness`` and ``carbon`` sections), ``run.json`` (deployment runs: the
Flower run ids that executed it), ``app/pyproject.toml`` (the app submitted), and, for a
simulation with local DP, ``privacy_ledger.sqlite`` holding every simulated site's ledger.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.json"
RUN_FILE = "run.json"
APP_FILE = Path("app") / "pyproject.toml"
MODEL_FILE = "model.pt"

# The distributions whose versions a report lists: fedfleet and what computes or protects
# the model (training, DP, secure aggregation, export, transport).
SOFTWARE = (
    "fedfleet",
    "flwr",
    "torch",
    "numpy",
    "opacus",
    "cryptography",
    "onnx",
    "onnxruntime",
    "paho-mqtt",
    "httpx",
    "scikit-learn",
    "fairlearn",
    "codecarbon",
)
# The packages of fedfleet itself (the source hash covers their .py files).
OWN_PACKAGES = (
    "coordinator",
    "edge_client",
    "fedfleet",
    "firmware_images",
    "fleet",
    "privacy",
    "simulation",
    "strategies",
    "tasks",
)


class ReportInputError(ValueError):
    """The run folder cannot be reported on; the message says how to fix it."""


@dataclass(frozen=True)
class RunEvidence:
    """The run folder's content, as read (``metrics`` is metrics.json verbatim)."""

    path: Path
    run_id: str
    metrics: dict[str, Any]
    flower_runs: list[int] = field(default_factory=list)
    app_sha256: str | None = None
    model_sha256: str | None = None

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.metrics.get("config") or {})

    @property
    def rounds(self) -> list[dict[str, Any]]:
        return list(self.metrics.get("rounds") or [])


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_run(path: Path) -> RunEvidence:
    """Read the run folder at ``path``; :class:`ReportInputError` with the fix if it is not one."""
    path = Path(path)
    if not path.is_dir():
        raise ReportInputError(
            f"run folder {path} does not exist; pass the folder `fedfleet simulate` printed "
            "after 'results:' or a coordinator run's <state>/runs/<run-id>"
        )
    metrics_path = path / METRICS_FILE
    if not metrics_path.is_file():
        raise ReportInputError(
            f"run folder {path} has no {METRICS_FILE}; a run writes it after its first round "
            "— is this the run's folder, and has a round finished?"
        )
    try:
        doc = json.loads(metrics_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportInputError(f"{metrics_path} is not readable JSON ({exc})") from None
    if (
        not isinstance(doc, dict)
        or not isinstance(doc.get("config"), dict)
        or not isinstance(doc.get("rounds"), list)
    ):
        raise ReportInputError(
            f"{metrics_path} is not a fedfleet metrics file (it needs 'config' and 'rounds')"
        )
    for i, row in enumerate(doc["rounds"]):
        if not isinstance(row, dict) or not isinstance(row.get("round"), int):
            raise ReportInputError(f"{metrics_path}: rounds[{i}] has no integer 'round'")
    run_id = doc["config"].get("run-id")
    flower_runs: list[int] = []
    run_file = path / RUN_FILE
    if run_file.is_file():
        try:
            run_doc = json.loads(run_file.read_text(encoding="utf-8"))
            flower_runs = [int(r) for r in run_doc.get("flower-runs", [])]
            run_id = run_doc.get("run-id", run_id)
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise ReportInputError(f"{run_file} is not a fedfleet run.json ({exc})") from None
    app = path / APP_FILE
    model = path / MODEL_FILE
    return RunEvidence(
        path=path,
        run_id=str(run_id) if isinstance(run_id, str) and run_id else path.resolve().name,
        metrics=doc,
        flower_runs=flower_runs,
        app_sha256=file_sha256(app) if app.is_file() else None,
        model_sha256=file_sha256(model) if model.is_file() else None,
    )


def ledger_rows(path: Path) -> list[dict[str, Any]]:
    """Each site's ledger summary in the run folder's ``privacy_ledger.sqlite`` (a
    simulation with local DP: every simulated site shares that file), as the rows of
    ``fedfleet site budget --json`` (the RDP ε; PRV is not recomputed here)."""
    from privacy.ledger import LEDGER_FILE, PrivacyLedger

    ledger = Path(path) / LEDGER_FILE
    if not ledger.is_file():
        return []
    rows = []
    for site in PrivacyLedger.sites_in(ledger):
        book = PrivacyLedger(ledger, site=site)
        for summary in book.summary(with_prv=False):
            rounds = sorted(
                {e.server_round for e in book.entries(task=summary.task) if e.status == "completed"}
            )
            rows.append(
                {
                    "site": site,
                    "ledger": str(ledger),
                    "task": summary.task,
                    "completed": summary.completed,
                    "refused": summary.refused,
                    "in_flight": summary.in_flight,
                    "delta": summary.delta,
                    "accountant": summary.accountant,
                    "spent": _finite(summary.spent),
                    "budget_epsilon": _finite(summary.budget_epsilon),
                    "remaining": _finite(summary.remaining),
                    "rounds": rounds,
                }
            )
    return rows


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


def software_inventory(root: Path | None = None) -> dict[str, Any]:
    """The versions of :data:`SOFTWARE` that are installed, each with the SHA-256 of its
    ``RECORD`` (the file that lists every installed file with its own hash, so one digest
    pins the whole installed distribution), and the SHA-256 of fedfleet's own source
    (every ``.py`` of its packages under ``root``, by relative path and content)."""
    packages = {}
    for name in SOFTWARE:
        dist = installed_distribution(name)
        if dist is None:
            continue
        record = dist.read_text("RECORD")
        packages[name] = {
            "version": dist.version,
            "record_sha256": hashlib.sha256(record.encode()).hexdigest() if record else None,
        }
    base = root or Path(__file__).resolve().parents[2]
    return {"packages": packages, "source_sha256": source_sha256(base)}


def installed_distribution(name: str) -> metadata.Distribution | None:
    """The installed distribution ``name``: the first one on the path that has a
    ``RECORD`` (an install's), before build metadata without one (a checkout's
    ``*.egg-info``, found first when the current folder is the checkout); None if absent."""
    found = list(metadata.distributions(name=name))
    installed = [dist for dist in found if dist.read_text("RECORD")]
    return next(iter(installed or found), None)


def source_sha256(root: Path) -> str:
    """SHA-256 over fedfleet's packages' ``.py`` files under ``root`` (sorted paths)."""
    digest = hashlib.sha256()
    for package in OWN_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            relative = path.relative_to(root).as_posix()
            digest.update(relative.encode() + b"\0" + file_sha256(path).encode() + b"\n")
    return digest.hexdigest()
