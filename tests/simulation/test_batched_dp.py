"""Batched DP-SGD (simulation/batched_dp.py) against Opacus's PrivacyEngine (oracle),
its clipping bound (property) and its noise (statistics)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from edge_client.dp_training import expected_batch_size, train_dp_local
from privacy.dp.fused import layer_terms
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


def test_a_cohort_trains_its_dp_calls_in_one_batch_with_opacus_semantics() -> None:
    # Prepare: three clients calling the site's own train_dp_local inside a cohort
    from simulation.cohort import CohortStats, run_cohort

    spec = get_task("digits-cnn")
    torch.manual_seed(0)
    base = spec.build_model()
    clients = _clients("digits-cnn", [30, 24, 12])
    models = [copy.deepcopy(base) for _ in clients]

    def call(c: int):  # type: ignore[no-untyped-def]
        x, y = clients[c]
        return train_dp_local(
            models[c], x, y, epochs=1, batch_size=8, learning_rate=0.1,
            noise_multiplier=0.5, max_grad_norm=1.0,
            sample_generator=_gen(c), noise_generator=_gen(50 + c),
        )  # fmt: skip

    stats = CohortStats()
    # Execute
    results = run_cohort([lambda c=c: call(c) for c in range(3)], stats=stats)
    # Assert: one batched call, and each client equals Opacus with the same generators
    assert (stats.jobs, stats.batches) == (3, 1)
    for c, (x, y) in enumerate(clients):
        reference = copy.deepcopy(base)
        expected = train_dp_local(
            reference, x, y, epochs=1, batch_size=8, learning_rate=0.1,
            noise_multiplier=0.5, max_grad_norm=1.0, grad_sample_mode="hooks",
            sample_generator=_gen(c), noise_generator=_gen(50 + c),
        )  # fmt: skip
        assert results[c].steps == expected.steps
        for got, want in zip(models[c].parameters(), reference.parameters(), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(
    clip=st.floats(0.01, 10.0),
    scale=st.floats(0.01, 100.0),
    seed=st.integers(0, 2**16),
)
def test_clipped_per_sample_gradients_never_exceed_the_bound(
    clip: float, scale: float, seed: int
) -> None:
    # Prepare: a linear and a conv layer's per-sample terms from random inputs/grads
    gen = _gen(seed)
    linear, conv = nn.Linear(6, 3), nn.Conv2d(2, 4, 3, padding=1)
    a_lin = torch.randn(2, 5, 6, generator=gen) * scale
    g_lin = torch.randn(2, 5, 3, generator=gen)
    a_conv = torch.randn(2, 5, 2, 4, 4, generator=gen) * scale
    g_conv = torch.randn(2, 5, 4, 4, 4, generator=gen)
    # Execute
    terms = [layer_terms(linear, a_lin, g_lin), layer_terms(conv, a_conv, g_conv)]
    sq = terms[0].sq_norms + terms[1].sq_norms
    weights = (clip / (sq.sqrt() + 1e-6)).clamp(max=1.0)
    # Assert: each sample's clipped gradient (formed explicitly) has norm ≤ clip, and
    # the ghost norm of the linear layer equals the explicit per-sample gradient's
    explicit_lin = torch.einsum("cbo,cbi->cboi", g_lin, a_lin)
    lin_sq = explicit_lin.square().sum((2, 3)) + g_lin.square().sum(-1)
    torch.testing.assert_close(terms[0].sq_norms, lin_sq, rtol=1e-4, atol=1e-6)
    conv_grad = terms[1].inputs  # [C, B, Cout, K] per-sample weight gradients
    total = (
        weights.square()
        * (lin_sq + conv_grad.square().sum((2, 3)) + terms[1].bias.square().sum(-1))
    ).sqrt()  # type: ignore[union-attr]
    assert bool((total <= clip * (1 + 1e-4)).all())


def test_noise_has_std_sigma_times_clip_over_expected_batch_size() -> None:
    # Prepare: a learning signal far below the noise (clip 1e-3, σ = 1000)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(50, 40))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    x = np.zeros((64, 50), dtype=np.float32)
    y = np.zeros(64, dtype=np.int64)
    before = [p.detach().clone() for p in model.parameters()]
    job = DPTrainJob(
        model=model, x=x, y=y, epochs=1, batch_size=64, learning_rate=1.0,
        noise_multiplier=1000.0, max_grad_norm=1e-3,
        sample_generator=_gen(1), noise_generator=_gen(2),
    )  # fmt: skip
    # Execute: one step (n = B: q = 1, one step, expected batch size 64)
    train_dp_batched([job])
    # Assert: the step is -lr · N(0, (σC)²)/64 with σC = 1 (the clipped signal ≤ 1e-3), to
    # 5% on 2,040 draws
    delta = torch.cat(
        [(b - p.detach()).flatten() for p, b in zip(model.parameters(), before, strict=True)]
    )
    expected = 1000.0 * 1e-3 / expected_batch_size(64, 64)
    assert abs(float(delta.std()) / expected - 1) < 0.05
    assert abs(float(delta.mean())) < 5 * expected / math.sqrt(delta.numel())


def test_a_model_that_reuses_a_layer_is_trained_by_opacus_not_batched() -> None:
    # Prepare: Linear layers only, but one called twice (its taps would be overwritten)
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Linear(30, 30)
            self.out = nn.Linear(30, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(torch.relu(self.inner(torch.relu(self.inner(x)))))

    ((x, y),) = _clients("breast-cancer-mlp", [24])
    torch.manual_seed(0)
    model = Twice()
    reference = copy.deepcopy(model)
    # Execute
    (result,) = train_dp_batched([_job(model, x, y, 0, grad_sample_mode="hooks")])
    job = _job(reference, x, y, 0)
    train_dp_local(
        reference, x, y, epochs=job.epochs, batch_size=job.batch_size,
        learning_rate=job.learning_rate, noise_multiplier=job.noise_multiplier,
        max_grad_norm=job.max_grad_norm, grad_sample_mode="hooks",
        sample_generator=job.sample_generator, noise_generator=job.noise_generator,
    )  # fmt: skip
    # Assert: exactly Opacus's result
    assert result.steps == 2 * 3
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b)
