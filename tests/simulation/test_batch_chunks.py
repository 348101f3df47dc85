"""Cohort chunking: a large cohort trained in chunks that fit a memory budget gives the
models and losses of one stack, to float32 rounding of batched kernels.

Not bit for bit: the CPU kernels under ``vmap`` (grouped convolution, batched matmul)
round differently with the number of clients stacked; one stack already stacks a
different number of clients at each step (ragged sizes), so no chunking could be
bit-exact. Measured: ~2e-8 on parameters, ~2e-7 relative on losses."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from simulation.batched import (
    BATCH_MEMORY_ENV,
    TrainJob,
    batch_memory_bytes,
    chunk_size,
    train_batched,
)
from tasks import get_task


def _jobs(sizes: list[int], *, mu: float = 0.0, momentum: float = 0.9) -> list[TrainJob]:
    spec = get_task("digits-cnn")
    data = spec.load_data(0)
    torch.manual_seed(0)
    base = spec.build_model()
    jobs, offset = [], 0
    for c, n in enumerate(sizes):
        x, y = data.x_train[offset : offset + n], data.y_train[offset : offset + n]
        offset = (offset + n) % 1000
        jobs.append(
            TrainJob(copy.deepcopy(base), x, y, 2, 16, 0.05 + 0.01 * (c % 3), 7 + c, mu, momentum)
        )
    return jobs


@pytest.mark.parametrize("mu", [0.0, 0.01])
def test_chunked_training_equals_one_stack(mu: float) -> None:
    # Execute: 23 clients of ragged sizes (empty ones too), once as one stack, once in
    # chunks of 5 (a budget of five clients), the same seeds.
    sizes = [0, 1, 5, 17, 33, 16, 2, 40, 0, 9, 31, 12, 3, 8, 25, 4, 19, 6, 1, 27, 14, 11, 7]
    whole, chunked = _jobs(sizes, mu=mu), _jobs(sizes, mu=mu)
    per_client = 1024**3 // chunk_size(whole[1], 1024**3)
    assert chunk_size(whole[1], 5 * per_client) == 5
    one = train_batched(whole, memory_bytes=1024**3)
    parts = train_batched(chunked, memory_bytes=5 * per_client)
    # Assert: the same sizes and steps; parameters and losses equal to float32 rounding
    # (the tolerance of the one-by-one oracle, tests/simulation/test_batched.py).
    assert [r.num_examples for r in one] == [r.num_examples for r in parts] == sizes
    for a, b in zip(one, parts, strict=True):
        assert a.steps == b.steps
        assert (np.isnan(a.loss) and np.isnan(b.loss)) or a.loss == pytest.approx(b.loss, rel=1e-5)
    worst = max(
        float((pa - pb).abs().max())
        for ja, jb in zip(whole, chunked, strict=True)
        for pa, pb in zip(ja.model.parameters(), jb.model.parameters(), strict=True)
    )
    assert worst <= 1e-6, worst
    moved = any(
        not torch.equal(p, q)
        for p, q in zip(whole[3].model.parameters(), _jobs([0])[0].model.parameters(), strict=True)
    )
    assert moved  # the comparison is of trained models


def test_chunk_size_follows_model_size_and_budget() -> None:
    job = _jobs([16])[0]
    params = sum(p.numel() * 4 for p in job.model.parameters())
    size = chunk_size(job, 128 * 1024**2)
    # At least six copies of the parameters per client; a bigger budget holds more.
    assert 1 <= size <= 128 * 1024**2 // (6 * params)
    assert chunk_size(job, 256 * 1024**2) >= 2 * size - 1
    assert chunk_size(job, 1) == 1


def test_memory_budget_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BATCH_MEMORY_ENV, "64")
    assert batch_memory_bytes() == 64 * 1024**2
    monkeypatch.setenv(BATCH_MEMORY_ENV, "lots")
    with pytest.raises(ValueError, match="budget in MiB"):
        batch_memory_bytes()
