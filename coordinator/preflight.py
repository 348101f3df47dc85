"""Checks a run config against the coordinator before ``fedfleet run submit`` starts it.

What can be known before a run starts is refused here, with one line saying what to
change, instead of by the ServerApp minutes later: the core settings
(:class:`coordinator.config.RunConfig`), secure aggregation's own settings and its
minimum of clients per round, and — since a secure-aggregation round needs every selected
site — that enough sites are registered with the SuperLink (``flwr supernode list``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from coordinator.config import RunConfig
from coordinator.privacy_checks import secagg_from_run_config
from coordinator.superlink import CONNECTION, CoordinatorSettings, flwr_json
from strategies.deployment_telemetry import deployment_telemetry

# Node states of `flwr supernode list` that can take part in a run.
_USABLE = frozenset({"registered", "online", "offline"})


def registered_sites(settings: CoordinatorSettings) -> int:
    """How many SuperNodes are registered with the SuperLink (``ValueError`` if it does
    not answer)."""
    doc = flwr_json(settings, ["supernode", "list", CONNECTION], timeout=60)
    return sum(1 for node in doc.get("nodes", []) if node.get("status") in _USABLE)


def check_run_config(run_config: Mapping[str, Any], *, registered: Callable[[], int]) -> None:
    """Refuse a run that cannot start; ``registered()`` counts the registered sites and
    is asked only when the run needs it. ``ValueError`` names the value to change."""
    config = RunConfig.from_run_config(run_config)
    deployment_telemetry(run_config)  # carbon-trace and node-regions load (docs/carbon.md)
    secagg = secagg_from_run_config(run_config, config)  # >= 3 clients, T, degree, overflow
    if secagg is None:
        return
    sites = registered()
    if config.clients_per_round > sites:
        raise ValueError(
            f"secure aggregation with sites = {config.clients_per_round} needs that many "
            f"registered sites, and the SuperLink has {sites}; register more with "
            "`fedfleet coordinator add-site` or lower sites (at least 3)"
        )
