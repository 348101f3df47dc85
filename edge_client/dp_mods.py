"""Distributed DP at the client: clip the update, add this client's noise share.

With ``dp = "distributed"`` each client's update (trained weights − global model) is
clipped to L2 norm ``C`` and gets independent Gaussian noise ``N(0, (z C)² / n_min)``
per coordinate, and its aggregation weight becomes 1, before secure aggregation masks it
(``privacy.dp.distributed`` has the math and the guarantee):
:func:`distributed_dp_share` is a secure-aggregation pre-mask transform (the hook of
``edge_client.secagg_client``).

It is a no-op unless the run config says ``dp = "distributed"``. ``z`` is computed
by every client from the run config with the same deterministic calibration the
coordinator uses (``privacy.dp.client_level_noise_multiplier``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Context

from edge_client.protocol import keys as k
from privacy.dp import DPConfig, client_level_noise_multiplier
from privacy.dp.config import dp_mode
from privacy.dp.distributed import noisy_share

if TYPE_CHECKING:  # the secure-aggregation side is optional for this module
    from privacy.secagg.arrays import MaskInput

log = logging.getLogger(__name__)


@lru_cache(maxsize=32)
def _share_params(
    dp: DPConfig, clients_per_round: int, num_clients: int, rounds: int
) -> tuple[float, int]:
    sigma = client_level_noise_multiplier(
        dp, clients_per_round=clients_per_round, num_clients=num_clients, rounds=rounds
    )
    return sigma, dp.min_clients or clients_per_round


def share_parameters(run_config: Mapping[str, Any]) -> tuple[DPConfig, float, int]:
    """(DP config, noise multiplier z, n_min) of a ``dp = "distributed"`` run."""
    dp = DPConfig.from_run_config(run_config)
    m = int(run_config.get(k.RC_CLIENTS_PER_ROUND, 1))
    n = int(run_config.get(k.RC_NUM_CLIENTS, m))
    rounds = int(run_config.get(k.RC_NUM_SERVER_ROUNDS, 1))
    sigma, n_min = _share_params(dp, m, n, rounds)
    return dp, sigma, n_min


class _DistributedDpShare:
    """Secure-aggregation pre-mask transform: clip + noise share, weight 1 (a no-op
    unless ``dp = distributed``; :meth:`active` says which, so the client can skip
    building the update it would return unchanged)."""

    def active(self, context: Context) -> bool:
        return dp_mode(context.run_config) == "distributed"

    def __call__(self, item: MaskInput, context: Context) -> MaskInput:
        if not self.active(context):
            return item
        from privacy.secagg.arrays import MaskInput

        dp, sigma, n_min = share_parameters(context.run_config)
        (noisy,), norm = noisy_share(
            [item.update], clip=dp.clip, noise_multiplier=sigma, min_clients=n_min
        )
        log.info(
            "distributed DP: update norm %.4g clipped to %g, noise share σ=%.4g (z=%.4g, n_min=%d)",
            norm,
            dp.clip,
            sigma * dp.clip / np.sqrt(n_min),
            sigma,
            n_min,
        )
        return MaskInput(update=noisy, weight=1, clip=item.clip, participants=item.participants)


distributed_dp_share = _DistributedDpShare()
