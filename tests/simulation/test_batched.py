"""Batched local training equals ``tasks.train_local`` run one client at a time.

Oracle tests: the reference is the real ``train_local`` on a copy of the same model,
with the same data, seeds and hyper-parameters.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from simulation.batched import TrainJob, batchable, train_batched, train_one_by_one
from tasks import get_task, train_local

PARAM_TOL = 1e-6  # float32 rounding of batched kernels; measured max ~2e-8


def _jobs_and_references(
    task: str,
    sizes: list[int],
    *,
    mu: float = 0.0,
    epochs: list[int] | None = None,
    lrs: list[float] | None = None,
    momenta: list[float] | None = None,
) -> tuple[list[TrainJob], list[tuple[nn.Module, object]]]:
    spec = get_task(task)
    data = spec.load_data(0)
    torch.manual_seed(0)
    base = spec.build_model()
    jobs, refs, offset = [], [], 0
    for c, n in enumerate(sizes):
        x, y = data.x_train[offset : offset + n], data.y_train[offset : offset + n]
        offset = (offset + n) % max(1, len(data.x_train) - 100)
        kwargs = {
            "epochs": epochs[c] if epochs else 1,
            "batch_size": 16,
            "learning_rate": lrs[c] if lrs else 0.05,
            "seed": 1000 + c,
            "proximal_mu": mu,
            "momentum": momenta[c] if momenta else 0.0,
        }
        reference = copy.deepcopy(base)
        result = train_local(reference, x, y, **kwargs)  # type: ignore[arg-type]
        jobs.append(TrainJob(copy.deepcopy(base), x, y, **kwargs))  # type: ignore[arg-type]
        refs.append((reference, result))
    return jobs, refs


def _assert_same(jobs: list[TrainJob], refs: list, results: list) -> None:
    for job, (reference, expected), got in zip(jobs, refs, results, strict=True):
        assert got.num_examples == expected.num_examples
        assert got.steps == expected.steps
        if expected.num_examples:
            assert got.loss == pytest.approx(expected.loss, rel=1e-5)
        else:
            assert np.isnan(got.loss)
        for a, b in zip(job.model.parameters(), reference.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=PARAM_TOL)


@pytest.mark.parametrize("task", ["digits-cnn", "breast-cancer-mlp", "synthetic-logreg"])
def test_ragged_clients_match_one_by_one(task: str) -> None:
    # Prepare: empty, single-sample, exact-batch, ragged and multi-epoch clients.
    sizes = [0, 1, 5, 16, 17, 40, 33, 70]
    jobs, refs = _jobs_and_references(
        task,
        sizes,
        epochs=[1, 2, 1, 3, 1, 2, 1, 1],
        lrs=[0.05, 0.05, 0.1, 0.05, 0.02, 0.05, 0.05, 0.1],
    )
    # Execute
    results = train_batched(jobs)
    # Assert
    _assert_same(jobs, refs, results)


def test_fedprox_term_matches_one_by_one() -> None:
    jobs, refs = _jobs_and_references("digits-cnn", [20, 35, 7, 16], mu=0.5, epochs=[2, 2, 2, 2])
    _assert_same(jobs, refs, train_batched(jobs))


def test_momentum_matches_torch_sgd_one_by_one() -> None:
    # Prepare: clients with several steps (the buffer matters from the second), ragged
    # last minibatches and epochs, and mixed momenta (0 = plain SGD) in one group.
    sizes = [40, 33, 70, 16, 5, 0]
    jobs, refs = _jobs_and_references(
        "digits-cnn",
        sizes,
        epochs=[3, 2, 1, 2, 5, 1],
        momenta=[0.9, 0.9, 0.5, 0.0, 0.9, 0.9],
    )
    # Execute
    results = train_batched(jobs)
    # Assert
    _assert_same(jobs, refs, results)


def test_momentum_with_fedprox_matches_one_by_one() -> None:
    jobs, refs = _jobs_and_references(
        "breast-cancer-mlp", [20, 35, 7], mu=0.5, epochs=[3, 2, 4], momenta=[0.9] * 3
    )
    _assert_same(jobs, refs, train_batched(jobs))


def test_momentum_changes_the_result() -> None:
    # The momentum reaches the batched arithmetic (else the oracle tests pass vacuously).
    plain, _ = _jobs_and_references("breast-cancer-mlp", [40, 40], epochs=[2, 2])
    heavy, _ = _jobs_and_references(
        "breast-cancer-mlp", [40, 40], epochs=[2, 2], momenta=[0.9, 0.9]
    )
    train_batched(plain)
    train_batched(heavy)
    a, b = next(plain[0].model.parameters()), next(heavy[0].model.parameters())
    assert not torch.allclose(a, b, atol=1e-4)


def test_batched_training_actually_moves_the_weights() -> None:
    jobs, _ = _jobs_and_references("breast-cancer-mlp", [30, 30])
    before = [p.detach().clone() for p in jobs[0].model.parameters()]
    train_batched(jobs)
    assert any(
        not torch.equal(a, b) for a, b in zip(before, jobs[0].model.parameters(), strict=True)
    )


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(0, 40), min_size=2, max_size=6),
    epochs=st.integers(1, 2),
    batch=st.sampled_from([1, 4, 16]),
)
def test_property_any_sizes_match(sizes: list[int], epochs: int, batch: int) -> None:
    spec = get_task("synthetic-logreg")
    data = spec.load_data(0)
    torch.manual_seed(1)
    base = spec.build_model()
    jobs, refs = [], []
    for c, n in enumerate(sizes):
        x, y = data.x_train[c * 40 : c * 40 + n], data.y_train[c * 40 : c * 40 + n]
        kwargs = {"epochs": epochs, "batch_size": batch, "learning_rate": 0.1, "seed": c}
        reference = copy.deepcopy(base)
        refs.append((reference, train_local(reference, x, y, **kwargs)))  # type: ignore[arg-type]
        jobs.append(TrainJob(copy.deepcopy(base), x, y, **kwargs))  # type: ignore[arg-type]
    _assert_same(jobs, refs, train_batched(jobs))


class _WithDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(30, 8), nn.Dropout(0.5), nn.Linear(8, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_models_with_randomness_train_one_by_one_exactly() -> None:
    # Prepare: dropout draws from torch's global RNG: batching could not reproduce it.
    data = get_task("breast-cancer-mlp").load_data(0)
    assert not batchable(_WithDropout())
    assert batchable(get_task("digits-cnn").build_model())
    torch.manual_seed(3)
    base = _WithDropout()
    x, y = data.x_train[:40], data.y_train[:40]
    reference = copy.deepcopy(base)
    torch.manual_seed(9)
    expected = train_local(reference, x, y, epochs=1, batch_size=8, learning_rate=0.1, seed=4)
    job = TrainJob(copy.deepcopy(base), x, y, 1, 8, 0.1, 4)
    # Execute: same global seed before training, as the sequential reference had.
    torch.manual_seed(9)
    (got,) = train_batched([job])
    # Assert: bit-for-bit, because it is the same code path.
    assert got == expected
    for a, b in zip(job.model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(a, b)


def test_reference_ignores_an_installed_override() -> None:
    from tasks.training import train_local_override

    data = get_task("synthetic-logreg").load_data(0)
    model = get_task("synthetic-logreg").build_model()
    job = TrainJob(model, data.x_train[:10], data.y_train[:10], 1, 4, 0.1, 0)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("override must not be used by the reference")

    with train_local_override(refuse):  # type: ignore[arg-type]
        result = train_one_by_one(job)
    assert result.num_examples == 10


def test_bad_jobs_are_refused() -> None:
    data = get_task("synthetic-logreg").load_data(0)
    model = get_task("synthetic-logreg").build_model()
    with pytest.raises(ValueError, match="epochs and batch_size"):
        train_batched([TrainJob(model, data.x_train[:4], data.y_train[:4], 0, 4, 0.1, 0)])
    with pytest.raises(ValueError, match="same number of samples"):
        train_batched([TrainJob(model, data.x_train[:4], data.y_train[:3], 1, 4, 0.1, 0)])


@pytest.mark.parametrize("surgery", ["parameter", "submodule"])
def test_a_reused_model_changed_in_place_trains_its_new_weights(surgery: str) -> None:
    # Setup: two clients trained once (their module walks are now cached), then the
    # first model changed in place: a parameter replaced, or a layer replaced.
    jobs, _ = _jobs_and_references("breast-cancer-mlp", [20, 25])
    train_batched(jobs)
    model = jobs[0].model
    assert isinstance(model, nn.Sequential)
    if surgery == "parameter":
        model[2].weight = nn.Parameter(torch.zeros_like(model[2].weight))
    else:
        model[2] = nn.Linear(32, 2)
        torch.nn.init.zeros_(model[2].weight)
    new_weight = model[2].weight
    reference = copy.deepcopy(model)
    second = [TrainJob(j.model, j.x, j.y, 1, 16, 0.05, 7 + c) for c, j in enumerate(jobs)]
    # Execute: a second batched training of the same model objects.
    train_batched(second)
    train_local(
        reference, jobs[0].x, jobs[0].y, epochs=1, batch_size=16, learning_rate=0.05, seed=7
    )
    # Assert: the new weights are the ones trained, exactly as one-by-one training.
    assert not torch.equal(new_weight, torch.zeros_like(new_weight))
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=PARAM_TOL)
