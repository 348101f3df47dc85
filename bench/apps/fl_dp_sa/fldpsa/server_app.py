"""fldpsa: SecAgg+ with client-side DP fixed clipping on Flower's legacy workflow."""

import json
import random
from logging import INFO

import numpy as np
from flwr.common import Context, ndarrays_to_parameters
from flwr.common.logger import log
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

app = ServerApp()


def weighted_loss(metrics):
    total = sum(n for n, _ in metrics)
    return {"train_loss": sum(n * m["train_loss"] for n, m in metrics) / max(total, 1)}


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    random.seed(int(cfg["seed"]))
    np.random.seed(int(cfg["seed"]))  # the DP noise is drawn from numpy's global generator
    fedavg = FedAvg(
        fraction_fit=cfg["fraction-fit"],
        fraction_evaluate=0.0,
        min_fit_clients=2,
        min_available_clients=cfg["min-nodes"],
        initial_parameters=ndarrays_to_parameters([np.zeros((4, 3), dtype=np.float32)]),
        fit_metrics_aggregation_fn=weighted_loss,
    )
    strategy = DifferentialPrivacyClientSideFixedClipping(
        fedavg,
        noise_multiplier=cfg["noise-multiplier"],
        clipping_norm=cfg["clipping-norm"],
        num_sampled_clients=cfg["min-nodes"],
    )
    legacy = LegacyContext(
        context=context, config=ServerConfig(num_rounds=cfg["num-server-rounds"]), strategy=strategy
    )
    workflow = DefaultWorkflow(
        fit_workflow=SecAggPlusWorkflow(
            num_shares=cfg["num-shares"], reconstruction_threshold=cfg["reconstruction-threshold"]
        )
    )
    workflow(grid, legacy)
    fit = {str(r): v for r, v in legacy.history.metrics_distributed_fit.get("train_loss", [])}
    log(INFO, "RESULT %s", json.dumps({"train_loss": fit}))
