"""Where a client's privacy ledger lives and what budget it enforces.

The run's ``dp*`` switches are read by :meth:`privacy.dp.DPConfig.from_run_config` (the
coordinator reads them with the same parser, so both ends agree);
:func:`ledger_settings` resolves the rest from the node config and ``site.toml``:

  1. a silo (node config ``site-config``): ``<state-dir>/privacy_ledger.sqlite`` and the
     ``[policy]`` ε/δ of its ``site.toml``;
  2. a SuperNode started by hand with node config ``state-dir`` (and optionally
     ``site-name``, ``dp-budget-epsilon``, ``dp-budget-delta``);
  3. a simulated client: one shared ledger file ``<out-dir>/privacy_ledger.sqlite`` of
     the run, a row set per client (``client-<partition-id>``); a node config
     ``dp-budget-epsilon`` gives one simulated site its own budget.

  The budget is the site's own when it has one, else the run's ``dp-epsilon``
  (a simulation), else none (ε is recorded, nothing is capped).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_client.protocol import keys as k
from edge_client.protocol.site import (
    NC_DP_ACCOUNTANT,
    NC_DP_BUDGET_DELTA,
    NC_DP_BUDGET_EPSILON,
    NC_SITE_CONFIG,
    NC_SITE_NAME,
    NC_STATE_DIR,
)
from privacy.dp import DPConfig
from privacy.dp.accounting import Accountant, check_accountant
from privacy.dp.config import run_config_float
from privacy.ledger import LEDGER_FILE, Budget


@dataclass(frozen=True)
class LedgerSettings:
    """Where a client's ledger is, whose rows it writes, and the budget it enforces."""

    path: Path
    site: str
    budget: Budget
    accountant: Accountant


def ledger_settings(
    *,
    node_config: Mapping[str, Any],
    run_config: Mapping[str, Any],
    dp: DPConfig,
    partition_id: int,
) -> LedgerSettings:
    """Resolve the ledger location and budget (see the module docstring)."""
    accountant = check_accountant(str(node_config.get(NC_DP_ACCOUNTANT, dp.accountant)))
    site_config = str(node_config.get(NC_SITE_CONFIG, ""))
    if site_config:
        from edge_client.site_config import SiteConfig

        site = SiteConfig.load(Path(site_config))
        return LedgerSettings(
            path=site.state_dir / LEDGER_FILE,
            site=site.name,
            budget=Budget(site.policy.epsilon, site.policy.delta),
            accountant=accountant,
        )
    budget_eps = run_config_float(node_config, NC_DP_BUDGET_EPSILON)
    budget_delta = run_config_float(node_config, NC_DP_BUDGET_DELTA)
    budget = Budget(
        budget_eps if budget_eps is not None else dp.epsilon,
        budget_delta if budget_delta is not None else dp.delta,
    )
    state_dir = str(node_config.get(NC_STATE_DIR, ""))
    if state_dir:
        name = str(node_config.get(NC_SITE_NAME, "site")) or "site"
        return LedgerSettings(
            path=Path(state_dir) / LEDGER_FILE, site=name, budget=budget, accountant=accountant
        )
    out_dir = str(run_config.get(k.RC_OUT_DIR, ""))
    if out_dir:
        return LedgerSettings(
            path=Path(out_dir) / LEDGER_FILE,
            site=f"client-{partition_id}",
            budget=budget,
            accountant=accountant,
        )
    raise ValueError(
        "dp=local needs a privacy ledger: give the SuperNode a site config "
        "(--node-config 'site-config=site.toml') or a state folder "
        "(--node-config 'state-dir=DIR'); a simulation keeps it under its out-dir"
    )
