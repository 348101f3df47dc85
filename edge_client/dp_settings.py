"""Where a client's DP settings come from: the run config, the node config, site.toml.

* :func:`dp_config_from_run_config` reads the run's ``dp*`` switches (keys in
  ``edge_client.messages``) into a :class:`privacy.dp.DPConfig` — the coordinator reads
  them with the same function, so both ends agree.
* :func:`ledger_settings` says where the client's privacy ledger lives and what budget
  it enforces:

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

from edge_client import messages as k
from privacy.dp import DPConfig
from privacy.dp.accounting import Accountant, check_accountant
from privacy.ledger import LEDGER_FILE, Budget


def _float(run_config: Mapping[str, Any], key: str) -> float | None:
    if key not in run_config:
        return None
    value = run_config[key]
    if isinstance(value, bool):
        raise ValueError(f"run config {key}={value!r} must be a number")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"run config {key}={value!r} must be a number") from None


def dp_mode(run_config: Mapping[str, Any]) -> str:
    """The run's DP mode (``none`` when the key is absent or empty)."""
    value = str(run_config.get(k.RC_DP, "none")).strip().lower()
    return value or "none"


def dp_config_from_run_config(run_config: Mapping[str, Any]) -> DPConfig:
    """The run's :class:`DPConfig` (validated without dataset sizes)."""
    min_clients = _float(run_config, k.RC_DP_MIN_CLIENTS)
    delta = _float(run_config, k.RC_DP_DELTA)
    clip = _float(run_config, k.RC_DP_CLIP)
    config = DPConfig(
        mode=dp_mode(run_config),  # type: ignore[arg-type]
        epsilon=_float(run_config, k.RC_DP_EPSILON),
        delta=DPConfig.delta if delta is None else delta,
        clip=DPConfig.clip if clip is None else clip,
        noise_multiplier=_float(run_config, k.RC_DP_NOISE_MULTIPLIER),
        clipping=str(run_config.get(k.RC_DP_CLIPPING, "fixed")),  # type: ignore[arg-type]
        accountant=str(run_config.get(k.RC_DP_ACCOUNTANT, "rdp")),  # type: ignore[arg-type]
        min_clients=int(min_clients) if min_clients else None,
        grad_sample_mode=str(  # type: ignore[arg-type]
            run_config.get(k.RC_DP_GRAD_SAMPLE_MODE, DPConfig.grad_sample_mode)
        ),
    )
    config.validate()
    return config


def dp_run_config(config: DPConfig) -> dict[str, bool | int | float | str]:
    """The run-config keys of ``config`` (inverse of :func:`dp_config_from_run_config`)."""
    if not config.enabled:
        return {k.RC_DP: "none"}
    out: dict[str, bool | int | float | str] = {
        k.RC_DP: config.mode,
        k.RC_DP_DELTA: config.delta,
        k.RC_DP_CLIP: config.clip,
        k.RC_DP_CLIPPING: config.clipping,
        k.RC_DP_ACCOUNTANT: config.accountant,
        k.RC_DP_GRAD_SAMPLE_MODE: config.grad_sample_mode,
    }
    if config.epsilon is not None:
        out[k.RC_DP_EPSILON] = config.epsilon
    if config.noise_multiplier is not None:
        out[k.RC_DP_NOISE_MULTIPLIER] = config.noise_multiplier
    if config.min_clients is not None:
        out[k.RC_DP_MIN_CLIENTS] = config.min_clients
    return out


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
    accountant = check_accountant(str(node_config.get(k.NC_DP_ACCOUNTANT, dp.accountant)))
    site_config = str(node_config.get(k.NC_SITE_CONFIG, ""))
    if site_config:
        from edge_client.site_config import SiteConfig

        site = SiteConfig.load(Path(site_config))
        return LedgerSettings(
            path=site.state_dir / LEDGER_FILE,
            site=site.name,
            budget=Budget(site.policy.epsilon, site.policy.delta),
            accountant=accountant,
        )
    budget_eps = _float(node_config, k.NC_DP_BUDGET_EPSILON)
    budget_delta = _float(node_config, k.NC_DP_BUDGET_DELTA)
    budget = Budget(
        budget_eps if budget_eps is not None else dp.epsilon,
        budget_delta if budget_delta is not None else dp.delta,
    )
    state_dir = str(node_config.get(k.NC_STATE_DIR, ""))
    if state_dir:
        name = str(node_config.get(k.NC_SITE_NAME, "site")) or "site"
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
