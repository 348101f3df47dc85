"""pandasexample: a query ClientApp returning histograms of its pandas columns."""

import numpy as np
import pandas as pd
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()
BINS = np.linspace(0.0, 10.0, 11)


def load_frame(pid: int, parts: int) -> pd.DataFrame:
    """This client's share of 150 iris-shaped rows."""
    rng = np.random.default_rng([5, pid, parts])
    rows = max(150 // parts, 5)
    return pd.DataFrame(
        {
            "SepalLengthCm": rng.normal(5.8, 0.8, rows),
            "SepalWidthCm": rng.normal(3.0, 0.4, rows),
            "Species": rng.choice(["setosa", "versicolor", "virginica"], rows),
        }
    )


@app.query()
def query(msg: Message, context: Context):
    frame = load_frame(context.node_config["partition-id"], context.node_config["num-partitions"])
    metrics = {}
    for feature in str(msg.content["config"]["feature-names"]).split(","):
        counts, _ = np.histogram(frame[feature], bins=BINS)
        metrics[feature] = [int(c) for c in counts]
    return Message(RecordDict({"query_results": MetricRecord(metrics)}), reply_to=msg)
