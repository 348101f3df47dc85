"""Distributed DP at the client: clip the update, add this client's noise share.

With ``dp = "distributed"`` each client's update (trained weights − global model) is
clipped to L2 norm ``C`` and gets independent Gaussian noise ``N(0, (z C)² / n_min)``
per coordinate, and its aggregation weight becomes 1, before secure aggregation masks it
(``privacy.dp.distributed`` has the math and the guarantee). Two forms:

* :func:`distributed_dp_share` — a secure-aggregation pre-mask transform (the hook of
  ``edge_client.secagg_client``), the deployed path;
* :func:`distributed_dp_mod` — the same as a Flower client mod on plain train replies,
  for engines or exchanges without that hook.

Both are no-ops unless the run config says ``dp = "distributed"``. ``z`` is computed
by every client from the run config with the same deterministic calibration the
coordinator uses (``privacy.dp.client_level_noise_multiplier``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.clientapp.typing import ClientAppCallable

from edge_client import messages as k
from edge_client.dp_settings import dp_config_from_run_config, dp_mode
from privacy.dp import DPConfig, client_level_noise_multiplier
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
    dp = dp_config_from_run_config(run_config)
    m = int(run_config.get(k.RC_CLIENTS_PER_ROUND, 1))
    n = int(run_config.get(k.RC_NUM_CLIENTS, m))
    rounds = int(run_config.get(k.RC_NUM_SERVER_ROUNDS, 1))
    sigma, n_min = _share_params(dp, m, n, rounds)
    return dp, sigma, n_min


def distributed_dp_share(item: MaskInput, context: Context) -> MaskInput:
    """Secure-aggregation pre-mask transform: clip + noise share, weight 1."""
    if dp_mode(context.run_config) != "distributed":
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


def distributed_dp_mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower mod form: replaces a train reply's weights by global + noisy clipped update
    and its ``num-examples`` by 1."""
    if dp_mode(context.run_config) != "distributed" or not message.metadata.message_type.startswith(
        "train"
    ):
        return call_next(message, context)
    received = message.content.array_records.get(k.ARRAYS)
    reply = call_next(message, context)
    if reply.has_error() or received is None or k.ARRAYS not in reply.content.array_records:
        return reply
    trained = reply.content.array_records[k.ARRAYS]
    keys = list(received.keys())
    start = [received[key].numpy() for key in keys]
    update = [
        np.asarray(trained[key].numpy(), dtype=np.float64) - s
        for key, s in zip(keys, start, strict=True)
    ]
    dp, sigma, n_min = share_parameters(context.run_config)
    noisy, norm = noisy_share(update, clip=dp.clip, noise_multiplier=sigma, min_clients=n_min)
    reply.content.array_records[k.ARRAYS] = ArrayRecord(
        {
            key: Array(np.ascontiguousarray((s + u).astype(s.dtype)))
            for key, s, u in zip(keys, start, noisy, strict=True)
        }
    )
    metrics = reply.content.metric_records.get(k.METRICS)
    if metrics is not None:
        metrics[k.NUM_EXAMPLES] = 1
        metrics[k.DP_UPDATE_NORM] = norm
    return reply
