"""Models of the Hugging Face dataset tasks (tasks/hf_data.py names them).

- FEMNIST: LEAF's CNN (Caldas et al. 2018): two 5x5 convolutions (32, 64 channels), each
  followed by a 2x2 max-pool, a 2048-unit dense layer and 62 outputs.
- Shakespeare: LEAF's next-character model: an 8-dimensional embedding of the 80-letter
  vocabulary, a 2-layer LSTM of 256 units, 80 outputs from the last step.
- CIFAR-10: a small CNN (two 5x5 convolutions, 32 and 64 channels, max-pools, 512 units).
- Any other dataset: a small CNN for images, an MLP for tables.

No BatchNorm or dropout (the task contract: DP-SGD and batched training).
"""

from __future__ import annotations

import torch
from torch import nn


class LeafFemnistCNN(nn.Module):
    """LEAF's FEMNIST CNN on (1, 28, 28) inputs, 62 classes (~6.6M parameters)."""

    def __init__(self, num_classes: int = 62) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 7 * 7, 2048), nn.ReLU(), nn.Linear(2048, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class SmallCNN(nn.Module):
    """Two 5x5 convolutions (32, 64 channels) with 2x2 max-pools, a 512-unit dense layer.
    CIFAR-10's model; also any image dataset's (``input_shape`` = (C, H, W))."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        flat = 64 * (height // 4) * (width // 4)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, 512), nn.ReLU(), nn.Linear(512, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class LeafCharLSTM(nn.Module):
    """LEAF's Shakespeare model: inputs are letter ids (stored as float32, the task
    contract's dtype), shaped (n, sequence length); logits of the next letter."""

    def __init__(self, vocab_size: int = 80, embedding: int = 8, hidden: int = 256) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding)
        self.lstm = nn.LSTM(embedding, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embedding(x.long()))
        return self.head(out[:, -1, :])


class TabularMLP(nn.Module):
    """One hidden layer of 64 units, for a table of ``num_features`` numeric columns."""

    def __init__(self, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(num_features, 64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
