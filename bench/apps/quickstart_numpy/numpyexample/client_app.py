"""numpyexample: a ClientApp that 'trains' NumPy arrays (a seeded random step)."""

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context):
    pid = int(context.node_config["partition-id"])
    rnd = int(msg.content["config"]["server-round"])
    rng = np.random.default_rng([int(context.run_config["seed"]), pid, rnd])
    arrays = [
        a + rng.normal(0.0, 0.1, size=a.shape) for a in msg.content["arrays"].to_numpy_ndarrays()
    ]
    metrics = MetricRecord({"train_loss": float(rng.random()), "num-examples": 10 + pid})
    return Message(RecordDict({"arrays": ArrayRecord(arrays), "metrics": metrics}), reply_to=msg)
