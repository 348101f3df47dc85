"""Hand-built replies for strategy tests."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from itertools import count

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

_ids = count()
logging.getLogger("flwr").setLevel(logging.WARNING)  # Flower logs every aggregation at INFO


@pytest.fixture(autouse=True)
def _server_identity() -> Iterator[None]:
    """Flower's Message needs the sender's identity; act as the ServerApp."""
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = 1
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    yield


def to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(np.ascontiguousarray(a)) for name, a in arrays.items()})


def instruction(node_id: int, arrays: Mapping[str, np.ndarray] | None = None) -> Message:
    content = RecordDict({"config": ConfigRecord({"server-round": 1})})
    if arrays is not None:
        content["arrays"] = to_record(arrays)
    message = Message(content, dst_node_id=node_id, message_type="train")
    message.metadata.__dict__["_message_id"] = f"m{next(_ids)}"
    return message


def reply(
    node_id: int,
    arrays: Mapping[str, np.ndarray],
    num_examples: float = 10,
    *,
    to: Message | None = None,
    metrics: Mapping[str, float] | None = None,
) -> Message:
    content = RecordDict(
        {
            "arrays": to_record(arrays),
            "metrics": MetricRecord({"num-examples": num_examples, **(metrics or {})}),
        }
    )
    return Message(content, reply_to=to or instruction(node_id))


@dataclass
class FakeGrid:
    """Enough of a Grid for ``configure_train``: the nodes it may instruct."""

    nodes: list[int]

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)


@pytest.fixture
def make_reply() -> Callable[..., Message]:
    return reply


@pytest.fixture
def make_instruction() -> Callable[..., Message]:
    return instruction


@pytest.fixture
def fake_grid() -> type[FakeGrid]:
    return FakeGrid


@pytest.fixture
def record_of() -> Callable[[Mapping[str, np.ndarray]], ArrayRecord]:
    return to_record
