"""The checks of a run's secure aggregation and differential privacy before round 1.

Pure functions of the run config, importing no Flower, so that ``fedfleet simulate``
and ``fedfleet run submit`` refuse a bad setting in a fraction of a second
(tests/test_cli_startup.py) with the very checks the ServerApp runs
(:mod:`coordinator.app`, :mod:`coordinator.dp`, :mod:`coordinator.secagg_exchange` use
them). ``ValueError`` names the value to change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from coordinator.config import RunConfig
from privacy.dp import AVERAGING_STRATEGIES, DPConfig, client_level_noise_multiplier
from privacy.dp.distributed import share_std
from privacy.secagg.config import RUN_CONFIG_KEYS as SECAGG_KEYS
from privacy.secagg.config import SecAggConfig


def secagg_from_run_config(run_config: Mapping[str, Any], config: RunConfig) -> SecAggConfig | None:
    """The run's secure-aggregation settings, checked against its client count before
    round 1 (``None`` when ``secagg`` is off). Strategies that need individual updates
    are refused by the strategy set-up (``strategies.validation``)."""
    secagg = SecAggConfig.from_run_config(run_config)
    if not secagg.enabled:
        return None
    secagg.params_for(config.clients_per_round)  # T > K+1, overflow, too few clients
    if config.min_clients > config.clients_per_round:
        raise ValueError("min-clients is larger than clients-per-round")
    return secagg


#: Secure aggregation clips each coordinate to [-R, R]; a noisy share must fit with
#: margin or the clipping distorts the noise. R >= C + SHARE_SIGMAS * sigma_share.
SHARE_SIGMAS = 7.0


def _secagg(run_config: Mapping[str, Any]) -> tuple[bool, float | None]:
    """(secure aggregation on?, its per-coordinate clip R) from the run config."""
    if not run_config.get(SECAGG_KEYS["enabled"], False):
        return False, None
    secagg = SecAggConfig.from_run_config(run_config)
    return secagg.enabled, secagg.clip


def check_dp_setup(dp: DPConfig, config: RunConfig, run_config: Mapping[str, Any]) -> None:
    """Refuse DP combined with what it cannot work with, naming the value to change."""
    if not dp.enabled:
        return
    secure, secagg_clip = _secagg(run_config)
    if dp.client_level:
        dp.validate(dataset_size=config.num_clients)
        if config.strategy not in AVERAGING_STRATEGIES:
            raise ValueError(
                f"dp={dp.mode} bounds one client's influence on a mean of updates; strategy "
                f"{config.strategy!r} is not a mean — use --strategy "
                f"{' or '.join(AVERAGING_STRATEGIES)} (or --dp local, which works with any)"
            )
    if dp.mode == "central" and secure:
        raise ValueError(
            "dp=central clips each client's update at the coordinator, which secure "
            "aggregation hides; use --dp distributed with --secagg"
        )
    if dp.mode == "distributed":
        if not secure:
            raise ValueError(
                "dp=distributed relies on secure aggregation to hide each client's noisy "
                "update; add --secagg (or use --dp central with a trusted coordinator)"
            )
        n_min = dp.min_clients or config.clients_per_round
        if n_min > config.clients_per_round:
            raise ValueError(
                f"dp-min-clients {n_min} is larger than clients-per-round "
                f"{config.clients_per_round}; lower --dp-min-clients"
            )
        sigma = distributed_noise_multiplier(dp, config)
        std = share_std(noise_multiplier=sigma, clip=dp.clip, min_clients=n_min)
        needed = dp.clip + SHARE_SIGMAS * std
        if secagg_clip is not None and secagg_clip < needed:
            raise ValueError(
                f"secagg-clip {secagg_clip:g} would clip the noisy DP shares (update norm "
                f"{dp.clip:g} + noise share σ={std:.3g} per coordinate); raise "
                f"--secagg-clip to at least {needed:.3g}"
            )


def distributed_noise_multiplier(dp: DPConfig, config: RunConfig) -> float:
    """The client-level noise multiplier z of the run (given, or calibrated)."""
    return client_level_noise_multiplier(
        dp,
        clients_per_round=config.clients_per_round,
        num_clients=config.num_clients,
        rounds=config.num_server_rounds,
    )
