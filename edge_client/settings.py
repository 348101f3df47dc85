"""The ClientApp's typed settings, read once per message from Flower's Context."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import ConfigRecord, Context

from edge_client.protocol import keys as k
from edge_client.protocol.site import NC_SITE_CONFIG
from tasks import get_task


@dataclass(frozen=True)
class ClientSettings:
    """What a client needs to train one round.

    ``task``, ``seed`` and ``partition`` come from the run config; ``partition_id`` and
    ``num_partitions`` from the node config (simulation engines set them).
    Round-level hyper-parameters come from the instruction's ConfigRecord (fedfleet's
    coordinator always sends them); one it lacks is the task's default.
    """

    task: str
    seed: int
    partition: str
    partition_id: int
    num_partitions: int
    server_round: int
    local_epochs: int
    batch_size: int
    learning_rate: float
    proximal_mu: float
    momentum: float = 0.0
    site_config: str = ""  # a silo's site.toml (node config `site-config`); "" in simulation

    @classmethod
    def from_message(cls, context: Context, config: ConfigRecord) -> ClientSettings:
        """Combine run config, node config and the round's config; clear errors if absent."""
        rc, nc = context.run_config, context.node_config
        site_config = str(nc.get(NC_SITE_CONFIG, ""))
        if site_config:  # a silo reads its own data: one partition, its own
            nc = {k.NC_PARTITION_ID: 0, k.NC_NUM_PARTITIONS: 1, **nc}
        try:
            partition_id = int(nc[k.NC_PARTITION_ID])
            num_partitions = int(nc[k.NC_NUM_PARTITIONS])
        except KeyError as exc:
            raise ValueError(
                f"node config lacks {exc.args[0]!r}; start the SuperNode with "
                "--node-config 'partition-id=I num-partitions=N' (or use a site config)"
            ) from None
        task = str(rc.get(k.RC_TASK, "digits-cnn"))
        defaults = get_task(task).defaults
        return cls(
            task=task,
            seed=int(rc.get(k.RC_SEED, 0)),
            partition=str(rc.get(k.RC_PARTITION, "iid")),
            partition_id=partition_id,
            num_partitions=num_partitions,
            server_round=int(_scalar(config, k.SERVER_ROUND, 0)),
            local_epochs=int(_scalar(config, k.LOCAL_EPOCHS, defaults.local_epochs)),
            batch_size=int(_scalar(config, k.BATCH_SIZE, defaults.batch_size)),
            learning_rate=float(_scalar(config, k.LEARNING_RATE, defaults.learning_rate)),
            proximal_mu=float(_scalar(config, k.PROXIMAL_MU, 0.0)),
            momentum=float(_scalar(config, k.MOMENTUM, defaults.momentum)),
            site_config=site_config,
        )

    @property
    def train_seed(self) -> int:
        """Seed of this client's batch order in this round: a function of run seed,
        round and partition only, so every engine reproduces it."""
        state = np.random.SeedSequence([self.seed, self.server_round, self.partition_id])
        return int(state.generate_state(1)[0])


def _scalar(config: ConfigRecord, key: str, default: float) -> float:
    """A numeric value of the round's config, with a clear error for a wrong type."""
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"config value {key}={value!r} must be a number")
    return value
