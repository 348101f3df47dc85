"""sklearnexample: a FedAvg ServerApp over a LogisticRegression's coefficients."""

import hashlib
import json
import random
import time
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    random.seed(int(cfg["seed"]))
    arrays = ArrayRecord([np.zeros((3, 4)), np.zeros(3)])  # coef_, intercept_
    # wait for every node before round 1: FedAvg sizes its sample from the nodes
    # connected when it starts (Flower's simulated nodes register while it starts)
    while len(list(grid.get_node_ids())) < int(context.run_config["min-nodes"]):
        time.sleep(1.0)
    strategy = FedAvg(
        fraction_train=cfg["fraction-train"],
        fraction_evaluate=cfg["fraction-evaluate"],
        min_available_nodes=cfg["min-nodes"],
    )
    result = strategy.start(grid=grid, initial_arrays=arrays, num_rounds=cfg["num-server-rounds"])
    digest = hashlib.sha256(b"".join(a.tobytes() for a in result.arrays.to_numpy_ndarrays()))
    summary = {
        "train": {str(r): dict(m) for r, m in result.train_metrics_clientapp.items()},
        "evaluate": {str(r): dict(m) for r, m in result.evaluate_metrics_clientapp.items()},
        "model_sha256": digest.hexdigest()[:16],
    }
    log(INFO, "RESULT %s", json.dumps(summary))
