"""opacusexample: a FedAvg ServerApp; the clients train with DP-SGD."""

import hashlib
import json
import random
import time
from logging import INFO

import torch
from flwr.app import ArrayRecord, Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from opacusexample.client_app import Net

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    random.seed(int(cfg["seed"]))
    torch.manual_seed(int(cfg["seed"]))
    # wait for every node before round 1: FedAvg sizes its sample from the nodes
    # connected when it starts (Flower's simulated nodes register while it starts)
    while len(list(grid.get_node_ids())) < int(context.run_config["min-nodes"]):
        time.sleep(1.0)
    strategy = FedAvg(
        fraction_train=cfg["fraction-train"],
        fraction_evaluate=0.0,
        min_available_nodes=cfg["min-nodes"],
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(Net().state_dict()),
        num_rounds=cfg["num-server-rounds"],
    )
    digest = hashlib.sha256(b"".join(a.tobytes() for a in result.arrays.to_numpy_ndarrays()))
    train = {str(r): dict(m) for r, m in result.train_metrics_clientapp.items()}
    log(INFO, "RESULT %s", json.dumps({"train": train, "model_sha256": digest.hexdigest()[:16]}))
