"""Keys of a federated round between the coordinator's ServerApp and the ClientApp.

The one place where a round's message contract is spelled: record names, the keys of
a train/evaluate instruction and of its reply, and the run-config and node-config keys
both ends read. The coordinator imports it from here (device side), never the other way
round. Keys owned by a typed config live with it: the ``dp*`` run-config keys in
``privacy.dp.config``, the ``secagg*`` ones in ``privacy.secagg.config``; the SecAgg+
stages are in :mod:`edge_client.protocol.secagg`, a site's node-config keys in
:mod:`edge_client.protocol.site`.
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
MOMENTUM: Final = "momentum"  # SGD momentum; 0 = plain SGD
PROXIMAL_MU: Final = "proximal-mu"  # FedProx; Flower's FedProx sets this key

# MetricRecord keys in a reply.
NUM_EXAMPLES: Final = "num-examples"  # weighting key of Flower's strategies
TRAIN_LOSS: Final = "train-loss"
EVAL_LOSS: Final = "eval-loss"
EVAL_ACCURACY: Final = "eval-acc"
# Per-group confusion counts of an evaluate reply (list of ints, tasks.fairness order:
# tp, fp, tn, fn per group code of the run's sensitive attribute); only with one set.
EVAL_FAIRNESS_COUNTS: Final = "eval-fairness-counts"
# The simulated seconds a device took to train and upload (simulation only; the
# coordinator orders arrivals by it when the run's clock is "simulated").
SIM_SECONDS: Final = "sim-seconds"
# MetricRecord keys of a train reply whose site measures its energy (codecarbon,
# `[energy] codecarbon = true` in site.toml; docs/carbon.md).
ENERGY_KWH: Final = "energy-kwh"  # kWh the site spent on this training
CO2_G: Final = "co2-g"  # grams CO2-eq of that energy at the site's grid
# MetricRecord keys of a DP train reply (docs/privacy.md).
DP_EPSILON: Final = "dp-epsilon"  # the site's ε spent on this task after this training
DP_NOISE_MULTIPLIER: Final = "dp-noise-multiplier"
DP_SAMPLE_RATE: Final = "dp-sample-rate"
DP_STEPS: Final = "dp-steps"
# The budget pre-flight (coordinator.budget_preflight, edge_client.budget_query): the
# query's message type, and the one MetricRecord key of its reply (1: the site's ledger
# has budget for every training of the run, 0: not) — nothing else leaves the site.
MT_BUDGET_QUERY: Final = "query.budget"
BUDGET_ENOUGH: Final = "budget-enough"
# Error.code of a train reply refused by the site's privacy policy (budget, mode).
ERROR_DP_REFUSED: Final = 4601
# Error.code of the reply to a run whose ClientApp the site has not pinned (site.toml [code]).
ERR_SITE_CODE_NOT_PINNED: Final = 4701

# run_config keys (pyproject [tool.flwr.app.config] and `--run-config` overrides).
RC_TASK: Final = "task"
RC_SEED: Final = "seed"
RC_PARTITION: Final = "partition"
RC_NUM_CLIENTS: Final = "num-clients"
RC_NUM_SERVER_ROUNDS: Final = "num-server-rounds"
RC_CLIENTS_PER_ROUND: Final = "clients-per-round"
RC_OUT_DIR: Final = "out-dir"  # a simulation's output folder (simulated clients' ledgers)
# Ask every site whether its privacy budget covers the run before round 1; fewer sites
# with enough than the run's quorum: the run is held (fails with the count). Set by
# `--retrain` (the autopilot's drift-started runs).
RC_BUDGET_PREFLIGHT: Final = "budget-preflight"
RC_RUN_ID: Final = "run-id"  # the deployment run id (`fedfleet run submit`); absent in simulation
# Strategies, selection, asynchronous rounds and attacks (issue 10).
RC_CLOCK: Final = "clock"  # "wall" (default) | "simulated"
RC_SPEEDS: Final = "speeds"  # simulated device-speed model, e.g. "pareto:1.5"
RC_ATTACK: Final = "attack"  # "" | sign-flip | scale:F | gaussian:S | label-flip
RC_ATTACKERS: Final = "attackers"  # fraction of clients that attack, in [0, 1]
# Fairness audit (issue 19): the task's sensitive attribute evaluate replies count by
# ("" = none: groups are the clients).
RC_SENSITIVE_ATTRIBUTE: Final = "sensitive-attribute"
# Clients resample their training data so the label does not depend on the attribute's
# group (Kamiran & Calders 2012; tasks.fairness.reweighed_indices).
RC_FAIRNESS_REWEIGH: Final = "fairness-reweigh"
# Equal-opportunity reweighting (coordinator.fairness.EqualOpportunityWeights): the
# multipliers' step rate (0 = off) in the run config, and in each train instruction's
# config the weight of each group code's positives (a float list).
RC_EQUAL_OPPORTUNITY: Final = "equal-opportunity"
FAIRNESS_POSITIVE_WEIGHTS: Final = "fairness-positive-weights"

# node_config keys (set by the simulation engines, or by a SuperNode's --node-config).
NC_PARTITION_ID: Final = "partition-id"
NC_NUM_PARTITIONS: Final = "num-partitions"
