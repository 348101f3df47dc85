"""opacusexample: each client trains with Opacus DP-SGD and reports the epsilon spent."""

import warnings

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

app = ClientApp()


class Net(nn.Module):
    """A small MLP on 28x28 grey images (MNIST-shaped), 10 classes."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(28 * 28, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def load_data(pid: int, parts: int) -> DataLoader:
    rng = np.random.default_rng([3, pid, parts])
    y = rng.integers(0, 10, size=64)
    x = rng.normal(0.0, 1.0, size=(64, 1, 28, 28)).astype(np.float32) + y[:, None, None, None] / 10
    return DataLoader(
        TensorDataset(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y)), batch_size=16
    )


@app.train()
def train(msg: Message, context: Context):
    cfg = context.run_config
    pid = int(context.node_config["partition-id"])
    torch.manual_seed(
        int(cfg["seed"]) * 1000 + pid * 10 + int(msg.content["config"]["server-round"])
    )
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    engine = PrivacyEngine(secure_mode=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, optimizer, loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=load_data(pid, int(context.node_config["num-partitions"])),
            noise_multiplier=cfg["noise-multiplier"],
            max_grad_norm=cfg["max-grad-norm"],
        )
        total = 0.0
        for x, y in loader:
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            total += float(loss)
        epsilon = engine.get_epsilon(delta=cfg["target-delta"])
    state = {k.removeprefix("_module."): v for k, v in model.state_dict().items()}
    metrics = MetricRecord({"train_loss": total, "epsilon": float(epsilon), "num-examples": 64})
    return Message(RecordDict({"arrays": ArrayRecord(state), "metrics": metrics}), reply_to=msg)
