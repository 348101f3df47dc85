"""Budget exhaustion in the in-process engine: a site with a small budget takes part in
the first rounds, then refuses; the run goes on with the others; the refusal is in the
site's ledger and in the run's metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edge_client.data import partition_data
from edge_client.protocol import keys as k
from edge_client.protocol.site import NC_DP_BUDGET_EPSILON
from privacy.dp import DPConfig, epsilon, local_mechanism
from privacy.dp.config import RC_DP, RC_DP_CLIP, RC_DP_NOISE_MULTIPLIER
from privacy.ledger import LEDGER_FILE, PrivacyLedger

TASK, CLIENTS, ROUNDS, SIGMA = "breast-cancer-mlp", 3, 4, 1.0
# The run's local training, which the budget plan must price (not the task's defaults).
LOCAL_EPOCHS, BATCH = 1, 16


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _plan(partition_id: int):
    data = partition_data(
        task_name=TASK, partition_id=partition_id, num_partitions=CLIENTS, partition="iid", seed=0
    )
    dp = DPConfig(mode="local", noise_multiplier=SIGMA)
    return local_mechanism(
        dp,
        num_examples=len(data.x_train),
        batch_size=BATCH,
        local_epochs=LOCAL_EPOCHS,
        rounds=ROUNDS,
    )


@pytest.mark.slow
def test_small_budget_site_trains_then_refuses_and_the_run_continues(tmp_path: Path) -> None:
    from coordinator.app import build_server_app
    from edge_client.app import build_client_app
    from simulation.inprocess import run_inprocess

    # Prepare: client 0's budget fits exactly two of its trainings
    two_rounds = epsilon([_plan(0)] * 2, delta=1e-5)
    small = two_rounds * 1.001

    def node_config(i: int) -> dict[str, bool | int | float | str]:
        config: dict[str, bool | int | float | str] = {
            k.NC_PARTITION_ID: i,
            k.NC_NUM_PARTITIONS: CLIENTS,
        }
        if i == 0:
            config[NC_DP_BUDGET_EPSILON] = small
        return config

    run_config: dict[str, bool | int | float | str] = {
        "task": TASK,
        "num-server-rounds": ROUNDS,
        "num-clients": CLIENTS,
        "clients-per-round": CLIENTS,
        "learning-rate": 0.1,
        "local-epochs": LOCAL_EPOCHS,
        "batch-size": BATCH,
        "out-dir": str(tmp_path),
        RC_DP: "local",
        RC_DP_NOISE_MULTIPLIER: SIGMA,
        RC_DP_CLIP: 1.0,
    }
    # Execute
    run_inprocess(
        server_app=build_server_app(),
        client_app=build_client_app(),
        num_nodes=CLIENTS,
        run_config=run_config,
        node_config_fn=node_config,
    )
    # Assert: the site's ledger
    path = tmp_path / LEDGER_FILE
    small_site = PrivacyLedger(path, site="client-0").entries()
    assert [(e.server_round, e.status) for e in small_site] == [
        (1, "completed"),
        (2, "completed"),
        (3, "refused"),
        (4, "refused"),
    ]
    assert all("would be exceeded" in e.reason for e in small_site[2:])
    assert PrivacyLedger(path, site="client-0").spent(task=TASK, delta=1e-5) <= small
    others = PrivacyLedger(path, site="client-1").entries()
    assert [e.status for e in others] == ["completed"] * ROUNDS
    # Assert: the run's metrics
    doc = json.loads((tmp_path / "metrics.json").read_text())
    rounds = doc["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]
    assert [r["dp_refused"] for r in rounds] == [0, 0, 1, 1]
    assert [r["clients"] for r in rounds] == [3, 3, 2, 2]
    assert all(r["applied"] for r in rounds)
    eps = [r["epsilon"] for r in rounds]
    assert eps == sorted(eps) and eps[0] > 0
    assert eps[-1] == pytest.approx(epsilon([_plan(1)] * ROUNDS, delta=1e-5), rel=1e-6)
