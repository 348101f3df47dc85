"""The cohort scheduler: unchanged calls, their ``train_local`` calls batched together."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import pytest
import torch

from simulation.batched import TrainJob, train_batched
from simulation.cohort import CohortStats, run_cohort
from tasks import TrainResult, get_task, train_local


def _client(c: int, base: torch.nn.Module, log: list[str]):  # type: ignore[no-untyped-def]
    data = get_task("synthetic-logreg").load_data(0)

    def call() -> tuple[int, TrainResult, list[torch.Tensor]]:
        log.append(f"start {c}")
        model = copy.deepcopy(base)
        result = train_local(
            model,
            data.x_train[c * 20 : c * 20 + 10 + c],
            data.y_train[c * 20 : c * 20 + 10 + c],
            epochs=1,
            batch_size=4,
            learning_rate=0.1,
            seed=c,
        )
        log.append(f"end {c}")
        return c, result, [p.detach().clone() for p in model.parameters()]

    return call


def test_train_local_calls_are_batched_and_results_match_sequential() -> None:
    # Prepare
    torch.manual_seed(0)
    base = get_task("synthetic-logreg").build_model()
    log: list[str] = []
    seen: list[int] = []

    def trainer(jobs: Sequence[TrainJob]) -> list[TrainResult]:
        seen.append(len(jobs))
        return train_batched(jobs)

    stats = CohortStats()
    # Execute
    batched = run_cohort([_client(c, base, log) for c in range(5)], trainer=trainer, stats=stats)
    sequential = [_client(c, base, [])() for c in range(5)]
    # Assert: one batch of five, every call resumed with its own result, in order.
    assert seen == [5] and stats.jobs == 5 and stats.batches == 1
    assert log == [f"start {c}" for c in range(5)] + [f"end {c}" for c in range(5)]
    for (c1, r1, p1), (c2, r2, p2) in zip(batched, sequential, strict=True):
        assert c1 == c2 and r1.num_examples == r2.num_examples and r1.steps == r2.steps
        for a, b in zip(p1, p2, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_calls_that_do_not_train_just_run() -> None:
    stats = CohortStats()
    assert run_cohort([lambda: 1, lambda: 2], stats=stats) == [1, 2]
    assert stats.batches == 0


def test_a_failing_call_fails_after_the_others_finish() -> None:
    torch.manual_seed(0)
    base = get_task("synthetic-logreg").build_model()
    log: list[str] = []

    def broken() -> None:
        raise RuntimeError("client bug")

    with pytest.raises(RuntimeError, match="client bug"):
        run_cohort([_client(0, base, log), broken, _client(2, base, log)])
    assert "end 0" in log and "end 2" in log


def test_a_trainer_failure_surfaces_inside_each_waiting_call() -> None:
    torch.manual_seed(0)
    base = get_task("synthetic-logreg").build_model()
    caught: list[str] = []

    def guarded(c: int):  # type: ignore[no-untyped-def]
        inner = _client(c, base, [])

        def call() -> str:
            try:
                inner()
            except ValueError as exc:
                caught.append(str(exc))
            return "handled"

        return call

    def trainer(jobs: Sequence[TrainJob]) -> list[TrainResult]:
        raise ValueError("no accelerator")

    assert run_cohort([guarded(0), guarded(1)], trainer=trainer) == ["handled", "handled"]
    assert caught == ["no accelerator", "no accelerator"]


def test_outside_a_cohort_train_local_is_untouched() -> None:
    torch.manual_seed(0)
    model = get_task("synthetic-logreg").build_model()
    data = get_task("synthetic-logreg").load_data(0)
    run_cohort([lambda: None])
    result = train_local(
        model, data.x_train[:8], data.y_train[:8], epochs=1, batch_size=4, learning_rate=0.1, seed=0
    )
    assert result.steps == 2


def test_a_large_cohort_runs_in_waves_of_the_memory_budget() -> None:
    # Prepare: 10 calls, waves of 3 (as a memory budget of three clients would give).
    torch.manual_seed(0)
    base = get_task("synthetic-logreg").build_model()
    log: list[str] = []
    seen: list[int] = []

    def trainer(jobs: Sequence[TrainJob]) -> list[TrainResult]:
        seen.append(len(jobs))
        return train_batched(jobs)

    # Execute
    waved = run_cohort(
        [_client(c, base, log) for c in range(10)], trainer=trainer, wave_size=lambda job: 3
    )
    sequential = [_client(c, base, [])() for c in range(10)]
    # Assert: no more than three calls alive at once; each wave ends before the next
    # starts; the results are the calls' own, as one by one.
    assert seen == [3, 3, 3, 1]
    live, peak = 0, 0
    for line in log:
        live += 1 if line.startswith("start") else -1
        peak = max(peak, live)
    assert peak == 3 and log[:6] == [
        *(f"start {c}" for c in range(3)),
        *(f"end {c}" for c in range(3)),
    ]
    for (c1, r1, p1), (c2, r2, p2) in zip(waved, sequential, strict=True):
        assert c1 == c2 and r1.num_examples == r2.num_examples
        for a, b in zip(p1, p2, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
