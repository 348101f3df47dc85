"""The Ray engine (``--engine ray``): the in-process engine's cohorts spread over Ray.

The coordinator side does not move: the ServerApp (strategy, aggregation, secure
aggregation's server stages, checkpoints), the simulated fleet's admissions and the
round records all run in this process exactly as under ``--engine inprocess``
(:class:`RayGrid` *is* an :class:`simulation.inprocess.InProcessGrid`). Only the
ClientApp calls of a push move: the admitted messages are cut into contiguous slices,
one per worker, and each worker runs its slice as one batched cohort
(:func:`simulation.cohort.run_cohort`, :mod:`simulation.batched`), as this process would.

**Workers** are Ray actors (:class:`SliceWorker`), created once per run and kept for all
of its rounds: each builds fedfleet's ClientApp once and keeps what the app caches in
its process (the task's model and data partitions), so a round ships only messages.
They are spread over the cluster's nodes (Ray's ``SPREAD`` scheduling), one CPU each.

**What travels** each push, per client: the instruction (its records: the global model's
arrays, the config) and the node's ``Context`` (its state: what mods such as SecAgg+
keep between stages) to the worker; the reply and the Context back. Nothing else: the
workers import fedfleet and load the task's data themselves, so fedfleet, torch and
Flower must be installed on every node (docs/simulation.md, "More than one machine").

**Same model as in process**: a client's training depends only on its instruction, its
Context and its partition (batch order, dropouts and attacks are drawn from
(seed, round, client), never from a process's random state), and the batched engine
computes each client's steps on its own slice of the stack, so which worker runs a
client and beside whom does not change its reply. Replies come back in the order the
messages were pushed, so the server aggregates in the same order.
``tests/simulation/test_ray_engine.py`` checks the final model bit for bit.

**Ray's lifetime**: without ``--ray-address`` a local Ray instance is started
(``num_cpus`` = ``--ray-workers``, or this machine's cores) and shut down when the run
ends, however it ends (Ray turns SIGTERM into ``SystemExit``; SIGINT is
``KeyboardInterrupt``): :func:`ray_session`. With ``--ray-address`` this process joins
that cluster as a driver and leaves it running.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from traceback import format_exception
from typing import TYPE_CHECKING, Any

from simulation.inprocess import ERROR_CLIENT_EXCEPTION, InProcessGrid

if TYPE_CHECKING:
    from flwr.app import Context, Message


@dataclass(frozen=True)
class RaySetup:
    """What the engine needs to know of Ray: where it is and how many workers."""

    address: str = ""  # "" = start a local Ray for this run
    workers: int = 0  # 0 = one per CPU of the cluster
    threads: int = 1  # torch intra-op threads in each worker; 0 = torch's default


@contextlib.contextmanager
def ray_session(setup: RaySetup) -> Iterator[int]:
    """Ray connected (or started here) for the duration; yields the number of workers.

    A cluster given by address is joined and left running; a local one is started with
    ``num_cpus`` = the workers asked for (else the cores) and always shut down."""
    import ray

    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": True,
        "configure_logging": False,
    }
    if setup.address:
        kwargs["address"] = setup.address
    else:
        # A plain init joins the cluster in RAY_ADDRESS or the last one `ray start`ed on
        # this machine (/tmp/ray/ray_current_cluster); without --ray-address this run's
        # Ray is its own: "local" always starts a new one.
        kwargs["address"] = "local"
        kwargs["num_cpus"] = setup.workers or os.cpu_count() or 1
    try:
        ray.init(**kwargs)
    except (ConnectionError, TimeoutError, RuntimeError) as exc:
        raise ValueError(
            f"cannot connect to the Ray cluster at {setup.address!r} ({exc}); "
            "check --ray-address (the head's HOST:6379, or ray://HOST:10001)"
        ) from None
    # Ray's core installs a SIGTERM handler that aborts the process: put back one that
    # unwinds it, so the ``finally`` below shuts Ray down.
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        yield max(1, setup.workers or cpus)
    finally:
        ray.shutdown()
        signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM during a Ray run: unwind (``finally`` blocks run), exit 128 + 15."""
    raise SystemExit(128 + signum)


class SliceWorker:
    """One Ray actor: fedfleet's ClientApp, built once, run on slices of cohorts."""

    def __init__(self, threads: int) -> None:
        if threads > 0:
            import torch

            torch.set_num_threads(threads)
        from simulation.allocator import keep_freed_memory
        from simulation.apps import build_simulation_client_app

        keep_freed_memory()
        self._client_app = build_simulation_client_app()

    def node_id(self) -> str:
        """The Ray node this worker runs on."""
        import ray

        return str(ray.get_runtime_context().get_node_id())

    def run(
        self, messages: list[Message], contexts: list[Context]
    ) -> tuple[list[tuple[Message, Context]], str, float]:
        """Run the slice as one cohort: (reply, Context) per message, in order, the node
        it ran on and the seconds it took here."""
        import ray

        from simulation.cohort import run_cohort

        t0 = time.perf_counter()
        calls = [
            (lambda m=m, c=c: self._call(m, c)) for m, c in zip(messages, contexts, strict=True)
        ]
        replies = run_cohort(calls) if len(calls) > 1 else [call() for call in calls]
        node = str(ray.get_runtime_context().get_node_id())
        return list(zip(replies, contexts, strict=True)), node, time.perf_counter() - t0

    def _call(self, message: Message, context: Context) -> Message:
        """As :meth:`InProcessGrid._call_client`: a client's failure is its reply."""
        from flwr.app import Error, Message

        try:
            return self._client_app(message, context)
        except Exception as exc:
            reason = "".join(format_exception(exc))
            return Message(Error(code=ERROR_CLIENT_EXCEPTION, reason=reason), reply_to=message)


def slices(count: int, parts: int) -> list[range]:
    """``range(count)`` cut into at most ``parts`` contiguous, near-equal slices."""
    parts = max(1, min(parts, count))
    size, extra = divmod(count, parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + size + (1 if i < extra else 0)
        out.append(range(start, stop))
        start = stop
    return out


class RayGrid(InProcessGrid):
    """The in-process grid whose admitted ClientApp calls run on Ray workers.

    ``workers`` actors are created here (spread over the cluster's nodes) and live as
    long as the grid; ``tasks_per_node`` counts the slices each Ray node ran.
    """

    def __init__(self, *, workers: int, threads: int = 1, **kwargs: Any) -> None:
        import ray

        super().__init__(batch_train=True, **kwargs)
        actor = ray.remote(num_cpus=1)(SliceWorker).options(scheduling_strategy="SPREAD")
        self._workers: list[Any] = [actor.remote(threads) for _ in range(workers)]
        # every worker up (its ClientApp built) before round 1 is timed
        self.worker_nodes: list[str] = ray.get([w.node_id.remote() for w in self._workers])
        self.tasks_per_node: Counter[str] = Counter()

    def _run_admitted(
        self, messages: list[Message], timeout: float | None
    ) -> tuple[list[Message | None], list[float]]:
        import ray

        if not messages:
            return [], []
        contexts = [self.context_for(m.metadata.dst_node_id) for m in messages]
        cuts = slices(len(messages), len(self._workers))
        futures = [
            worker.run.remote([messages[i] for i in cut], [contexts[i] for i in cut])
            for worker, cut in zip(self._workers, cuts, strict=False)
        ]
        replies: list[Message | None] = []
        seconds: list[float] = []
        for cut, (outcomes, node, spent) in zip(cuts, ray.get(futures), strict=True):
            self.tasks_per_node[node] += 1
            for i, (reply, context) in zip(cut, outcomes, strict=True):
                self._contexts[messages[i].metadata.dst_node_id] = context
                replies.append(reply)
                seconds.append(spent / len(cut))
        return replies, seconds
