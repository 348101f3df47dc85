"""``fedfleet report RUN``: the compliance report of a run, as one HTML (or PDF) file.

Mounted on the root command as ``report`` (fedfleet/cli.py). Heavy imports (httpx,
the ledger's accountants) happen inside the command, so ``--help`` and bad input answer
fast. Exit 2: a run folder that does not exist or has no metrics.json, a site.toml the
site's command refuses, an output that exists without ``--force``, a missing token;
exit 1: the fleet is unreachable or refuses, Chromium cannot print the PDF. In every
failure nothing is written at ``--out``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedfleet.cli_support import EXIT_FAILURE, FleetUrl, fail


def report(
    run_dir: Annotated[
        Path,
        typer.Argument(
            help="The run folder: what `fedfleet simulate` printed after 'results:', or a "
            "coordinator run's <state>/runs/<run-id>.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Where to write the report; a name ending in .pdf writes a PDF. "
            "(default: RUN/report.html)",
            show_default=False,
        ),
    ] = None,
    pdf: Annotated[
        bool, typer.Option("--pdf", help="Write a PDF (headless Chromium) instead of HTML.")
    ] = False,
    site: Annotated[
        list[Path] | None,
        typer.Option(
            "--site",
            help="A site's site.toml (repeatable): its audit log is verified and its ledger "
            "read by the site's own commands.",
            show_default=False,
        ),
    ] = None,
    fleet_run: Annotated[
        int | None,
        typer.Option(
            "--fleet-run",
            help="The fleet's run id (`fedfleet model register` prints it): look up the "
            "lineage model → bundles → rollouts → devices. Without it the report says no "
            "fleet was given.",
            min=1,
            show_default=False,
        ),
    ] = None,
    fleet_url: FleetUrl = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out.")] = False,
) -> None:
    """Write a run's compliance report: participants, ε per site against its budget,
    secure aggregation, lineage, audit-log verification, fairness, energy and CO₂, and
    the software that ran — every number with its source."""
    from coordinator.report.build import collect, output_format, write_report
    from coordinator.report.evidence import ReportInputError
    from coordinator.report.sites import SiteCommandError

    target = out if out is not None else Path(run_dir) / "report.html"
    fmt = output_format(target, pdf)
    if pdf and target.suffix.lower() == ".html":
        fail(f"--pdf writes a PDF but --out {target} ends in .html; name it .pdf")
    if target.exists() and not force:
        fail(f"{target} exists; pass --force to replace it, or another --out")
    if fleet_url is not None and fleet_run is None:
        fail("--fleet-url needs --fleet-run ID (the fleet run `fedfleet model register` printed)")
    client = _fleet_client(fleet_url) if fleet_run is not None else None
    try:
        doc = collect(run_dir, sites=list(site or []), fleet=client, fleet_run=fleet_run)
    except (ReportInputError, SiteCommandError) as exc:
        fail(str(exc))
    except Exception as exc:
        _fleet_failure(exc)
        raise
    finally:
        if client is not None:
            client.close()
    from coordinator.report.pdf import PdfError

    try:
        write_report(doc, target, fmt=fmt)
    except PdfError as exc:
        fail(str(exc), EXIT_FAILURE)
    for site_doc in doc["sites"]:
        verdict = site_doc["verdict"]
        if not verdict.get("ok"):
            typer.echo(
                f"warning: site {site_doc['site']}'s audit log failed verification "
                f"({verdict.get('problem')}); the report shows it as TAMPERED",
                err=True,
            )
    typer.echo(f"report: {target}")


def _fleet_client(fleet_url: str | None):  # type: ignore[no-untyped-def]
    from fleet.client import FleetClient, FleetError, connection_from_env

    try:
        return FleetClient(connection_from_env(fleet_url))
    except FleetError as exc:
        fail(str(exc))


def _fleet_failure(exc: Exception) -> None:
    """A fleet error ends the command with its one line (exit 1); anything else is not
    this function's to handle."""
    from fleet.client import FleetError

    if isinstance(exc, FleetError):
        fail(str(exc), EXIT_FAILURE)
