"""``fedfleet site budget``: the privacy budget spent and left, per task, from the ledger.

Reads the site's privacy ledger (``<state-dir>/privacy_ledger.sqlite``), given by the
site's ``site.toml`` (``--config``; its ``[policy]`` ε/δ is the budget) or by a state
folder (``--state-dir``; the budget recorded with the latest training is shown, and a
simulation's out-dir lists every simulated client). ε is shown by both of Opacus's
accountants, RDP and PRV; ``spent`` is the one the site's decisions use.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fedfleet.cli_support import fail

if TYPE_CHECKING:
    from privacy.ledger import TaskSummary


def _fmt(value: float | None, spec: str = ".3f") -> str:
    if value is None:
        return "–"
    return "∞" if math.isinf(value) else format(value, spec)


def _json_row(site: str, ledger: Path, row: TaskSummary) -> dict[str, Any]:
    """One ledger summary row as JSON (infinite ε as null: JSON has no infinity)."""

    def number(value: float | None) -> float | None:
        return None if value is None or math.isinf(value) else value

    return {
        "site": site,
        "ledger": str(ledger),
        "task": row.task,
        "completed": row.completed,
        "refused": row.refused,
        "in_flight": row.in_flight,
        "delta": row.delta,
        "accountant": row.accountant,
        "epsilon_rdp": number(row.epsilon_rdp),
        "epsilon_prv": number(row.epsilon_prv),
        "spent": number(row.spent),
        "budget_epsilon": number(row.budget_epsilon),
        "remaining": number(row.remaining),
    }


def site_budget(
    config: Annotated[
        Path | None, typer.Option("--config", help="The site's site.toml (its \\[policy] budget).")
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option("--state-dir", help="A state folder (or a simulation's out-dir) instead."),
    ] = None,
    site: Annotated[
        str | None, typer.Option(help="With --state-dir: only this site. \\[default: all]")
    ] = None,
    prv: Annotated[
        bool, typer.Option("--prv/--no-prv", help="Also compute ε with the PRV accountant.")
    ] = True,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="One JSON object per site and task (what `fedfleet report --site` reads).",
        ),
    ] = False,
) -> None:
    """Print ε spent and remaining per task from the site's privacy ledger."""
    if (config is None) == (state_dir is None):
        fail("give exactly one of --config site.toml or --state-dir DIR")
    from rich.console import Console
    from rich.table import Table

    from privacy.ledger import LEDGER_FILE, Budget, PrivacyLedger

    budget: Budget | None = None
    if config is not None:
        from edge_client.site_config import SiteConfig

        try:
            site_config = SiteConfig.load(config)
        except ValueError as exc:
            fail(str(exc))
        folder, sites = site_config.state_dir, [site_config.name]
        budget = Budget(site_config.policy.epsilon, site_config.policy.delta)
    else:
        folder = Path(str(state_dir))
        if not folder.is_dir():
            fail(f"state folder {folder} does not exist; check --state-dir")
        sites = []
    path = folder / LEDGER_FILE
    if not path.is_file():
        typer.echo(f"no DP training recorded yet: no privacy ledger at {path}")
        return
    if not sites:
        sites = [site] if site else PrivacyLedger.sites_in(path)
    if as_json:
        for name in sites:
            for row in PrivacyLedger(path, site=name).summary(budget=budget, with_prv=prv):
                typer.echo(json.dumps(_json_row(name, path, row), sort_keys=True))
        return
    table = Table(title=f"privacy budget · {path}")
    for column in (
        "site",
        "task",
        "trained",
        "refused",
        "pending",
        "δ",
        "ε rdp",
        "ε prv",
        "budget ε",
        "ε left",
    ):
        table.add_column(column, justify="left" if column in ("site", "task") else "right")
    console = Console()
    if not console.is_terminal:  # piped: do not squeeze the table into 80 columns
        console = Console(width=140)
    with console.status("computing ε…"):
        for name in sites:
            for row in PrivacyLedger(path, site=name).summary(budget=budget, with_prv=prv):
                table.add_row(
                    name,
                    row.task,
                    str(row.completed),
                    str(row.refused),
                    str(row.in_flight),
                    f"{row.delta:g}",
                    _fmt(row.epsilon_rdp) + ("*" if row.accountant == "rdp" else ""),
                    _fmt(row.epsilon_prv) + ("*" if row.accountant == "prv" else ""),
                    _fmt(row.budget_epsilon, "g"),
                    _fmt(row.remaining),
                )
    if table.row_count == 0:
        typer.echo(f"no DP training recorded for {', '.join(sites) or 'any site'} in {path}")
        return
    console.print(table)
    console.print("* the accountant of the site's budget decisions; ε left = budget − that ε")
