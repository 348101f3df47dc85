"""Local training and evaluation shared by clients, sites and the simulator.

Minibatch SGD (with optional heavy-ball momentum) in a seeded batch order, so that the
simulator's batched trainer can reproduce a client's training exactly. An optional FedProx proximal term
(Li et al. 2020) pulls the weights towards the round's global model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class TrainResult:
    """What a local training produced: examples seen once, mean loss of the last epoch."""

    num_examples: int
    loss: float
    steps: int


def reported_loss(num_examples: int, loss: float) -> float:
    """The training loss a client reports beside its example count: ``loss``, or 0.0
    when it trained on no examples (its mean loss is undefined, and a NaN would turn
    the server's example-weighted mean into NaN; with weight 0 it counts for nothing)."""
    return loss if num_examples > 0 else 0.0


@dataclass(frozen=True)
class EvalResult:
    """Mean cross-entropy loss and accuracy over the evaluated samples."""

    num_examples: int
    loss: float
    accuracy: float


def batch_order(n: int, *, batch_size: int, epochs: int, seed: int) -> list[np.ndarray]:
    """The minibatches (index arrays) a client visits: a fresh permutation per epoch."""
    rng = np.random.default_rng(seed)
    batches: list[np.ndarray] = []
    for _ in range(epochs):
        perm = rng.permutation(n)
        batches.extend(perm[i : i + batch_size] for i in range(0, n, batch_size))
    return batches


# A simulator may run many clients' ``train_local`` calls as one batched computation
# with the same arithmetic (simulation/batched.py). It installs a replacement for the
# current execution context only; everywhere else ``train_local`` runs as written.
TrainLocalFn = Callable[..., TrainResult]
_TRAIN_LOCAL_OVERRIDE: ContextVar[TrainLocalFn | None] = ContextVar(
    "fedfleet_train_local_override", default=None
)


@contextmanager
def train_local_override(fn: TrainLocalFn) -> Iterator[None]:
    """Route ``train_local`` calls made in this context to ``fn`` (same signature)."""
    token = _TRAIN_LOCAL_OVERRIDE.set(fn)
    try:
        yield
    finally:
        _TRAIN_LOCAL_OVERRIDE.reset(token)


def train_local(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    proximal_mu: float = 0.0,
    momentum: float = 0.0,
) -> TrainResult:
    """Train ``model`` in place with SGD on ``(x, y)``; returns examples and mean loss.

    ``momentum`` is ``torch.optim.SGD``'s (no dampening); its buffer starts at zero on
    every call, so a client carries no optimizer state from one round to the next."""
    override = _TRAIN_LOCAL_OVERRIDE.get()
    if override is not None:
        return override(
            model,
            x,
            y,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            seed=seed,
            proximal_mu=proximal_mu,
            momentum=momentum,
        )
    n = len(x)
    if n == 0:
        return TrainResult(num_examples=0, loss=float("nan"), steps=0)
    xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)
    global_params = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else None
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=momentum)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    batches = batch_order(n, batch_size=batch_size, epochs=epochs, seed=seed)
    per_epoch = -(-n // batch_size)
    last_epoch_loss, steps = 0.0, 0
    for step, idx in enumerate(batches):
        ti = torch.from_numpy(idx)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(xt[ti]), yt[ti])
        if global_params is not None:
            prox = sum(
                ((p - g) ** 2).sum() for p, g in zip(model.parameters(), global_params, strict=True)
            )
            loss = loss + 0.5 * proximal_mu * prox
        loss.backward()
        optimizer.step()
        steps += 1
        if step >= len(batches) - per_epoch:
            last_epoch_loss += float(loss.detach()) * len(idx)
    return TrainResult(num_examples=n, loss=last_epoch_loss / n, steps=steps)


@torch.no_grad()
def evaluate(
    model: nn.Module, x: np.ndarray, y: np.ndarray, *, batch_size: int = 1024
) -> EvalResult:
    """Loss and accuracy of ``model`` on ``(x, y)``."""
    n = len(x)
    if n == 0:
        return EvalResult(num_examples=0, loss=float("nan"), accuracy=float("nan"))
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    total_loss, correct = 0.0, 0
    for i in range(0, n, batch_size):
        xb = torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size]))
        yb = torch.from_numpy(y[i : i + batch_size])
        logits = model(xb)
        total_loss += float(loss_fn(logits, yb))
        correct += int((logits.argmax(dim=1) == yb).sum())
    return EvalResult(num_examples=n, loss=total_loss / n, accuracy=correct / n)
