"""Batched DP-SGD (simulation/batched_dp.py) against Opacus's PrivacyEngine (oracle),
its clipping bound (property) and its noise (statistics)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from edge_client.dp_training import train_dp_local
from simulation.batched_dp import DPTrainJob, train_dp_batched
from tasks import get_task


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _clients(task: str, sizes: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    data = get_task(task).load_data(0)
    out, start = [], 0
    for n in sizes:
        out.append((data.x_train[start : start + n], data.y_train[start : start + n]))
        start += n
    return out


def _job(model: nn.Module, x, y, c: int, **kw) -> DPTrainJob:  # type: ignore[no-untyped-def]
    args = {
        "epochs": 2,
        "batch_size": 8,
        "learning_rate": 0.1,
        "noise_multiplier": 0.7,
        "max_grad_norm": 0.5,
        "proximal_mu": 0.0,
        "momentum": 0.0,
    }
    args.update(kw)
    return DPTrainJob(
        model=model,
        x=x,
        y=y,
        sample_generator=_gen(100 + c),
        noise_generator=_gen(200 + c),
        **args,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("task", "kw"),
    [
        ("digits-cnn", {}),
        ("digits-cnn", {"momentum": 0.9, "proximal_mu": 0.5, "batch_size": 16}),
        ("breast-cancer-mlp", {"noise_multiplier": 0.0}),
        ("synthetic-logreg", {"batch_size": 4, "epochs": 1}),
    ],
)
def test_each_client_equals_opacus_with_the_same_generators(task: str, kw: dict) -> None:
    # Prepare: clients of different sizes (so different rates, steps, empty batches)
    spec = get_task(task)
    torch.manual_seed(0)
    base = spec.build_model()
    clients = _clients(task, [37, 20, 5])
    batched = [copy.deepcopy(base) for _ in clients]
    jobs = [
        _job(m, x, y, c, **kw) for c, (m, (x, y)) in enumerate(zip(batched, clients, strict=False))
    ]
    # Execute
    results = train_dp_batched(jobs)
    # Assert: each client equals Opacus (hooks mode) fed the same two generators
    for c, (x, y) in enumerate(clients):
        reference = copy.deepcopy(base)
        job = _job(reference, x, y, c, **kw)
        expected = train_dp_local(
            reference,
            x,
            y,
            epochs=job.epochs,
            batch_size=job.batch_size,
            learning_rate=job.learning_rate,
            noise_multiplier=job.noise_multiplier or 1e-30,
            max_grad_norm=job.max_grad_norm,
            grad_sample_mode="hooks",
            proximal_mu=job.proximal_mu,
            momentum=job.momentum,
            sample_generator=job.sample_generator,
            noise_generator=job.noise_generator,
        )
        for (name, got), want in zip(
            batched[c].named_parameters(), reference.parameters(), strict=False
        ):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=name)
        assert results[c].steps == expected.steps
        assert results[c].sample_rate == expected.sample_rate
        assert math.isclose(results[c].loss, expected.loss, rel_tol=1e-4) or (
            math.isnan(results[c].loss) and math.isnan(expected.loss)
        )
        assert any(
            not torch.equal(p, q)
            for p, q in zip(batched[c].parameters(), base.parameters(), strict=False)
        )
