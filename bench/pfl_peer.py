"""The pfl-research side of ``bench/vs_pfl.py``: run by the pfl venv's own python.

Reads the clients' data that the fedfleet side exported (``--data`` .npz: x_train,
y_train, x_test, y_test, and the fedfleet split as ``order``/``offsets``, each client's
training rows exactly as fedfleet's clients train on them), trains the same digits CNN
with pfl 0.6's FederatedAveraging on its SimulatedBackend (local SGD with momentum,
central SGD lr 1 = FedAvg, updates weighted by datapoints), ends each timed round with
the central evaluation fedfleet's rounds end with, and prints one JSON line:
seconds per central iteration (wall and process CPU), peak RSS, final test accuracy. Imports nothing of
fedfleet's (its venv has only pfl and torch).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np
import torch
from torch import nn


class DigitsCNN(nn.Module):
    """fedfleet's digits-cnn (tasks/digits_model.py), with pfl's loss/metrics methods."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(512, 64), nn.ReLU(), nn.Linear(64, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def loss(self, x: torch.Tensor, y: torch.Tensor, eval: bool = False) -> torch.Tensor:
        self.eval() if eval else self.train()
        return nn.functional.cross_entropy(self(x), y)

    def metrics(self, x: torch.Tensor, y: torch.Tensor, eval: bool = False) -> dict:
        from pfl.metrics import Weighted

        self.eval() if eval else self.train()
        with torch.no_grad():
            logits = self(x)
        loss = nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct = (logits.argmax(1) == y).sum().item()
        return {"loss": Weighted(loss, len(y)), "accuracy": Weighted(correct, len(y))}


class SmallCNN(DigitsCNN):
    """fedfleet's CIFAR-10 model (tasks/hf_models.py SmallCNN((3, 32, 32), 10))."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 8 * 8, 512), nn.ReLU(), nn.Linear(512, 10)
        )


def central_evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """fedfleet's ``tasks.evaluate``: loss and accuracy on ``(x, y)`` in batches of 1,024."""
    model.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(x), 1024):
            logits = model(x[i : i + 1024])
            loss += float(nn.functional.cross_entropy(logits, y[i : i + 1024], reduction="sum"))
            correct += int((logits.argmax(1) == y[i : i + 1024]).sum())
    return loss / max(1, len(x)), correct / max(1, len(x))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--per-round", type=int, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", choices=["digits", "cifar"], default="digits")
    args = parser.parse_args()
    started = time.perf_counter()
    from pfl.aggregate.simulate import SimulatedBackend
    from pfl.aggregate.weighting import WeightByDatapoints
    from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
    from pfl.callback.base import TrainingProcessCallback
    from pfl.data.dataset import Dataset
    from pfl.data.federated_dataset import FederatedDataset
    from pfl.data.sampling import get_user_sampler
    from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
    from pfl.model.pytorch import PyTorchModel

    torch.set_num_threads(1)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    data = np.load(args.data)
    x, y = torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"]).long()
    order, offsets = data["order"], data["offsets"]
    clients = len(offsets) - 1

    def make_user(uid: int) -> Dataset:
        rows = torch.from_numpy(order[offsets[uid] : offsets[uid + 1]])
        return Dataset((x[rows], y[rows]), user_id=str(uid))

    train = FederatedDataset(make_user, get_user_sampler("random", list(range(clients))))
    val = FederatedDataset(make_user, get_user_sampler("random", list(range(clients))))
    model = SmallCNN() if args.model == "cifar" else DigitsCNN()
    pfl_model = PyTorchModel(
        model=model,
        local_optimizer_create=lambda params, lr: torch.optim.SGD(
            params, lr=lr, momentum=args.momentum
        ),
        central_optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
    )
    marks: list[float] = []
    cpu_marks: list[float] = []  # process CPU seconds: robust to a loaded machine
    x_test = torch.from_numpy(data["x_test"])
    y_test = torch.from_numpy(data["y_test"]).long()

    class Clock(TrainingProcessCallback):
        """Ends each timed round with the work fedfleet's round ends with: the new
        global model evaluated on the test split (``tasks.evaluate``: eval mode,
        batches of 1,024, summed cross-entropy and accuracy)."""

        def after_central_iteration(self, aggregate_metrics, model, *, central_iteration):  # type: ignore[no-untyped-def]
            central_evaluate(pfl_model.pytorch_model, x_test, y_test)
            marks.append(time.perf_counter())
            cpu_marks.append(time.process_time())
            return False, aggregate_metrics.__class__()

    backend = SimulatedBackend(
        training_data=train, val_data=val, postprocessors=[WeightByDatapoints()]
    )
    params = NNAlgorithmParams(
        central_num_iterations=args.rounds,
        evaluation_frequency=10**9,
        train_cohort_size=args.per_round,
        val_cohort_size=0,
    )
    train_params = NNTrainHyperParams(
        local_learning_rate=args.lr,
        local_num_epochs=args.epochs,
        local_batch_size=args.batch_size,
    )
    ready, ready_cpu = time.perf_counter(), time.process_time()
    FederatedAveraging().run(
        algorithm_params=params,
        backend=backend,
        model=pfl_model,
        model_train_params=train_params,
        model_eval_params=NNEvalHyperParams(local_batch_size=256),
        callbacks=[Clock()],
        send_metrics_to_platform=False,
    )
    with torch.no_grad():
        logits = model(torch.from_numpy(data["x_test"]))
    accuracy = float((logits.argmax(1).numpy() == data["y_test"]).mean())
    rounds = np.diff([ready, *marks]).tolist()
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    json.dump(
        {
            "startup_s": ready - started,
            "rounds_s": rounds,
            "rounds_cpu_s": np.diff([ready_cpu, *cpu_marks]).tolist(),
            "peak_mib": peak_mib,
            "accuracy": accuracy,
        },
        sys.stdout,
    )
    print()


if __name__ == "__main__":
    main()
