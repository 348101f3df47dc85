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

# --- strategies, selection, asynchronous rounds and attacks (issue 10) -------------
# Reply metric: the simulated seconds a device took to train and upload (simulation
# only; the coordinator orders arrivals by it when the run's clock is "simulated").
SIM_SECONDS: Final = "sim-seconds"
# run_config keys.
RC_CLOCK: Final = "clock"  # "wall" (default) | "simulated"
RC_SPEEDS: Final = "speeds"  # simulated device-speed model, e.g. "pareto:1.5"
RC_ATTACK: Final = "attack"  # "" | sign-flip | scale:F | gaussian:S | label-flip
RC_ATTACKERS: Final = "attackers"  # fraction of clients that attack, in [0, 1]

# --- secure aggregation, SecAgg+ (issue 3; privacy/secagg) --------------------------
# Message types of the protocol stages (the train stage wraps the plain train handler).
MT_SECAGG_SETUP: Final = "query.secagg_setup"
MT_SECAGG_SHARE: Final = "query.secagg_share"
MT_SECAGG_TRAIN: Final = "train.secagg"
MT_SECAGG_UNMASK: Final = "query.secagg_unmask"
# Record names: every stage carries a ConfigRecord SECAGG; the masked input travels
# as array SECAGG_VECTOR of ArrayRecord SECAGG_MASKED (uint32/uint64, Z_(2^M)).
SECAGG: Final = "secagg"
SECAGG_MASKED: Final = "secagg-masked"
SECAGG_VECTOR: Final = "y"
# Keys inside the SECAGG ConfigRecord.
SA_ROUND: Final = "round"
SA_GRAPH_SEED: Final = "graph-seed"  # bytes(32), drawn by the coordinator
SA_PARTICIPANTS: Final = "participants"  # bytes: the round's node ids, big-endian uint64
SA_PARAMS: Final = "params"  # [degree, threshold, bits, max-weight, modulus-bits]
SA_CLIP: Final = "clip"  # float, per-coordinate clipping bound R
SA_PRG: Final = "prg"  # str, mask generator: "aes128-ctr" | "chacha20"
SA_C_PUBLIC: Final = "c-public"  # X25519 public key for share encryption
SA_S_PUBLIC: Final = "s-public"  # X25519 public key for pairwise masks
SA_PEERS: Final = "peers"  # list[int]: neighbours whose keys follow
SA_PEERS_C: Final = "peers-c"
SA_PEERS_S: Final = "peers-s"
SA_RECEIVERS: Final = "receivers"  # list[int]: who each ciphertext is for
SA_SENDERS: Final = "senders"  # list[int]: who each ciphertext is from
SA_CIPHERTEXTS: Final = "ciphertexts"  # list[bytes]: AES-GCM share ciphertexts
SA_COMMITMENT: Final = "commitment"  # bytes(32): SHA-256 commitment to the self seed
SA_SURVIVORS: Final = "survivors"  # list[int]
SA_DROPPED: Final = "dropped"  # list[int]
SA_SEED_OWNERS: Final = "seed-owners"
SA_SEED_SHARES: Final = "seed-shares"
SA_KEY_OWNERS: Final = "key-owners"
SA_KEY_SHARES: Final = "key-shares"
# Metric of the coordinator's one synthetic reply: how many clients' updates it sums.
AGGREGATED_CLIENTS: Final = "aggregated-clients"
# Error codes of a client's refusal (its reply is an Error; it counts as dropped).
ERR_SECAGG_REFUSED: Final = 3101  # honest-client check failed / inconsistent request
ERR_SECAGG_BAD_SHARE: Final = 3102  # a neighbour's share failed AES-GCM authentication
# Client context state record (between stages).
SECAGG_STATE: Final = "secagg-state"
# run_config keys (parsed by privacy.secagg.config.SecAggConfig).
RC_SECAGG: Final = "secagg"

# --- silo deployment: site runtime, policy and audit (issue 9) ----------------------
# node_config key: the SuperNode of a site names its site.toml (data, policy, audit).
NC_SITE_CONFIG: Final = "site-config"
# run_config keys the site policy reads (the DP feature owns their meaning).
SITE_RC_DP: Final = "dp"  # "" | "none" | "local" | "central" | "distributed"
SITE_RC_DP_EPSILON: Final = "dp-epsilon"  # the run's ε target per site
# Reply metric the site audits as ε (= the DP feature's DP_EPSILON: the site's ε spent
# on this task after this training).
SITE_EPSILON_METRIC: Final = "dp-epsilon"
# run_config key: the deployment run id (`fedfleet run submit`); absent in simulation.
RC_RUN_ID: Final = "run-id"

# --- Differential privacy (issue 4; docs/privacy.md) --------------------------------
# run_config keys: the run's DP switches (same names as `fedfleet simulate` flags).
RC_DP: Final = "dp"  # none | local | central | distributed
RC_DP_EPSILON: Final = "dp-epsilon"  # target ε (absent: noise multiplier given)
RC_DP_DELTA: Final = "dp-delta"
RC_DP_CLIP: Final = "dp-clip"  # max grad norm (local) / update clip norm (client-level)
RC_DP_NOISE_MULTIPLIER: Final = "dp-noise-multiplier"  # absent: calibrated from ε
RC_DP_CLIPPING: Final = "dp-clipping"  # fixed | adaptive (central only)
RC_DP_ACCOUNTANT: Final = "dp-accountant"  # rdp | prv
RC_DP_MIN_CLIENTS: Final = "dp-min-clients"  # distributed: surviving clients assumed
RC_DP_GRAD_SAMPLE_MODE: Final = "dp-grad-sample-mode"  # Opacus: hooks|functorch|ghost
RC_OUT_DIR: Final = "out-dir"  # a simulation's output folder (simulated clients' ledgers)
RC_NUM_SERVER_ROUNDS: Final = "num-server-rounds"
RC_CLIENTS_PER_ROUND: Final = "clients-per-round"
RC_STRATEGY: Final = "strategy"
# node_config keys of a site (site.toml → SuperNode --node-config).
NC_STATE_DIR: Final = "state-dir"  # the site's state folder (privacy ledger, audit log)
NC_SITE_NAME: Final = "site-name"
NC_DP_BUDGET_EPSILON: Final = "dp-budget-epsilon"  # the site's hard ε budget per task
NC_DP_BUDGET_DELTA: Final = "dp-budget-delta"
NC_DP_ACCOUNTANT: Final = "dp-accountant"  # the accountant of the site's budget decisions
# MetricRecord keys of a DP train reply.
DP_EPSILON: Final = "dp-epsilon"  # the site's ε spent on this task after this training
DP_NOISE_MULTIPLIER: Final = "dp-noise-multiplier"
DP_SAMPLE_RATE: Final = "dp-sample-rate"
DP_STEPS: Final = "dp-steps"
DP_UPDATE_NORM: Final = "dp-update-norm"  # distributed: L2 norm of the update before clipping
# Error.code of a train reply refused by the site's privacy policy (budget, mode).
ERROR_DP_REFUSED: Final = 4601
# Error.code of the reply to a run whose ClientApp the site has not pinned (site.toml [code]).
ERR_SITE_CODE_NOT_PINNED: Final = 4701
