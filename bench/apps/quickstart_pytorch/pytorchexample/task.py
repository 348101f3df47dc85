"""pytorchexample: the example's CNN, offline CIFAR-10-shaped partitions, train/test."""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

CLASSES = 10


class Net(nn.Module):
    """The example's model (LeNet-style CNN for 32x32 RGB images)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(-1, 16 * 5 * 5)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


_cache: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor]] = {}


def _partition(partition_id: int, num_partitions: int, images: int):
    """This partition's images and labels: normalised 3x32x32 tensors whose class shifts
    the mean of one colour channel, so the CNN has something to learn."""
    key = (partition_id, num_partitions, images)
    if key not in _cache:
        size = len(np.array_split(np.arange(images), num_partitions)[partition_id])
        rng = np.random.default_rng([7, partition_id])
        labels = rng.integers(0, CLASSES, size=size)
        images = rng.normal(0.0, 1.0, size=(size, 3, 32, 32)).astype(np.float32)
        images[np.arange(size), labels % 3] += (labels[:, None, None] / CLASSES).astype(np.float32)
        _cache[key] = (torch.from_numpy(images), torch.from_numpy(labels))
    return _cache[key]


def load_data(partition_id: int, num_partitions: int, batch_size: int, images: int = 50_000):
    """Train/test loaders of this partition (80/20) of ``images`` (CIFAR-10's training
    split: 50,000), as the example builds them."""
    images, labels = _partition(partition_id, num_partitions, images)
    cut = int(0.8 * len(labels))
    train = TensorDataset(images[:cut], labels[:cut])
    test = TensorDataset(images[cut:], labels[cut:])
    return DataLoader(train, batch_size=batch_size, shuffle=True), DataLoader(
        test, batch_size=batch_size
    )


def train(net, trainloader, epochs, lr, device):
    """Train the model on the training set."""
    net.to(device)
    criterion = torch.nn.CrossEntropyLoss().to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    net.train()
    running_loss = 0.0
    for _ in range(epochs):
        for images, labels in trainloader:
            optimizer.zero_grad()
            loss = criterion(net(images.to(device)), labels.to(device))
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
        for images, labels in testloader:
            outputs = net(images.to(device))
            loss += criterion(outputs, labels.to(device)).item()
            correct += (torch.max(outputs.data, 1)[1] == labels.to(device)).sum().item()
    return loss / len(testloader), correct / len(testloader.dataset)
