"""q-FFL (Flower's QFedAvg) in the registry: its knobs, its loss key, what it refuses."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

from edge_client.protocol import keys as k
from strategies import StrategyParams, build_strategy, needs_individual_updates
from strategies.catalog import TRAIN_LOSS_KEY


def test_the_loss_key_is_the_clients_one() -> None:
    assert TRAIN_LOSS_KEY == k.TRAIN_LOSS


def test_qffl_needs_individual_updates_and_a_learning_rate() -> None:
    assert needs_individual_updates("qffl")  # secure aggregation refuses it
    with pytest.raises(ValueError, match="strategy-client-lr"):
        build_strategy("qffl", StrategyParams())
    with pytest.raises(ValueError, match="strategy-q"):
        StrategyParams.from_run_config({"strategy-q": -1.0})


def _reply(weights: np.ndarray, loss: float) -> Message:
    content = RecordDict(
        {
            k.ARRAYS: ArrayRecord([weights]),
            k.METRICS: MetricRecord({k.NUM_EXAMPLES: 10, k.TRAIN_LOSS: loss}),
        }
    )
    return Message(content=content, dst_node_id=1, message_type="train")


def test_a_client_with_higher_loss_pulls_the_model_further_than_fedavg_would() -> None:
    # Prepare: global w = 0; client A (loss 2.0) moved to +1, client B (loss 0.5) to -1.
    from flwr.serverapp.strategy import QFedAvg

    strategy = build_strategy("qffl", StrategyParams(q=2.0, client_lr=0.1))
    assert isinstance(strategy, QFedAvg)
    strategy.current_arrays = ArrayRecord([np.zeros(1, dtype=np.float32)])
    replies = [_reply(np.ones(1, np.float32), 2.0), _reply(-np.ones(1, np.float32), 0.5)]
    # Execute
    arrays, _ = strategy.aggregate_train(1, replies)
    # Assert: FedAvg would give 0; q-FFL moves toward the high-loss client.
    assert arrays is not None
    assert float(arrays.to_numpy_ndarrays()[0][0]) > 0.05
