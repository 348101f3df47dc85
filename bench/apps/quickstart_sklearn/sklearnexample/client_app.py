"""sklearnexample: a scikit-learn LogisticRegression ClientApp (iris-shaped data)."""

import warnings

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

app = ClientApp()
CLASSES, FEATURES = 3, 4


def load_data(pid: int, parts: int):
    """This client's share of 150 iris-shaped rows (4 features, 3 classes), 80/20."""
    rng = np.random.default_rng([11, pid, parts])
    y = rng.integers(0, CLASSES, size=max(150 // parts, 6))
    x = rng.normal(0.0, 1.0, size=(len(y), FEATURES)) + y[:, None]
    cut = int(0.8 * len(y))
    return x[:cut], y[:cut], x[cut:], y[cut:]


def model_with(arrays, penalty: str) -> LogisticRegression:
    model = LogisticRegression(penalty=penalty, max_iter=1, warm_start=True)
    model.classes_ = np.arange(CLASSES)
    model.coef_, model.intercept_ = arrays
    return model


@app.train()
def train(msg: Message, context: Context):
    x, y, _, _ = load_data(
        context.node_config["partition-id"], context.node_config["num-partitions"]
    )
    model = model_with(msg.content["arrays"].to_numpy_ndarrays(), context.run_config["penalty"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_iter=1: ConvergenceWarning, as in the example
        model.fit(x, y)
    loss = log_loss(y, model.predict_proba(x), labels=list(range(CLASSES)))
    arrays = ArrayRecord([model.coef_, model.intercept_])
    metrics = MetricRecord({"train_logloss": float(loss), "num-examples": len(y)})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context):
    _, _, x, y = load_data(
        context.node_config["partition-id"], context.node_config["num-partitions"]
    )
    model = model_with(msg.content["arrays"].to_numpy_ndarrays(), context.run_config["penalty"])
    loss = log_loss(y, model.predict_proba(x), labels=list(range(CLASSES)))
    metrics = {
        "test_logloss": float(loss),
        "accuracy": float(model.score(x, y)),
        "num-examples": len(y),
    }
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
