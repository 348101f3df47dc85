"""pandasexample: federated analytics with query messages, no strategy."""

import json
import random
import time
from logging import INFO

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    random.seed(int(cfg["seed"]))
    features = str(cfg["feature-names"])
    totals: dict[str, dict[str, list[int]]] = {}
    for server_round in range(1, int(cfg["num-server-rounds"]) + 1):
        while len(nodes := sorted(grid.get_node_ids())) < int(cfg["min-nodes"]):
            time.sleep(1.0)  # wait for the nodes to connect
        content = RecordDict({"config": ConfigRecord({"feature-names": features})})
        messages = [
            Message(
                content=content, message_type="query", dst_node_id=n, group_id=str(server_round)
            )
            for n in nodes
        ]
        replies = grid.send_and_receive(messages)
        aggregated: dict[str, np.ndarray] = {}
        for reply in replies:
            if reply.has_error():
                continue
            for feature, counts in reply.content["query_results"].items():
                aggregated[feature] = aggregated.get(feature, 0) + np.asarray(counts)
        totals[str(server_round)] = {k: [int(c) for c in v] for k, v in aggregated.items()}
        log(INFO, "Aggregated histogram: %s", totals[str(server_round)])
    log(INFO, "RESULT %s", json.dumps({"histograms": totals}))
