"""modsexample: a ClientApp wrapped in the user's own mods (a timer and a metrics log)."""

import time
from logging import INFO
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.logger import log


def timing_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Times each call and keeps the total in the node's Context state."""
    started = time.perf_counter()
    reply = call_next(msg, context)
    spent = time.perf_counter() - started
    total = context.state["timing"]["seconds"] if "timing" in context.state else 0.0
    context.state["timing"] = MetricRecord({"seconds": total + spent})
    return reply


def metrics_log_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Writes each train reply's metrics to this node's log (a tensorboard-like file)."""
    reply = call_next(msg, context)
    if msg.metadata.message_type == "train" and reply.has_content():
        metrics = dict(reply.content["metrics"])
        with Path(f"mods-node-{context.node_config['partition-id']}.log").open("a") as fh:
            fh.write(f"{msg.metadata.group_id} {metrics}\n")
        log(
            INFO,
            "metrics_log_mod: node %s round %s: %s",
            context.node_config["partition-id"],
            msg.metadata.group_id,
            metrics,
        )
    return reply


app = ClientApp(mods=[timing_mod, metrics_log_mod])


@app.train()
def train(msg: Message, context: Context):
    pid = int(context.node_config["partition-id"])
    rnd = int(msg.content["config"]["server-round"])
    rng = np.random.default_rng([int(context.run_config["seed"]), pid, rnd])
    arrays = [
        a * 0.9 + rng.normal(0.0, 0.1, size=a.shape)
        for a in msg.content["arrays"].to_numpy_ndarrays()
    ]
    metrics = MetricRecord({"train_loss": float(np.mean(arrays[0] ** 2)), "num-examples": 20})
    return Message(RecordDict({"arrays": ArrayRecord(arrays), "metrics": metrics}), reply_to=msg)
