"""The in-process engine: an implementation of Flower's ``Grid`` that delivers each
message straight to a ``ClientApp`` in this process. No Ray, no gRPC, no subprocesses.

The ServerApp and ClientApp run unchanged — the same objects Flower would load — so a
simulation exercises the code that deploys. Clients are lazily materialised: a node is
an id and a node config (its partition id) until it first receives a message; its
``Context`` (and the state a mod keeps in it) is created then and kept for later rounds.
10,000 registered clients therefore cost 10,000 integers until they train.

Messages are handed over as a network would (:mod:`simulation.transport`): each client
gets its own copy of an instruction's records, and every array is decoded once.

Two optional layers, both outside the apps:

- ``batch_train``: the messages of one push are handled as a cohort
  (:mod:`simulation.cohort`): each ClientApp call runs in full, but the
  ``tasks.train_local`` calls they make are trained together by
  :mod:`simulation.batched` with the same arithmetic. Only for ClientApps whose local
  training is ``tasks.train_local`` (fedfleet's own); any other app is called message
  by message, as Flower would.
- ``fleet``: a :class:`simulation.fleet.SimulatedFleet` decides which devices are
  online and which drop out, and times each reply in simulated seconds; for fedfleet's
  own apps it stamps them into the reply (``stamp_replies``, read by the coordinator),
  for a third-party app it never touches the app's records.

``app_kind="flower"`` (a third-party Flower app, ``--app``) keeps Flower's semantics
where fedfleet's own apps use fedfleet's:

- ``send_and_receive(timeout=...)`` is honoured per client, in simulated seconds (the
  device's under a fleet, else the call's own) and never waited for past it in wall
  time (:mod:`simulation.timed_calls`); a late reply is missing from what the server
  gets, as on Flower;
- under a fleet, ``get_node_ids()`` lists only the devices online now (as a SuperLink
  lists the nodes connected to it), so an offline device is never sampled; a server
  that keeps polling for nodes (a second of wall time or more between two polls, no
  message sent in between) waits in simulated time: the clock moves to the next hour,
  when availability is drawn again;
- a device sampled for a SecAgg+ round is not lost before it has shared its keys
  (:mod:`simulation.secaggplus_stages`);
- nothing is written into the replies;
- its ClientApp is called through :class:`simulation.app_calls.AppCalls`: each call
  from its own seeded random state, in this process or in worker processes.
"""

from __future__ import annotations

import functools
import gc
import time
from collections.abc import Callable, Iterable
from traceback import format_exception
from typing import Literal
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from simulation.app_calls import AppCalls
from simulation.cohort import CohortStats, run_cohort
from simulation.fleet import SimulatedFleet
from simulation.secaggplus_stages import can_drop_out
from simulation.transport import for_client, for_server

ERROR_CLIENT_EXCEPTION = ErrorCode.CLIENT_APP_RAISED_EXCEPTION  # the ClientApp raised
NodeConfigFn = Callable[[int], dict[str, bool | int | float | str]]
# (instructions of one push, the replies that came back in time, machine seconds the
# push took, the server's timeout if it gave one)
ExchangeCallback = Callable[[list[Message], list[Message], float, float | None], None]
# whose ClientApp and ServerApp run: fedfleet's own, or a third-party Flower app's
AppKind = Literal["fedfleet", "flower"]
IDLE_POLL_S = 1.0  # wall seconds between two node polls, nothing sent: the server waits


def partition_node_config(num_nodes: int) -> NodeConfigFn:
    """Client ``i``'s node config, as Flower's simulation engine sets it."""

    def node_config(i: int) -> dict[str, bool | int | float | str]:
        return {"partition-id": i, "num-partitions": num_nodes}

    return node_config


class InProcessGrid(Grid):
    """Runs ``client_app`` for each pushed message; replies are ready at once.

    ``node_config_fn(i)`` gives client ``i``'s node config (``partition-id`` etc.);
    node ids are ``1000 + i`` so they never collide with Flower's SuperLink id.
    ``on_message`` (if given) sees every (instruction, reply, seconds) for progress;
    in a batched cohort the seconds are the cohort's time shared equally.
    ``on_exchange`` (if given) sees each push: its instructions, replies and seconds.
    ``app_kind``: see the module's docstring; ``app_calls`` calls a Flower app's
    ClientApp (default: in process, seed 0, tracebacks in the error replies).
    """

    NODE_ID_BASE = 1000

    def __init__(
        self,
        *,
        client_app: ClientApp,
        num_nodes: int,
        run_config: dict[str, bool | int | float | str],
        node_config_fn: NodeConfigFn,
        run_id: int = 1,
        on_message: Callable[[Message, Message, float], None] | None = None,
        batch_train: bool = False,
        fleet: SimulatedFleet | None = None,
        on_exchange: ExchangeCallback | None = None,
        app_kind: AppKind = "fedfleet",
        app_calls: AppCalls | None = None,
    ) -> None:
        if num_nodes < 1:
            raise ValueError("num_nodes must be >= 1")
        self._client_app = client_app
        self._num_nodes = num_nodes
        self._run_config = run_config
        self._node_config_fn = node_config_fn
        self._run = Run.create_empty(run_id)
        self._contexts: dict[int, Context] = {}
        self._replies: dict[str, Message] = {}
        self._on_message = on_message
        self._batch_train = batch_train
        self.fleet = fleet
        self.cohort_stats = CohortStats()
        self._on_exchange = on_exchange
        self._flower = app_kind == "flower"
        self.app_calls = app_calls or AppCalls(client_app)
        self._last_poll: float | None = None  # wall time of the last node poll, if idle

    # -- Grid API -------------------------------------------------------------------
    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        if not self._flower or self.fleet is None:
            return range(self.NODE_ID_BASE, self.NODE_ID_BASE + self._num_nodes)
        now = time.perf_counter()
        if self._last_poll is not None and now - self._last_poll >= IDLE_POLL_S:
            self.fleet.next_hour()  # the server waited for nodes: so does the fleet
            now = time.perf_counter()
        self._last_poll = now
        return self.fleet.online_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._push(messages, timeout=None)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return list(self.pull_messages(list(self._push(messages, timeout=timeout))))

    def _push(self, messages: Iterable[Message], *, timeout: float | None) -> list[str]:
        """Deliver ``messages``; the replies that came back within ``timeout`` wait to
        be pulled."""
        batch = list(messages)
        self._last_poll = None  # the server is not idle
        for message in batch:
            message.metadata.__dict__["_message_id"] = uuid4().hex
            if message.has_content():
                # Flower's strategies put one RecordDict into every message; over a
                # network each client gets its own copy, and so it does here.
                message.content = for_client(message.content)
        t0 = time.perf_counter()
        delivered = self._deliver_all(batch, timeout=timeout)  # None: late
        replies = [reply for reply in delivered if reply is not None]
        for message, reply in zip(batch, delivered, strict=True):
            if reply is not None:
                self._replies[message.metadata.message_id] = reply
        if self._on_exchange is not None and batch:
            self._on_exchange(batch, replies, time.perf_counter() - t0, timeout)
        return [m.metadata.message_id for m in batch]

    # -- delivery ---------------------------------------------------------------------
    @property
    def materialised_clients(self) -> int:
        """Clients that have received at least one message (hold a Context)."""
        return len(self._contexts)

    def context_for(self, node_id: int) -> Context:
        """The node's Context, created on first use and kept across rounds."""
        ctx = self._contexts.get(node_id)
        if ctx is None:
            index = node_id - self.NODE_ID_BASE
            if not 0 <= index < self._num_nodes:
                raise ValueError(f"no simulated node with id {node_id}")
            ctx = Context(
                run_id=self._run.run_id,
                node_id=node_id,
                node_config=self._node_config_fn(index),
                state=RecordDict(),
                run_config=dict(self._run_config),
            )
            self._contexts[node_id] = ctx
        return ctx

    def _call_client(self, message: Message) -> Message:
        """One call of fedfleet's ClientApp; a client's failure is its reply (with the
        whole traceback), never the engine's crash."""
        ctx = self.context_for(message.metadata.dst_node_id)
        try:
            return self._client_app(message, ctx)
        except Exception as exc:
            reason = "".join(format_exception(exc))
            return Message(Error(code=ERROR_CLIENT_EXCEPTION, reason=reason), reply_to=message)

    def _call_all(
        self, messages: list[Message], timeout: float | None
    ) -> tuple[list[Message | None], list[float]]:
        """The admitted messages' ClientApp calls, one by one (fedfleet's apps) or through
        ``app_calls`` (a Flower app: timeouts honoured, maybe in workers): the replies
        (``None`` when late) and the seconds each took on this machine."""
        if not self._flower:
            outs: list[Message | None] = []
            seconds: list[float] = []
            for message in messages:
                t0 = time.perf_counter()
                outs.append(self._call_client(message))
                seconds.append(time.perf_counter() - t0)
            return outs, seconds
        contexts = [self.context_for(m.metadata.dst_node_id) for m in messages]
        results = self.app_calls.run(messages, contexts, timeout=timeout)
        replies: list[Message | None] = []
        for message, (outcome, _) in zip(messages, results, strict=True):
            if outcome is not None:  # a worker's call sends the node's Context back
                self._contexts[message.metadata.dst_node_id] = outcome.context
            replies.append(outcome.reply if outcome is not None else None)
        return replies, [spent for _, spent in results]

    def _run_admitted(
        self, messages: list[Message], timeout: float | None
    ) -> tuple[list[Message | None], list[float]]:
        """The admitted messages' replies (``None``: late) and the seconds each took:
        one batched cohort (fedfleet's apps), else call by call. The Ray engine
        (:mod:`simulation.ray_engine`) runs them on its workers instead."""
        if self._batch_train and len(messages) > 1:
            t0 = time.perf_counter()
            calls = [functools.partial(self._call_client, message) for message in messages]
            outs: list[Message | None] = list(run_cohort(calls, stats=self.cohort_stats))
            share = (time.perf_counter() - t0) / len(messages)
            return outs, [share] * len(messages)
        return self._call_all(messages, timeout)

    def _in_time(self, message: Message, reply: Message, timeout: float | None) -> bool:
        """Whether ``reply`` reaches the server within ``timeout`` simulated seconds (the
        device's, under a fleet; the call's own seconds were checked by ``_call_one``)."""
        if timeout is None or not self._flower or self.fleet is None:
            return True
        if reply.has_error():
            return True
        return self.fleet.duration_s(message, reply) <= timeout

    def _admit(self, message: Message) -> str | None:
        """The fleet's admission (``None``: delivered); a third-party app's SecAgg+
        round loses no device before its keys are shared (simulation/secaggplus_stages.py)."""
        if self.fleet is None:
            return None
        if not self._flower:
            return self.fleet.admit(message)
        return self.fleet.admit(message, can_drop=can_drop_out(message))

    def _deliver_all(self, batch: list[Message], *, timeout: float | None) -> list[Message | None]:
        replies: list[Message | None] = [None] * len(batch)
        admitted: list[int] = []
        for i, message in enumerate(batch):
            refusal = self._admit(message)
            if refusal is None:
                admitted.append(i)
            else:
                error = Error(code=ErrorCode.NODE_UNAVAILABLE, reason=refusal)
                replies[i] = Message(error, reply_to=message)
        outs, seconds = self._run_admitted([batch[i] for i in admitted], timeout)
        for i, reply, spent in zip(admitted, outs, seconds, strict=True):
            if reply is None or not self._in_time(batch[i], reply, timeout):
                if self.fleet is not None:
                    self.fleet.count_late()
                continue  # late: the server never gets it (Flower's send_and_receive)
            if reply.has_content():
                for_server(reply.content)
            if self.fleet is not None:
                reply = self.fleet.stamp(batch[i], reply, write=not self._flower)
            replies[i] = reply
            if self._on_message is not None:
                self._on_message(batch[i], reply, spent)
        return replies


def run_inprocess(
    *,
    server_app: ServerApp,
    client_app: ClientApp,
    num_nodes: int,
    run_config: dict[str, bool | int | float | str],
    node_config_fn: NodeConfigFn | None = None,
    on_message: Callable[[Message, Message, float], None] | None = None,
    batch_train: bool = False,
    fleet: SimulatedFleet | None = None,
    on_exchange: ExchangeCallback | None = None,
    app_kind: AppKind = "fedfleet",
    app_calls: AppCalls | None = None,
) -> InProcessGrid:
    """Run ``server_app`` to completion against ``num_nodes`` in-process clients."""
    grid = InProcessGrid(
        client_app=client_app,
        num_nodes=num_nodes,
        run_config=run_config,
        node_config_fn=node_config_fn or partition_node_config(num_nodes),
        on_message=on_message,
        batch_train=batch_train,
        fleet=fleet,
        on_exchange=on_exchange,
        app_kind=app_kind,
        app_calls=app_calls,
    )
    return run_grid(grid, server_app=server_app, run_config=run_config)


def run_grid(
    grid: InProcessGrid, *, server_app: ServerApp, run_config: dict[str, bool | int | float | str]
) -> InProcessGrid:
    """Run ``server_app`` to completion on ``grid`` (this engine's, or a subclass's)."""
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = grid.run.run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    server_context = Context(
        run_id=grid.run.run_id,
        node_id=SUPERLINK_NODE_ID,
        node_config={},
        state=RecordDict(),
        run_config=dict(run_config),
    )
    # Everything built so far (modules, apps, datasets) lives for the whole run: keep
    # the cyclic garbage collector from rescanning it at every full collection (the
    # rounds allocate many small objects, which trigger collections). Undone after,
    # when any garbage frozen with it is collected as usual (no gc.collect() first:
    # it would cost ~0.1 s of cold start to free a few start-up cycles early).
    gc.freeze()
    try:
        server_app(grid, server_context)
    finally:
        gc.unfreeze()
    return grid
