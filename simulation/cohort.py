"""Run a round's client calls side by side so their local training is batched.

Each call (a ``ClientApp`` handling one message, mods and all) runs unchanged in its
own greenlet. When it reaches ``tasks.train_local`` (or DP-SGD's
``edge_client.dp_training.train_dp_local``, batched by
:func:`simulation.batched_dp.train_dp_batched`) it hands the arguments over and
pauses; once every call of the cohort has either paused there or finished, the paused
jobs are trained together by :func:`simulation.batched.train_batched`, each call is
resumed with its own result, and so on until all have returned.

Scheduling is cooperative and deterministic: calls start in the order given, only one
runs at a time, and they switch only at ``train_local``. A call that never trains
(evaluation, a refusal, a third-party handler) simply runs to completion. Greenlets
rather than threads: no two client calls ever run Python code at the same moment, so
nothing that is safe one by one becomes unsafe here.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
from greenlet import greenlet
from torch import nn

from edge_client.dp_training import DPTrainResult, train_dp_local_override
from simulation.batched import TrainJob, batch_memory_bytes, chunk_size, train_batched
from simulation.batched_dp import DPTrainJob, train_dp_batched
from tasks import TrainResult
from tasks.training import train_local_override

T = TypeVar("T")


@dataclass
class _Done(Generic[T]):
    value: T


@dataclass
class _Failed:
    error: BaseException


@dataclass
class CohortStats:
    """How much batching a cohort achieved: jobs trained and batched calls made."""

    jobs: int = 0
    batches: int = 0


def run_cohort(
    calls: Sequence[Callable[[], T]],
    *,
    trainer: Callable[[Sequence[TrainJob]], list[TrainResult]] = train_batched,
    dp_trainer: Callable[[Sequence[DPTrainJob]], list[DPTrainResult]] = train_dp_batched,
    stats: CohortStats | None = None,
    wave_size: Callable[[TrainJob], int] | None = None,
) -> list[T]:
    """Run ``calls`` with batched ``train_local``; return their results in order.

    An exception raised by a call propagates from here after every other call has
    been allowed to finish (callers that turn client failures into replies catch
    inside the call). An exception in ``trainer`` is raised inside each waiting call,
    where ``train_local`` was called. ``train_dp_local`` (DP-SGD) calls are gathered
    the same way and trained together by ``dp_trainer``.

    Calls run in waves: once ``wave_size(job)`` calls (default: the chunk that fits the
    batched-training memory budget, ``simulation.batched.chunk_size``) wait in
    ``train_local``, they are trained and run to completion before the next calls
    start, so only a wave's models, messages and training state are alive at once,
    however large the cohort.
    """
    if wave_size is None:
        budget = batch_memory_bytes()
        wave_size = functools.partial(_chunk_of, budget=budget)
    limit: int | None = None
    main = greenlet.getcurrent()
    results: list[Any] = [None] * len(calls)
    waiting: dict[int, TrainJob | DPTrainJob] = {}
    lets: list[greenlet] = []

    def submit(
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
        job = TrainJob(model, x, y, epochs, batch_size, learning_rate, seed, proximal_mu, momentum)
        outcome = main.switch(job)
        if isinstance(outcome, _Failed):
            raise outcome.error
        return outcome  # type: ignore[no-any-return]

    def submit_dp(model: nn.Module, x: np.ndarray, y: np.ndarray, **kw: Any) -> DPTrainResult:
        outcome = main.switch(DPTrainJob(model=model, x=x, y=y, **kw))
        if isinstance(outcome, _Failed):
            raise outcome.error
        return outcome  # type: ignore[no-any-return]

    def body(call: Callable[[], T]) -> _Done[T] | _Failed:
        try:
            with train_local_override(submit), train_dp_local_override(submit_dp):
                return _Done(call())
        except BaseException as exc:  # delivered to the scheduler, re-raised there
            return _Failed(exc)

    def advance(index: int, outcome: object) -> None:
        if isinstance(outcome, TrainJob | DPTrainJob):
            waiting[index] = outcome
        else:
            results[index] = outcome

    def drain() -> None:
        _drain(waiting, lambda i, outcome: advance(i, lets[i].switch(outcome)), trainers, stats)

    trainers = ((TrainJob, trainer), (DPTrainJob, dp_trainer))
    for index, call in enumerate(calls):
        let = greenlet(body, parent=main)
        let.gr_context = contextvars.copy_context()
        lets.append(let)
        advance(index, let.switch(call))
        limit = limit or _wave_limit(waiting.get(index), wave_size)
        if limit and len(waiting) >= limit:
            drain()
    drain()
    failures = [r.error for r in results if isinstance(r, _Failed)]
    if failures:
        raise failures[0]
    return [r.value for r in results]


def _drain(
    waiting: dict[int, Any],
    resume: Callable[[int, Any], None],
    trainers: Sequence[tuple[type, Callable[[Any], Any]]],
    stats: CohortStats | None,
) -> None:
    """Train every waiting job (each kind by its trainer) and resume its call, until
    no call waits."""
    while waiting:
        for kind, train in trainers:
            order = sorted(i for i, job in waiting.items() if isinstance(job, kind))
            if order:
                trained = _train([waiting.pop(i) for i in order], train, stats)
                for index, outcome in zip(order, trained, strict=True):
                    resume(index, outcome)


def _wave_limit(job: object, wave_size: Callable[[TrainJob], int]) -> int | None:
    """The wave size, once the first plain training job is known."""
    return max(1, wave_size(job)) if isinstance(job, TrainJob) else None


def _chunk_of(job: TrainJob, *, budget: int) -> int:
    return chunk_size(job, budget)


def _train(jobs: list[Any], train: Callable[[Any], Any], stats: CohortStats | None) -> list[Any]:
    """One batched training of ``jobs``; a failure becomes every job's outcome."""
    trained: list[Any]
    try:
        trained = list(train(jobs))
    except Exception as exc:
        trained = [_Failed(exc)] * len(jobs)
    if stats is not None:
        stats.jobs += len(jobs)
        stats.batches += 1
    return trained
