"""Distributed DP at the client: the secure-aggregation pre-mask transform and the mod."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict

from edge_client import messages as k
from edge_client.dp_mods import distributed_dp_mod, distributed_dp_share, share_parameters
from privacy.dp.distributed import global_norm
from privacy.secagg.arrays import MaskInput

RUN = {
    "num-clients": 100,
    "clients-per-round": 10,
    "num-server-rounds": 5,
    k.RC_DP: "distributed",
    k.RC_DP_EPSILON: 4.0,
    k.RC_DP_CLIP: 0.5,
}


@pytest.fixture(autouse=True)
def _task_identity():
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID


def context(run_config: dict) -> Context:
    return Context(
        run_id=1, node_id=1001, node_config={}, state=RecordDict(), run_config=run_config
    )


def test_share_clips_adds_the_noise_share_and_weights_one() -> None:
    # Prepare: a big update of 20k coordinates
    update = np.full(20_000, 0.1)
    item = MaskInput(update=update, weight=37, clip=50.0, participants=10)
    _, sigma, n_min = share_parameters(RUN)
    # Execute
    out = distributed_dp_share(item, context(RUN))
    # Assert
    assert out.weight == 1 and out.clip == 50.0 and out.participants == 10
    noise = out.update - update * (0.5 / global_norm([update]))
    assert noise.std() == pytest.approx(sigma * 0.5 / np.sqrt(n_min), rel=0.04)
    assert n_min == 10 and sigma > 0


def test_share_is_a_no_op_without_distributed_dp() -> None:
    item = MaskInput(update=np.ones(3), weight=5, clip=1.0, participants=3)
    assert distributed_dp_share(item, context({k.RC_DP: "local", k.RC_DP_EPSILON: 1.0})) is item
    assert distributed_dp_share(item, context({})) is item


def _train_message() -> Message:
    arrays = ArrayRecord({"w": Array(np.zeros((100, 100), dtype=np.float32))})
    return Message(RecordDict({k.ARRAYS: arrays}), dst_node_id=1001, message_type="train")


def _trained(message: Message, ctx: Context) -> Message:
    arrays = ArrayRecord({"w": Array(np.full((100, 100), 0.05, dtype=np.float32))})
    metrics = MetricRecord({k.NUM_EXAMPLES: 80, k.TRAIN_LOSS: 0.3})
    return Message(RecordDict({k.ARRAYS: arrays, k.METRICS: metrics}), reply_to=message)


def test_mod_replaces_the_reply_with_global_plus_noisy_clipped_update() -> None:
    reply = distributed_dp_mod(_train_message(), context(RUN), _trained)
    metrics = reply.content.metric_records[k.METRICS]
    assert metrics[k.NUM_EXAMPLES] == 1
    assert metrics[k.DP_UPDATE_NORM] == pytest.approx(5.0, rel=1e-5)  # 0.05 * 100
    w = reply.content.array_records[k.ARRAYS]["w"].numpy()
    assert w.dtype == np.float32 and w.shape == (100, 100)
    _, sigma, n_min = share_parameters(RUN)
    signal = 0.05 * 0.5 / 5.0
    assert (w - signal).std() == pytest.approx(sigma * 0.5 / np.sqrt(n_min), rel=0.05)


def test_mod_passes_other_runs_and_messages_through() -> None:
    plain = distributed_dp_mod(_train_message(), context({}), _trained)
    assert plain.content.metric_records[k.METRICS][k.NUM_EXAMPLES] == 80
    evaluate = Message(RecordDict(), dst_node_id=1001, message_type="evaluate")
    seen = []
    distributed_dp_mod(evaluate, context(RUN), lambda m, c: seen.append(m) or m)
    assert seen == [evaluate]
