"""How a third-party ClientApp (``--app``) is called: in this process, or in parallel
worker processes when that is faster (``--app-workers N|auto|0``).

**Same results wherever a call runs.** Every call starts from random state drawn from
(``--seed``, node id, that node's call number): Python's ``random``, numpy's global
generator and torch's are seeded before the call and the caller's state is put back
after it. A call's result therefore depends neither on the process that runs it nor on
what ran before it there, and the ServerApp's own random draws (FedAvg samples nodes
with ``random``) never see the clients'. The node's ``Context`` (its state, which
mods such as SecAgg+ keep there) travels with each call to a worker and comes back
with the reply. What is not carried: an app's module-level globals changed by a call
(as on Flower, where each simulation actor holds its own); and with more than one
torch thread per process (``--threads``) torch may sum in another order.

**Workers** start from a forkserver (a fresh single-threaded process that imports
flwr, the app's ClientApp module and torch once), never by forking this process, which
runs threads (a child could inherit a lock one of them held). Under auto they start in
the background when the run starts, while the first pushes run in process; with a
count, before the first push. They serve calls of any node, handed out in batches to
whichever worker is free. They ignore SIGINT (the parent stops them), end on their
pipe's end of file or when the parent is gone (polled each second; on Linux a worker
also gets SIGTERM when the forkserver ends, which it does with the run, so a SIGKILLed
run's workers end mid-call), and are ended by PID when the run ends, however it ends. A ClientApp exception in a worker comes back as
its whole traceback (:class:`simulation.app_errors.ClientFailure`).

**Every wait on a worker is bounded** (:class:`WorkerPool`): a worker acknowledges each
batch as it takes it; one that does not within ``ACK_S`` is ended by PID and replaced,
and its calls run in process instead (seeded: the same results); one whose call runs
``HANG_GRACE_S`` past the push's timeout is ended and replaced, and that call is late
(its reply missing, as Flower's ``send_and_receive`` drops it). Each says one line.

**auto** (the default) measures instead of guessing: per message type, the first push
large enough to fill the workers (two calls per worker or more) runs in process, the
next one in the workers, and the faster per call runs the rest: in process, the median
of the calls' own seconds (a one-time warm-up, the first call's, left out); in
workers, the push's wall seconds per call (their warm-ups included: when in doubt, in
process). Pushes smaller than that, and pushes while the workers are still starting,
run in process. One core: no workers. A message type that had a late call (in process
or in workers) runs in process from then on.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import random
import signal
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from simulation.app_errors import ClientFailure
from simulation.timed_calls import TimedCalls

if TYPE_CHECKING:  # Flower is imported when a call is made: bad input answers without it
    from flwr.app import Context, Message
    from flwr.clientapp import ClientApp

Mode = Literal["inprocess", "workers"]
# (the instruction, what its ClientApp call raised)
FailureCallback = Callable[["Message", ClientFailure], None]
AUTO = -1  # --app-workers auto
PARENT_POLL_S = 1.0  # how often an idle worker checks that its parent is still there
STOP_WAIT_S = 5.0  # wall seconds a worker gets to end after being told to
ACK_S = 60.0  # wall seconds a worker gets to acknowledge a batch (its start included)
HANG_GRACE_S = 2.0  # wall seconds past a call's timeout before its worker is ended
MAX_BATCH = 8  # calls handed to a worker at once (fewer as a push ends)
ACK = "started"
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def usable_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def parse_app_workers(text: str) -> int:
    """``--app-workers``: ``auto`` (``AUTO``), ``0`` (in process) or a count."""
    if text.strip().lower() == "auto":
        return AUTO
    try:
        value = int(text)
    except ValueError:
        value = -2
    if value < 0:
        raise ValueError(f"--app-workers {text!r}: give auto, 0 (in process) or a count >= 1")
    return value


def call_seed(seed: int, node_id: int, call_number: int) -> int:
    """The random seed of ``node_id``'s ``call_number``-th call (32 bits)."""
    import numpy as np

    return int(np.random.SeedSequence([seed, node_id, call_number]).generate_state(1)[0])


@contextlib.contextmanager
def own_random_state(value: int) -> Iterator[None]:
    """Seed Python's, numpy's and (if imported) torch's global generators with
    ``value``; put the caller's state back afterwards."""
    import numpy as np

    torch = sys.modules.get("torch")
    saved = (random.getstate(), np.random.get_state(), torch.get_rng_state() if torch else None)
    random.seed(value)
    np.random.seed(value)
    if torch is not None:
        torch.manual_seed(value)
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        if torch is not None and saved[2] is not None:
            torch.set_rng_state(saved[2])


@dataclass
class CallOutcome:
    """One ClientApp call: its reply (an error reply if it raised), the node's Context
    after it, its own seconds, and what it raised."""

    reply: Message
    context: Context
    seconds: float
    failure: ClientFailure | None = None


def call_client_app(
    client_app: ClientApp, message: Message, context: Context, *, seed_value: int
) -> CallOutcome:
    """One call from its own random state; an exception is the reply, never a crash."""
    from flwr.app import Error, Message
    from flwr.common.constant import ErrorCode

    started = time.perf_counter()
    failure = None
    with own_random_state(seed_value):
        try:
            reply = client_app(message, context)
        except Exception as exc:
            failure = ClientFailure.of(exc)
            error = Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=failure.reason)
            reply = Message(error, reply_to=message)
    return CallOutcome(reply, context, time.perf_counter() - started, failure)


# -- worker processes ---------------------------------------------------------------------
@dataclass(frozen=True)
class AppSource:
    """Where a worker loads the ClientApp from: its reference (``module:attribute``) and
    the app's directory (Flower's loader, as the parent loaded it)."""

    ref: str
    app_dir: str

    @property
    def module(self) -> str:
        return self.ref.partition(":")[0]

    def load(self) -> ClientApp:
        from flwr.supercore.object_ref import load_app

        app: ClientApp = load_app(self.ref, ValueError, project_dir=self.app_dir)
        return app


def _parent_alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie does not: its pipe ends are closed)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return state not in ("Z", "X")


def _end_with_the_forkserver() -> None:
    """SIGTERM this worker when the forkserver (its parent, which ends with the run)
    ends, even mid-call (Linux's PR_SET_PDEATHSIG; elsewhere the polling below)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    # multiprocessing hands each forkserver child the write end of the pipe whose end
    # of file ends the forkserver: held here, a SIGKILLed run's forkserver (and so this
    # worker, mid-call) would live until the call ended. A worker does not need it.
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    alive = getattr(server, "_forkserver_alive_fd", None)
    if isinstance(alive, int):
        with contextlib.suppress(OSError):
            os.close(alive)
        server._forkserver_alive_fd = None  # type: ignore[union-attr]


def _serve(conn: Connection, source: AppSource | ClientApp, setup: tuple[int, int, str]) -> None:
    """A worker's loop: a batch of ``(message, context, seed)`` in; an acknowledgement,
    then one :class:`CallOutcome` per call out. Ends on ``None``, on the pipe's end of
    file, or when the parent is gone (polled each ``PARENT_POLL_S``)."""
    threads, parent, cwd = setup
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers end
    _end_with_the_forkserver()
    with contextlib.suppress(OSError):
        os.chdir(cwd)  # the run folder, as for a call in process
    client_app = source.load() if isinstance(source, AppSource) else source
    torch = sys.modules.get("torch")
    if torch is not None and threads > 0:
        torch.set_num_threads(threads)
    try:
        while True:
            if not conn.poll(PARENT_POLL_S):
                if not _parent_alive(parent):
                    return  # the parent is gone: nobody will read a reply
                continue
            batch = conn.recv()
            if batch is None:
                return
            conn.send(ACK)
            for message, context, seed_value in batch:
                conn.send(call_client_app(client_app, message, context, seed_value=seed_value))
    except (EOFError, OSError):  # the parent closed its end or is gone
        return


@dataclass
class Stuck:
    """A call a worker did not answer within its bound: ``late`` (it outlived its
    timeout by ``HANG_GRACE_S``) or not ``started`` (its batch was never acknowledged)."""

    why: Literal["late", "not started"]


@dataclass
class _Slot:
    """One worker and the calls it holds: ``pending`` in order, the first one running
    since ``since`` (its batch's acknowledgement or the previous reply)."""

    process: Any
    conn: Connection
    pending: deque[int] = field(default_factory=deque)
    acknowledged: bool = False
    since: float = 0.0


@dataclass
class WorkerPool:
    """``size`` worker processes started from a forkserver (a single-threaded process
    with the app's modules imported, never this one), each running the app's ClientApp.

    Every wait is bounded: a worker that does not acknowledge a batch within
    ``ACK_S``, or whose call runs ``HANG_GRACE_S`` past the call's timeout, is ended by
    PID (said in one line) and replaced; its unanswered calls come back as :class:`Stuck`."""

    source: AppSource | ClientApp
    size: int
    threads: int
    say: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr))
    ack_s: float = ACK_S
    slots: list[_Slot] = field(default_factory=list)

    def start(self) -> WorkerPool:
        import multiprocessing

        context = multiprocessing.get_context("forkserver")
        preload = ["simulation.app_calls", "flwr.app", "flwr.clientapp"]
        if isinstance(self.source, AppSource):
            preload.append(self.source.module)
        if "torch" in sys.modules:  # a first optimizer step imports torch._dynamo (~3 s)
            preload += ["torch", "torch._dynamo"]
        context.set_forkserver_preload(preload)  # used when the forkserver starts
        self._context = context
        self.slots = [self._spawn(number) for number in range(self.size)]
        return self

    def _spawn(self, number: int) -> _Slot:
        ours, theirs = self._context.Pipe()
        process = self._context.Process(
            target=_serve,
            args=(theirs, self.source, (self.threads, os.getpid(), os.getcwd())),
            name=f"clientapp-worker-{number}",
        )
        process.start()
        theirs.close()
        return _Slot(process, ours)

    @property
    def pids(self) -> list[int]:
        return [slot.process.pid for slot in self.slots]

    def run(
        self, tasks: list[tuple[Message, Context, int]], *, timeout: float | None
    ) -> list[CallOutcome | Stuck]:
        """Run ``tasks`` on whichever worker is free, in batches that shrink as the
        push ends; outcomes in the tasks' order."""
        outcomes: list[CallOutcome | Stuck | None] = [None] * len(tasks)
        todo = deque(range(len(tasks)))
        for slot in self.slots:
            self._hand_out(slot, tasks, todo)
        while any(slot.pending for slot in self.slots):
            busy = {slot.conn: slot for slot in self.slots if slot.pending}
            now = time.monotonic()
            bound = min(self._deadline(slot, timeout) for slot in busy.values()) - now
            limit = None if math.isinf(bound) else max(0.0, bound)  # no timeout: replies
            for ready in wait(list(busy), timeout=limit):
                if isinstance(ready, Connection):
                    self._receive(busy[ready], outcomes)
            now = time.monotonic()
            for slot in list(busy.values()):
                if slot.pending and now >= self._deadline(slot, timeout):
                    self._replace(slot, outcomes, timeout)
            for slot in self.slots:
                if not slot.pending:
                    self._hand_out(slot, tasks, todo)
        return [outcome for outcome in outcomes if outcome is not None]

    def _hand_out(
        self, slot: _Slot, tasks: list[tuple[Message, Context, int]], todo: deque[int]
    ) -> None:
        count = min(len(todo), max(1, len(todo) // (2 * len(self.slots))), MAX_BATCH)
        if count == 0:
            return
        indices = [todo.popleft() for _ in range(count)]
        slot.pending.extend(indices)
        slot.acknowledged = False
        slot.since = time.monotonic()
        slot.conn.send([tasks[index] for index in indices])

    def _deadline(self, slot: _Slot, timeout: float | None) -> float:
        if not slot.acknowledged:
            return slot.since + self.ack_s
        return slot.since + (timeout + HANG_GRACE_S if timeout is not None else math.inf)

    def _receive(self, slot: _Slot, outcomes: list[CallOutcome | Stuck | None]) -> None:
        try:
            got = slot.conn.recv()
        except (EOFError, OSError):
            raise RuntimeError(self._died(slot)) from None
        slot.since = time.monotonic()
        if got == ACK:
            slot.acknowledged = True
        else:
            outcomes[slot.pending.popleft()] = got

    def _replace(
        self, slot: _Slot, outcomes: list[CallOutcome | Stuck | None], timeout: float | None
    ) -> None:
        why: Literal["late", "not started"] = "late" if slot.acknowledged else "not started"
        pid = slot.process.pid
        bound = f"{timeout:g}s timeout + {HANG_GRACE_S:g}s" if why == "late" else f"{self.ack_s:g}s"
        self.say(
            f"warning: ClientApp worker pid {pid} gave no reply within {bound} "
            f"({'its call is late: dropped' if why == 'late' else 'it never started its calls: rerun in process'}); "
            "ended by PID and replaced"
        )
        self._end(slot.process, slot.conn, grace_s=0.0)
        for number, index in enumerate(slot.pending):
            # the call running is late; the ones queued behind it never started
            outcomes[index] = Stuck(why if number == 0 else "not started")
        position = self.slots.index(slot)
        self.slots[position] = self._spawn(position)

    def _died(self, slot: _Slot) -> str:
        slot.process.join(1.0)
        return (
            f"a ClientApp worker process ended unexpectedly (exit code {slot.process.exitcode}); "
            "rerun with --app-workers 0 to call the ClientApp in this process"
        )

    @staticmethod
    def _end(process: Any, conn: Connection, *, grace_s: float) -> None:
        """Wait ``grace_s`` for ``process`` to end, then end it by PID; reap it."""
        process.join(grace_s)
        if process.is_alive():
            process.terminate()
            process.join(2.0)
        if process.is_alive():
            process.kill()
            process.join()
        conn.close()

    def close(self) -> None:
        """Tell each worker to end, then end the ones still there by PID; reap all."""
        for slot in self.slots:
            with contextlib.suppress(OSError, ValueError):
                slot.conn.send(None)
        deadline = time.monotonic() + STOP_WAIT_S
        for slot in self.slots:
            self._end(slot.process, slot.conn, grace_s=max(0.0, deadline - time.monotonic()))
        self.slots.clear()


# -- choosing ------------------------------------------------------------------------------
@dataclass
class Calibration:
    """Seconds per call of each (message type, mode) measured so far (``auto``)."""

    workers: int
    per_call: dict[tuple[str, Mode], float] = field(default_factory=dict)

    def mode(self, message_type: str, calls: int) -> Mode:
        if calls < 2 * self.workers:
            return "inprocess"
        inprocess = self.per_call.get((message_type, "inprocess"))
        if inprocess is None:
            return "inprocess"
        workers = self.per_call.get((message_type, "workers"))
        if workers is None:
            return "workers"
        return "workers" if workers < inprocess else "inprocess"

    def record(self, message_type: str, mode: Mode, per_call_s: float, calls: int) -> None:
        if calls >= 2 * self.workers:
            self.per_call[(message_type, mode)] = per_call_s


class AppCalls:
    """The ClientApp calls of one run (see the module's docstring).

    ``workers``: ``AUTO``, 0 or a count; ``threads``: torch threads per worker (0:
    torch's default); ``on_failure`` sees each exception a call raised (without it the
    error reply carries the whole traceback)."""

    def __init__(
        self,
        client_app: ClientApp,
        *,
        seed: int = 0,
        workers: int = 0,
        threads: int = 1,
        on_failure: FailureCallback | None = None,
        source: AppSource | None = None,
    ) -> None:
        self.client_app = client_app
        self.source = source
        self.seed = seed
        self.on_failure = on_failure
        self.timed: TimedCalls[CallOutcome] = TimedCalls()
        self._calls: dict[int, int] = {}  # node id -> calls so far
        size = usable_cores() if workers == AUTO else workers
        self._auto = workers == AUTO
        self._size = size if size > 1 or not self._auto else 0
        self._threads = threads
        self.pool: WorkerPool | None = None
        self.calibration = Calibration(workers=max(1, self._size))
        self.last_mode: Mode = "inprocess"
        self._starting: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.stuck = 0  # calls whose worker was ended for not answering in its bound

    @property
    def pool_size(self) -> int:
        """Worker processes of this run (0: every call in process)."""
        return self._size

    def start(self) -> AppCalls:
        """Start the workers in the background (a forkserver importing the app, then
        the workers): under auto the first pushes run in process meanwhile, never
        waiting; a count of workers (``--app-workers N``) waits for them here."""
        if self._size > 0 and not self._auto:
            self._ready()
        elif self._size > 0:
            self._starting = threading.Thread(
                target=self._start_pool, name="clientapp-workers-start", daemon=True
            )
            self._starting.start()
        return self

    def _start_pool(self) -> None:
        source = self.source if self.source is not None else self.client_app
        try:
            pool = WorkerPool(source, self._size, self._threads).start()
            with self._lock:
                if self._closed:  # the run ended while they started: end them here
                    pool.close()
                else:
                    self.pool = pool
        except Exception as exc:  # in process, said once
            print(
                f"warning: ClientApp workers did not start ({exc}); calls run in process",
                file=sys.stderr,
            )
            self._size = 0

    def _ready(self) -> bool:
        """Whether the workers have started (starting them now if start() did not)."""
        if self._starting is None:
            self._start_pool()
            self._starting = threading.Thread()
            return self.pool is not None
        return not self._starting.is_alive() and self.pool is not None

    def close(self) -> None:
        """End the workers; ones still starting end as soon as they have started."""
        with self._lock:
            self._closed = True
            pool, self.pool = self.pool, None
        if pool is not None:
            pool.close()

    def _mode(self, message_type: str, calls: int) -> Mode:
        if self._size == 0 or calls < 2:
            return "inprocess"
        mode = self.calibration.mode(message_type, calls) if self._auto else "workers"
        if mode == "workers" and not self._ready():
            return "inprocess"  # still starting: this push here, never a wait
        return mode

    def run(
        self, messages: list[Message], contexts: list[Context], *, timeout: float | None
    ) -> list[tuple[CallOutcome | None, float]]:
        """Call the ClientApp for each message (with its node's Context): each call's
        outcome (``None`` when late) and the seconds it took."""
        seeds = [self._next_seed(m.metadata.dst_node_id) for m in messages]
        types = {m.metadata.message_type for m in messages}
        message_type = types.pop() if len(types) == 1 else "mixed"
        mode = self._mode(message_type, len(messages))
        started = time.perf_counter()
        if mode == "workers" and self.pool is not None:
            results = self._in_workers(self.pool, messages, contexts, seeds, timeout)
        else:
            results = [
                self._in_process(message, context, seed, timeout)
                for message, context, seed in zip(messages, contexts, seeds, strict=True)
            ]
        if any(outcome is None for outcome, _ in results):  # a late call: in process from now
            self.calibration.per_call[(message_type, "workers")] = float("inf")
        if mode == "workers":  # throughput: wall seconds per call (warm-ups included)
            per_call = (time.perf_counter() - started) / len(messages)
        else:  # one call's own seconds, a one-time warm-up (the first call's) left out
            per_call = statistics.median(spent for _, spent in results) if results else 0.0
        self.calibration.record(message_type, mode, per_call, len(messages))
        self.last_mode = mode
        return results

    def _in_workers(
        self,
        pool: WorkerPool,
        messages: list[Message],
        contexts: list[Context],
        seeds: list[int],
        timeout: float | None,
    ) -> list[tuple[CallOutcome | None, float]]:
        """The push in the workers. A late call (its worker ended) is missing; a call
        its worker never started runs here instead (seeded: the same result)."""
        tasks = list(zip(messages, contexts, seeds, strict=True))
        results: list[tuple[CallOutcome | None, float]] = []
        for (message, context, seed), outcome in zip(
            tasks, pool.run(tasks, timeout=timeout), strict=True
        ):
            if isinstance(outcome, Stuck):
                self.stuck += 1
                if outcome.why == "late" and timeout is not None:
                    results.append((None, timeout))
                else:
                    results.append(self._in_process(message, context, seed, timeout))
                continue
            self._report(message, outcome)
            late = timeout is not None and outcome.seconds > timeout
            results.append(
                (None, timeout) if late and timeout is not None else (outcome, outcome.seconds)
            )
        return results

    def _next_seed(self, node_id: int) -> int:
        number = self._calls.get(node_id, 0)
        self._calls[node_id] = number + 1
        return call_seed(self.seed, node_id, number)

    def _in_process(
        self, message: Message, context: Context, seed_value: int, timeout: float | None
    ) -> tuple[CallOutcome | None, float]:
        run = functools.partial(self._call_and_report, message, context, seed_value)
        if timeout is None:
            outcome = run()
            return outcome, outcome.seconds
        return self.timed.call(message.metadata.dst_node_id, run, budget_s=max(0.0, timeout))

    def _call_and_report(self, message: Message, context: Context, seed_value: int) -> CallOutcome:
        outcome = call_client_app(self.client_app, message, context, seed_value=seed_value)
        self._report(message, outcome)
        return outcome

    def _report(self, message: Message, outcome: CallOutcome) -> None:
        if outcome.failure is None:
            return
        if self.on_failure is not None:
            self.on_failure(message, outcome.failure)
        else:  # no one shows it: the reply carries the whole traceback
            from flwr.app import Error, Message
            from flwr.common.constant import ErrorCode

            error = Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=outcome.failure.trace)
            outcome.reply = Message(error, reply_to=message)
