"""advancedexample: a small model on Fashion-MNIST-shaped data, train/test."""

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Net(nn.Module):
    """Body (shared by FedAvg) and a classification head (kept by each client)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 32), nn.ReLU())
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.body(x))


def load_data(pid: int, parts: int, rows: int = 64) -> tuple[DataLoader, DataLoader]:
    rng = np.random.default_rng([17, pid, parts])
    y = rng.integers(0, 10, size=rows)
    x = rng.normal(0.0, 1.0, size=(rows, 1, 28, 28)).astype(np.float32) + (
        y[:, None, None, None] / 10
    ).astype(np.float32)
    data = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    cut = int(0.8 * rows)
    train = torch.utils.data.Subset(data, range(cut))
    test = torch.utils.data.Subset(data, range(cut, rows))
    return DataLoader(train, batch_size=16, shuffle=True), DataLoader(test, batch_size=32)


def train(net, loader, lr):
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    net.train()
    total = 0.0
    for x, y in loader:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        optimizer.step()
        total += loss.item()
    return total / len(loader)


def test(net, loader):
    net.eval()
    loss, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for x, y in loader:
            out = net(x)
            loss += float(nn.functional.cross_entropy(out, y, reduction="sum"))
            correct += int((out.argmax(1) == y).sum())
            count += len(y)
    return loss / count, correct / count
