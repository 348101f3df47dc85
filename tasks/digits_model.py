"""The ``digits-cnn`` task's model (tasks/digits.py names it)."""

from __future__ import annotations

from torch import nn


class DigitsCNN(nn.Module):
    """Two 3x3 convolutions, one max-pool, two linear layers (~38k parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.classifier(self.features(x))
