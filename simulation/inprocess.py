"""The in-process engine: an implementation of Flower's ``Grid`` that delivers each
message straight to a ``ClientApp`` in this process. No Ray, no gRPC, no subprocesses.

The ServerApp and ClientApp run unchanged — the same objects Flower would load — so a
simulation exercises the code that deploys. Clients are lazily materialised: a node is
an id and a node config until it first receives a message; its ``Context`` (and the
state a mod keeps in it) is created then and kept for later rounds.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterable
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

ERROR_CLIENT_EXCEPTION = 1  # Error.code of a reply when the ClientApp raised


class InProcessGrid(Grid):
    """Runs ``client_app`` for each pushed message; replies are ready at once.

    ``node_config_fn(i)`` gives client ``i``'s node config (``partition-id`` etc.);
    node ids are ``1000 + i`` so they never collide with Flower's SuperLink id.
    ``on_message`` (if given) sees every (instruction, reply, seconds) for progress.
    """

    NODE_ID_BASE = 1000

    def __init__(
        self,
        *,
        client_app: ClientApp,
        num_nodes: int,
        run_config: dict[str, bool | int | float | str],
        node_config_fn: Callable[[int], dict[str, bool | int | float | str]],
        run_id: int = 1,
        on_message: Callable[[Message, Message, float], None] | None = None,
    ) -> None:
        self._client_app = client_app
        self._num_nodes = num_nodes
        self._run_config = run_config
        self._node_config_fn = node_config_fn
        self._run = Run.create_empty(run_id)
        self._contexts: dict[int, Context] = {}
        self._replies: dict[str, Message] = {}
        self._on_message = on_message

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
        return range(self.NODE_ID_BASE, self.NODE_ID_BASE + self._num_nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = uuid4().hex
            self._replies[message.metadata.message_id] = self._deliver(message)
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return list(self.pull_messages(list(self.push_messages(messages))))

    # -- delivery ---------------------------------------------------------------------
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

    def _deliver(self, message: Message) -> Message:
        t0 = time.perf_counter()
        ctx = self.context_for(message.metadata.dst_node_id)
        try:
            reply = self._client_app(message, ctx)
        except Exception as exc:  # a client's failure is its reply, never the engine's crash
            reason = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
            reply = Message(Error(code=ERROR_CLIENT_EXCEPTION, reason=reason), reply_to=message)
        if self._on_message is not None:
            self._on_message(message, reply, time.perf_counter() - t0)
        return reply


def run_inprocess(
    *,
    server_app: ServerApp,
    client_app: ClientApp,
    num_nodes: int,
    run_config: dict[str, bool | int | float | str],
    node_config_fn: Callable[[int], dict[str, bool | int | float | str]] | None = None,
    on_message: Callable[[Message, Message, float], None] | None = None,
) -> InProcessGrid:
    """Run ``server_app`` to completion against ``num_nodes`` in-process clients."""
    if node_config_fn is None:

        def node_config_fn(i: int) -> dict[str, bool | int | float | str]:
            return {"partition-id": i, "num-partitions": num_nodes}

    grid = InProcessGrid(
        client_app=client_app,
        num_nodes=num_nodes,
        run_config=run_config,
        node_config_fn=node_config_fn,
        on_message=on_message,
    )
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
    server_app(grid, server_context)
    return grid
