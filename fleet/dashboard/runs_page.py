"""The dashboard's runs page: the list of training runs, and one run's rounds with its
accuracy (and loss) chart and configuration."""

from __future__ import annotations

import json

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse

from fleet.crud import runs as run_crud
from fleet.dashboard.charts import line_chart_svg
from fleet.dashboard.pages import Pages, SessionDep
from fleet.dashboard.session import require_login
from fleet.models.runs import RunDetail, RunStatus


def _charts(detail: RunDetail) -> tuple[str, str | None]:
    """The accuracy chart, and the loss chart when any round reported a loss (SVG)."""
    accuracy = line_chart_svg(
        [(r.round, r.accuracy) for r in detail.rounds],
        title=f"Accuracy per round — run {detail.id} ({detail.task})",
        x_label="round",
        y_label="accuracy",
        y_range=(0.0, 1.0),
    )
    loss = None
    if any(r.loss is not None for r in detail.rounds):
        loss = line_chart_svg(
            [(r.round, r.loss) for r in detail.rounds],
            title="Loss per round",
            x_label="round",
            y_label="loss",
        )
    return accuracy, loss


# Round metrics a registered run's fairness audit reports (coordinator/registration.py):
# shown, with their labels, in the run page's fairness section.
FAIRNESS_COLUMNS = (
    ("fairness_worst_group_accuracy", "Worst-group accuracy"),
    ("fairness_max_gap", "Largest gap"),
    ("fairness_worst_decile_accuracy", "Worst-decile client accuracy"),
    ("fairness_accuracy_std", "Client accuracy std"),
    ("fairness_demographic_parity_difference", "DP difference"),
    ("fairness_equalized_odds_difference", "EO difference"),
)


def _fairness(detail: RunDetail) -> tuple[list[dict[str, float | None]], str | None]:
    """Each audited round's fairness numbers (``FAIRNESS_COLUMNS``, and ``round``), and a
    chart of the largest gap between groups; empty when no round was audited."""
    rows: list[dict[str, float | None]] = [
        {"round": r.round, **{key: r.metrics.get(key) for key, _ in FAIRNESS_COLUMNS}}
        for r in detail.rounds
        if "fairness_max_gap" in r.metrics
    ]
    if not rows:
        return [], None
    chart = line_chart_svg(
        [(float(row["round"] or 0), row["fairness_max_gap"]) for row in rows],
        title="Largest accuracy gap between groups per round",
        x_label="round",
        y_label="gap",
    )
    return rows, chart


def runs_router(pages: Pages) -> APIRouter:
    """``GET /runs`` and ``GET /runs/{id}``."""
    router = APIRouter(include_in_schema=False)

    @router.get("/runs")
    def runs(request: Request, session: SessionDep) -> HTMLResponse:
        principal = require_login(request, session)
        result = run_crud.list_runs(session, task=None, status=None, limit=200, offset=0)
        return pages.render(request, "runs.html", principal=principal, result=result)

    @router.get("/runs/{run_id}")
    def run_detail(run_id: int, request: Request, session: SessionDep) -> HTMLResponse:
        principal = require_login(request, session)
        run = run_crud.get_run(session, run_id) if 0 < run_id < 2**31 else None
        if run is None:
            raise HTTPException(404, f"run {run_id} does not exist")
        detail = run_crud.detail_view(session, run)
        accuracy, loss = _charts(detail)
        fairness_rows, fairness_chart = _fairness(detail)
        return pages.render(
            request,
            "run_detail.html",
            principal=principal,
            run=detail,
            accuracy_chart=accuracy,
            loss_chart=loss,
            fairness_rows=fairness_rows,
            fairness_columns=FAIRNESS_COLUMNS,
            fairness_chart=fairness_chart,
            config_json=json.dumps(detail.config, indent=2, sort_keys=True),
            terminal=RunStatus(detail.status).terminal,
        )

    return router
