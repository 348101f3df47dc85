"""pytorchexample: a Flower / PyTorch ServerApp."""

import hashlib
import json
import random
import time
from logging import INFO

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from pytorchexample.task import Net

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Main entry point for the ServerApp."""
    fraction_train: float = context.run_config["fraction-train"]
    fraction_evaluate: float = context.run_config["fraction-evaluate"]
    num_rounds: int = context.run_config["num-server-rounds"]
    lr: float = context.run_config["lr"]

    # Seeded model and sampling (FedAvg samples with Python's random)
    random.seed(int(context.run_config["seed"]))
    torch.manual_seed(int(context.run_config["seed"]))
    global_model = Net()
    arrays = ArrayRecord(global_model.state_dict())

    # wait for every node before round 1: FedAvg sizes its sample from the nodes
    # connected when it starts (Flower's simulated nodes register while it starts)
    while len(list(grid.get_node_ids())) < int(context.run_config["min-nodes"]):
        time.sleep(1.0)
    strategy = FedAvg(
        fraction_train=fraction_train,
        fraction_evaluate=fraction_evaluate,
        min_available_nodes=context.run_config["min-nodes"],
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=arrays,
        train_config=ConfigRecord({"lr": lr}),
        num_rounds=num_rounds,
    )

    # What a run produced, in one line a benchmark can compare between engines
    digest = hashlib.sha256()
    for array in result.arrays.to_numpy_ndarrays():
        digest.update(array.tobytes())
    summary = {
        "train": {str(r): dict(m) for r, m in result.train_metrics_clientapp.items()},
        "evaluate": {str(r): dict(m) for r, m in result.evaluate_metrics_clientapp.items()},
        "model_sha256": digest.hexdigest()[:16],
    }
    log(INFO, "RESULT %s", json.dumps(summary, sort_keys=True))
