"""Message keys between the coordinator's ServerApp and the ClientApp.

The one place where the wire contract of a federated round is spelled. The coordinator
imports it from here (device side), never the other way round.
"""

from __future__ import annotations

from typing import Final

# Record names inside a Message's RecordDict (Flower's strategies use the same defaults).
ARRAYS: Final = "arrays"
CONFIG: Final = "config"
METRICS: Final = "metrics"

# ConfigRecord keys sent with a train/evaluate instruction.
SERVER_ROUND: Final = "server-round"  # int, set by Flower's strategies
LOCAL_EPOCHS: Final = "local-epochs"
BATCH_SIZE: Final = "batch-size"
LEARNING_RATE: Final = "learning-rate"
PROXIMAL_MU: Final = "proximal-mu"  # FedProx; Flower's FedProx sets this key

# MetricRecord keys in a reply.
NUM_EXAMPLES: Final = "num-examples"  # weighting key of Flower's strategies
TRAIN_LOSS: Final = "train-loss"
EVAL_LOSS: Final = "eval-loss"
EVAL_ACCURACY: Final = "eval-acc"

# run_config keys (pyproject [tool.flwr.app.config] and `--run-config` overrides).
RC_TASK: Final = "task"
RC_SEED: Final = "seed"
RC_PARTITION: Final = "partition"
RC_NUM_CLIENTS: Final = "num-clients"

# node_config keys (set by the simulation engines, or by a SuperNode's --node-config).
NC_PARTITION_ID: Final = "partition-id"
NC_NUM_PARTITIONS: Final = "num-partitions"
