"""Collect a run's evidence and write the report (HTML, or PDF from that HTML).

:func:`collect` gathers every source into one JSON-able document; :func:`write_report`
renders it and replaces ``out`` atomically, so a failure leaves no partial file.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from coordinator.report.evidence import ledger_rows, read_run, software_inventory
from coordinator.report.render import render_html
from coordinator.report.sites import site_evidence
from coordinator.results import atomic_write_bytes

if TYPE_CHECKING:
    from fleet.client import FleetClient

Format = Literal["html", "pdf"]


def collect(
    run_dir: Path,
    *,
    sites: list[Path] | None = None,
    fleet: FleetClient | None = None,
    fleet_run: int | None = None,
) -> dict[str, Any]:
    """Everything the report shows, with where it came from.

    Raises :class:`~coordinator.report.evidence.ReportInputError` (bad run folder),
    :class:`~coordinator.report.sites.SiteCommandError` (a site.toml its command refuses)
    and :class:`fleet.client.FleetError` (fleet unreachable or refusing).
    """
    run = read_run(run_dir)
    lineage = None
    if fleet is not None and fleet_run is not None:
        from coordinator.report.lineage import fleet_lineage

        lineage = fleet_lineage(fleet, fleet_run, model_sha256=run.model_sha256)
    site_docs = []
    for config in sites or []:
        evidence = site_evidence(config, flower_runs=run.flower_runs)
        doc = asdict(evidence)
        doc["config"] = str(evidence.config)
        site_docs.append(doc)
    metrics = run.metrics
    return {
        "run": {
            "id": run.run_id,
            "path": str(run.path),
            "config": run.config,
            "rounds": run.rounds,
            "final_accuracy": metrics.get("final_accuracy"),
            "fairness": metrics.get("fairness"),
            "carbon": metrics.get("carbon"),
            "flower_runs": run.flower_runs,
            "app_sha256": run.app_sha256,
            "model_sha256": run.model_sha256,
        },
        "ledger": ledger_rows(run.path),
        "sites": site_docs,
        "lineage": lineage,
        "software": software_inventory(),
    }


def output_format(out: Path, pdf: bool) -> Format:
    """PDF when asked (``--pdf``) or when ``out`` ends in ``.pdf``; else HTML."""
    return "pdf" if pdf or out.suffix.lower() == ".pdf" else "html"


def write_report(doc: dict[str, Any], out: Path, *, fmt: Format) -> Path:
    """Render ``doc`` to ``out`` (atomically: all of it or nothing)."""
    page = render_html(doc)
    if fmt == "html":
        atomic_write_bytes(out, page.encode())
        return out
    from coordinator.report.pdf import html_to_pdf

    with tempfile.TemporaryDirectory(prefix="fedfleet-report-") as tmp:
        source = Path(tmp) / "report.html"
        source.write_text(page, encoding="utf-8")
        data = html_to_pdf(source, Path(tmp) / "report.pdf")
    atomic_write_bytes(out, data)
    return out
