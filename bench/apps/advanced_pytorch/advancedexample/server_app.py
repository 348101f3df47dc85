"""advancedexample: a FedAvg subclass with a learning-rate schedule, central evaluation
on the server, and a checkpoint of the best model."""

import hashlib
import json
import random
import time
from collections.abc import Iterable
from logging import INFO

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from advancedexample.task import Net, load_data
from advancedexample.task import test as test_fn

app = ServerApp()


class CustomFedAvg(FedAvg):
    """FedAvg whose learning rate halves every round."""

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        config["lr"] = float(config["lr"]) * 0.5 ** (server_round - 1)
        return super().configure_train(server_round, arrays, config, grid)


def central_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
    """Evaluate the global body (with a fresh head) on the server's own test set."""
    net = Net()
    torch.manual_seed(0)
    net.body.load_state_dict(arrays.to_torch_state_dict())
    _, testloader = load_data(999, 1000, rows=200)
    loss, acc = test_fn(net, testloader)
    torch.save(net.state_dict(), f"checkpoint-round-{server_round}.pt")
    return MetricRecord({"central_loss": loss, "central_acc": acc})


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    random.seed(int(cfg["seed"]))
    torch.manual_seed(int(cfg["seed"]))
    # wait for every node before round 1: FedAvg sizes its sample from the nodes
    # connected when it starts (Flower's simulated nodes register while it starts)
    while len(list(grid.get_node_ids())) < int(context.run_config["min-nodes"]):
        time.sleep(1.0)
    strategy = CustomFedAvg(
        fraction_train=cfg["fraction-train"],
        fraction_evaluate=cfg["fraction-evaluate"],
        min_available_nodes=cfg["min-nodes"],
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(Net().body.state_dict()),
        train_config=ConfigRecord({"lr": cfg["lr"]}),
        num_rounds=cfg["num-server-rounds"],
        evaluate_fn=central_evaluate,
    )
    digest = hashlib.sha256(b"".join(a.tobytes() for a in result.arrays.to_numpy_ndarrays()))
    summary = {
        "train": {str(r): dict(m) for r, m in result.train_metrics_clientapp.items()},
        "central": {str(r): dict(m) for r, m in result.evaluate_metrics_serverapp.items()},
        "model_sha256": digest.hexdigest()[:16],
    }
    log(INFO, "RESULT %s", json.dumps(summary))
