"""Refuse strategy set-ups that cannot work — before round 1, naming the fix.

- A robust aggregator (median, trimmed mean, Krum, Multi-Krum, Bulyan) needs every
  client's update; secure aggregation reveals only their sum.
- FedBuff aggregates updates as they arrive; secure aggregation (Bell et al. 2020)
  unmasks the sum of one synchronous cohort only.
- Krum needs n ≥ 2f + 3 updates, Bulyan n ≥ 4f + 3 (f = ``strategy-byzantine``).
- FedBuff's buffer cannot be larger than the clients kept in flight.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from strategies.registry import StrategyParams, available_strategies, strategy_info

SYNCHRONOUS_SUM_ONLY = "fedavg, fedprox, fedavgm, fedadam, fedyogi, fedadagrad"


def check_strategy_setup(
    *,
    strategy: str,
    params: StrategyParams,
    clients_per_round: int,
    min_clients: int = 1,
    secure_aggregation: bool = False,
) -> None:
    """Raise ``ValueError`` with the fix if ``strategy`` cannot run this way."""
    info = strategy_info(strategy)
    params.validate()
    if secure_aggregation and info.needs_individual_updates:
        raise ValueError(
            f"strategy {strategy} needs every client's update, but secure aggregation "
            f"reveals only their sum; turn off secure aggregation (secagg) or choose one of "
            f"{SYNCHRONOUS_SUM_ONLY}"
        )
    if secure_aggregation and info.asynchronous:
        raise ValueError(
            f"strategy {strategy} aggregates updates as they arrive, but secure "
            f"aggregation only unmasks the sum of one synchronous round; turn off secure "
            f"aggregation (secagg) or choose a synchronous strategy ({SYNCHRONOUS_SUM_ONLY})"
        )
    need = info.min_updates(params)
    if clients_per_round < need:
        f = params.byzantine
        rule = "4f+3" if strategy == "bulyan" else "2f+3"
        per_f = 4 if strategy == "bulyan" else 2
        max_f = max(0, (clients_per_round - 3) // per_f)
        raise ValueError(
            f"{strategy} with strategy-byzantine={f} needs at least {need} updates a round "
            f"({rule}), but clients-per-round is {clients_per_round}; raise clients-per-round "
            f"to {need} or lower strategy-byzantine to {max_f}"
        )
    if params.krum_select is not None and params.krum_select > clients_per_round:
        raise ValueError(
            f"strategy-krum-select={params.krum_select} is more than clients-per-round "
            f"({clients_per_round}); lower strategy-krum-select"
        )
    if info.asynchronous:
        if params.buffer_size > clients_per_round:
            raise ValueError(
                f"{strategy}: strategy-buffer-size={params.buffer_size} is larger than the "
                f"{clients_per_round} clients kept training (clients-per-round); lower "
                f"strategy-buffer-size or raise clients-per-round"
            )
        if min_clients > params.buffer_size:
            raise ValueError(
                f"{strategy}: min-clients={min_clients} is larger than strategy-buffer-size="
                f"{params.buffer_size}, so no buffer could ever be applied; lower min-clients"
            )


def check_run_config(run_config: Mapping[str, Any]) -> StrategyParams:
    """Validate the strategy part of a Flower run config; returns its parameters.

    Reads ``strategy``, ``clients-per-round``, ``min-clients``, ``secagg`` and the
    ``strategy-*`` keys.
    """
    strategy = str(run_config.get("strategy", "fedavg"))
    if strategy not in available_strategies():
        raise ValueError(
            f"unknown strategy {strategy!r}; choose one of: {', '.join(available_strategies())}"
        )
    params = StrategyParams.from_run_config(run_config)
    check_strategy_setup(
        strategy=strategy,
        params=params,
        clients_per_round=int(run_config.get("clients-per-round", 10)),
        min_clients=int(run_config.get("min-clients", 1)),
        secure_aggregation=_truthy(run_config.get("secagg", False)),
    )
    return params


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)
