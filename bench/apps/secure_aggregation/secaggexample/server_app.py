"""secaggexample: SecAgg+ on Flower's legacy workflow, with a timeout per stage."""

import json
import random
from logging import INFO

import numpy as np
from flwr.common import Context, ndarrays_to_parameters
from flwr.common.logger import log
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    random.seed(int(cfg["seed"]))
    strategy = FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=2,
        min_available_clients=cfg["min-nodes"],
        initial_parameters=ndarrays_to_parameters([np.zeros(5, dtype=np.float32)]),
        fit_metrics_aggregation_fn=lambda metrics: {"clients": len(metrics)},
    )
    legacy = LegacyContext(
        context=context, config=ServerConfig(num_rounds=cfg["num-server-rounds"]), strategy=strategy
    )
    workflow = DefaultWorkflow(
        fit_workflow=SecAggPlusWorkflow(
            num_shares=cfg["num-shares"],
            reconstruction_threshold=cfg["reconstruction-threshold"],
            timeout=cfg["timeout"],
        )
    )
    workflow(grid, legacy)
    fit = {str(r): v for r, v in legacy.history.metrics_distributed_fit.get("clients", [])}
    log(INFO, "RESULT %s", json.dumps({"clients_aggregated": fit}))
