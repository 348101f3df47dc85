"""The coordinator's DP: set-up checks, uniform weighting, the per-round accountant,
refusal counting, and client-level DP-FedAvg runs in the in-process engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Error, Message, MetricRecord, RecordDict

from coordinator.config import RunConfig
from coordinator.dp import DPAccountant, RefusalCountingExchange, UniformWeights
from coordinator.privacy_checks import check_dp_setup, distributed_noise_multiplier
from edge_client.protocol import keys as k
from edge_client.protocol import secagg as sa
from privacy.dp import DPConfig, Mechanism, epsilon
from privacy.dp.config import RC_DP, RC_DP_CLIP, RC_DP_CLIPPING, RC_DP_NOISE_MULTIPLIER
from strategies import build_strategy


@pytest.fixture(autouse=True)
def _task_identity():
    """Flower's Message needs the identity of the running task (run_inprocess sets it)."""
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID


def reply(node: int, value: float, weight: int, *, extra: dict | None = None) -> Message:
    instruction = Message(RecordDict(), dst_node_id=node, message_type="train")
    metrics = MetricRecord({k.NUM_EXAMPLES: weight, **(extra or {})})
    arrays = ArrayRecord({"w": Array(np.full(3, value, dtype=np.float32))})
    return Message(RecordDict({k.ARRAYS: arrays, k.METRICS: metrics}), reply_to=instruction)


def refusal(node: int, code: int = k.ERROR_DP_REFUSED) -> Message:
    instruction = Message(RecordDict(), dst_node_id=node, message_type="train")
    return Message(Error(code=code, reason="budget"), reply_to=instruction)


CORE = RunConfig(num_clients=20, clients_per_round=10, num_server_rounds=5)


@pytest.mark.parametrize(
    ("dp", "core", "run_config", "message"),
    [
        (DPConfig(mode="central", epsilon=2.0), RunConfig(strategy="krum"), {}, "not a mean"),
        (DPConfig(mode="central", epsilon=2.0), CORE, {"secagg": True}, "--dp distributed"),
        (DPConfig(mode="distributed", epsilon=2.0), CORE, {}, "add --secagg"),
        (
            DPConfig(mode="distributed", epsilon=2.0, min_clients=11),
            CORE,
            {"secagg": True, "secagg-clip": 100.0},
            "dp-min-clients 11",
        ),
        (
            DPConfig(mode="distributed", epsilon=2.0),
            CORE,
            {"secagg": True, "secagg-clip": 1.0},
            "raise --secagg-clip to at least",
        ),
        (DPConfig(mode="central", epsilon=2.0, delta=0.1), CORE, {}, "1/20"),
    ],
)
def test_combinations_that_cannot_work_are_refused(
    dp: DPConfig, core: RunConfig, run_config: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        check_dp_setup(dp, core, run_config)


def test_distributed_with_enough_secagg_range_is_accepted() -> None:
    check_dp_setup(
        DPConfig(mode="distributed", epsilon=2.0),
        CORE,
        {"secagg": True, "secagg-clip": 50.0},
    )


def test_uniform_weights_make_fedavg_an_unweighted_mean() -> None:
    # Prepare: a client with 100 examples and one with 1
    strategy = UniformWeights(build_strategy("fedavg"))
    # Execute
    arrays, _ = strategy.aggregate_train(1, [reply(1, 1.0, 100), reply(2, 3.0, 1)])
    # Assert
    assert arrays is not None
    np.testing.assert_allclose(arrays["w"].numpy(), np.full(3, 2.0))


def test_central_accountant_composes_applied_rounds_only() -> None:
    dp = DPConfig(mode="central", noise_multiplier=1.1)
    accountant = DPAccountant(dp=dp, config=CORE, min_clients=2)
    full = [reply(i, 0.0, 1) for i in range(10)]
    _, r1 = accountant(1, full)
    _, r2 = accountant(2, full[:1])  # below quorum: nothing released, nothing spent
    _, r3 = accountant(3, full[:5])  # half the clients: noise was scaled for 10
    expected1 = epsilon([Mechanism(0.5, 1.1, 1)], delta=1e-5)
    expected3 = epsilon([Mechanism(0.5, 1.1, 1), Mechanism(0.5, 0.55, 1)], delta=1e-5)
    assert r1["epsilon"] == pytest.approx(expected1)
    assert r2["epsilon"] == pytest.approx(expected1)
    assert r3["epsilon"] == pytest.approx(expected3)
    assert r1["dp_noise_multiplier"] == 1.1


def test_distributed_accountant_drops_sums_short_of_noise() -> None:
    dp = DPConfig(mode="distributed", epsilon=3.0, min_clients=4)
    accountant = DPAccountant(dp=dp, config=CORE)
    summed = reply(1, 0.0, 3, extra={sa.AGGREGATED_CLIENTS: 3})
    kept, stats = accountant(1, [summed])
    assert kept == [] and stats["dp_short_of_noise"] == 1.0 and stats["epsilon"] == 0.0
    summed = reply(1, 0.0, 6, extra={sa.AGGREGATED_CLIENTS: 6})
    kept, stats = accountant(2, [summed])
    sigma = distributed_noise_multiplier(dp, CORE)
    assert kept == [summed]
    assert stats["epsilon"] == pytest.approx(epsilon([Mechanism(0.5, sigma, 1)], delta=1e-5))


def test_local_accountant_reports_the_largest_site_epsilon_and_refusals() -> None:
    class Plain:
        def exchange(self, grid, messages, *, server_round, timeout):
            return list(messages)

    counting = RefusalCountingExchange(Plain())
    sent = [reply(1, 0.0, 5, extra={k.DP_EPSILON: 0.7}), refusal(2), refusal(3, code=1)]
    replies = counting.exchange(None, sent, server_round=4, timeout=1.0)  # type: ignore[arg-type]
    accountant = DPAccountant(
        dp=DPConfig(mode="local", epsilon=1.0), config=CORE, refusals=counting
    )
    _, stats = accountant(4, [m for m in replies if not m.has_error()])
    assert stats == {"dp_refused": 1.0, "epsilon": 0.7}
    _, stats = accountant(5, [reply(2, 0.0, 5, extra={k.DP_EPSILON: 0.2})])
    assert stats == {"dp_refused": 0.0, "epsilon": 0.7}


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.parametrize("clipping", ["fixed", "adaptive"])
def test_central_dp_run_reports_epsilon_per_round(
    tmp_path: Path, clipping: str, one_thread: None
) -> None:
    from coordinator.app import build_server_app
    from edge_client.app import build_client_app
    from simulation.inprocess import run_inprocess

    # Prepare
    run_config: dict[str, bool | int | float | str] = {
        "task": "breast-cancer-mlp",
        "num-server-rounds": 3,
        "num-clients": 8,
        "clients-per-round": 4,
        "out-dir": str(tmp_path),
        RC_DP: "central",
        RC_DP_NOISE_MULTIPLIER: 0.8,
        RC_DP_CLIP: 0.5,
        RC_DP_CLIPPING: clipping,
    }
    # Execute
    run_inprocess(
        server_app=build_server_app(),
        client_app=build_client_app(),
        num_nodes=8,
        run_config=run_config,
    )
    # Assert
    rounds = json.loads((tmp_path / "metrics.json").read_text())["rounds"]
    expected = [epsilon([Mechanism(0.5, 0.8, 1)] * r, delta=1e-5) for r in (1, 2, 3)]
    assert [r["epsilon"] for r in rounds] == pytest.approx(expected)
    assert all(r["applied"] and r["clients"] == 4 for r in rounds)
    assert all(np.isfinite(r["loss"]) for r in rounds)
