"""quickstart-app: a small PyTorch model, a synthetic dataset and train/test loops."""

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Net(nn.Module):
    """A small MLP on 16 features, 4 classes."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def load_data(partition_id: int, num_partitions: int, batch_size: int):
    """This client's share of a fixed synthetic dataset (80/20 train/test split)."""
    rng = np.random.default_rng(42)
    centers = rng.normal(0.0, 0.4, size=(4, 16))
    y = rng.integers(0, 4, size=2000)
    x = (centers[y] + rng.normal(0.0, 1.0, size=(2000, 16))).astype(np.float32)
    part = np.array_split(np.arange(2000), num_partitions)[partition_id]
    cut = int(0.8 * len(part))
    train = TensorDataset(torch.from_numpy(x[part[:cut]]), torch.from_numpy(y[part[:cut]]))
    test = TensorDataset(torch.from_numpy(x[part[cut:]]), torch.from_numpy(y[part[cut:]]))
    return DataLoader(train, batch_size=batch_size, shuffle=True), DataLoader(test, batch_size=64)


def train(net, trainloader, epochs, lr, device):
    """Train the model on the training set."""
    net.to(device)
    criterion = torch.nn.CrossEntropyLoss().to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    net.train()
    running_loss = 0.0
    for _ in range(epochs):
        for features, labels in trainloader:
            optimizer.zero_grad()
            loss = criterion(net(features.to(device)), labels.to(device))
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
    return running_loss / (epochs * len(trainloader))


def test(net, testloader, device):
    """Validate the model on the test set."""
    net.to(device)
    criterion = torch.nn.CrossEntropyLoss()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for features, labels in testloader:
            outputs = net(features.to(device))
            loss += criterion(outputs, labels.to(device)).item()
            correct += (torch.max(outputs.data, 1)[1] == labels.to(device)).sum().item()
    accuracy = correct / len(testloader.dataset)
    return loss / len(testloader), accuracy
