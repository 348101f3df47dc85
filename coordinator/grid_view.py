"""Grid wrappers: a delegating base and the view of the clients a round selected.

Flower strategies sample from ``grid.get_node_ids()``; handing them
:class:`SelectedNodesGrid` makes them configure exactly the selected clients, so
sampling stays in the loop. :class:`DelegatingGrid` forwards every call to the wrapped
Grid; a wrapper overrides only the calls it changes.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run


class DelegatingGrid(Grid):
    """Forwards every Grid call to ``inner``."""

    def __init__(self, inner: Grid) -> None:
        self._inner = inner

    def set_run(self, run: Run) -> None:
        self._inner.set_run(run)

    @property
    def run(self) -> Run:
        return self._inner.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self._inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self._inner.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._inner.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self._inner.send_and_receive(messages, timeout=timeout)


class SelectedNodesGrid(DelegatingGrid):
    """Delegates to ``inner`` but reports ``node_ids`` as the only connected nodes."""

    def __init__(self, inner: Grid, node_ids: Iterable[int]) -> None:
        super().__init__(inner)
        self._node_ids = list(node_ids)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._node_ids)
