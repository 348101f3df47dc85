"""numpyexample: a FedAvg ServerApp over NumPy arrays."""

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
    random.seed(int(context.run_config["seed"]))
    arrays = ArrayRecord([np.ones((2, 3)), np.zeros(4)])
    # wait for every node before round 1: FedAvg sizes its sample from the nodes
    # connected when it starts (Flower's simulated nodes register while it starts)
    while len(list(grid.get_node_ids())) < int(context.run_config["min-nodes"]):
        time.sleep(1.0)
    strategy = FedAvg(
        fraction_train=context.run_config["fraction-train"],
        fraction_evaluate=0.0,
        min_available_nodes=context.run_config["min-nodes"],
    )
    result = strategy.start(
        grid=grid, initial_arrays=arrays, num_rounds=context.run_config["num-server-rounds"]
    )
    digest = hashlib.sha256(b"".join(a.tobytes() for a in result.arrays.to_numpy_ndarrays()))
    train = {str(r): dict(m) for r, m in result.train_metrics_clientapp.items()}
    log(INFO, "RESULT %s", json.dumps({"train": train, "model_sha256": digest.hexdigest()[:16]}))
