"""Distributed DP at the client: the secure-aggregation pre-mask transform."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from edge_client.dp_mods import distributed_dp_share, share_parameters
from privacy.dp.config import RC_DP, RC_DP_CLIP, RC_DP_EPSILON
from privacy.dp.distributed import global_norm
from privacy.secagg.arrays import MaskInput

RUN = {
    "num-clients": 100,
    "clients-per-round": 10,
    "num-server-rounds": 5,
    RC_DP: "distributed",
    RC_DP_EPSILON: 4.0,
    RC_DP_CLIP: 0.5,
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
    assert distributed_dp_share(item, context({RC_DP: "local", RC_DP_EPSILON: 1.0})) is item
    assert distributed_dp_share(item, context({})) is item


def test_share_says_it_is_inactive_exactly_when_it_is_a_no_op() -> None:
    """Assert ``active`` is False where the share returns the item unchanged (the secure
    client then skips building the update) and True under distributed DP."""
    item = MaskInput(update=np.ones(3), weight=5, clip=1.0, participants=3)
    for run in ({RC_DP: "local", RC_DP_EPSILON: 1.0}, {}):
        assert not distributed_dp_share.active(context(run))
        assert distributed_dp_share(item, context(run)) is item
    assert distributed_dp_share.active(context(RUN))
