"""The round loop on the in-process engine: learning, determinism, quorum, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp

from coordinator.app import build_server_app
from coordinator.config import RunConfig
from coordinator.loop import UniformSelector
from coordinator.results import RoundRecord
from edge_client.app import app as client_app
from edge_client.app import handle_evaluate, handle_train
from simulation.inprocess import run_inprocess


def _run(config: RunConfig, app: ClientApp = client_app) -> list[RoundRecord]:
    records: list[RoundRecord] = []
    run_inprocess(
        server_app=build_server_app(on_round=records.append),
        client_app=app,
        num_nodes=config.num_clients,
        run_config=config.as_run_config(),
    )
    return records


def test_ten_clients_three_rounds_improve_accuracy(tmp_path: Path) -> None:
    config = RunConfig(
        task="breast-cancer-mlp",
        num_clients=10,
        clients_per_round=10,
        num_server_rounds=3,
        learning_rate=0.05,
        out_dir=str(tmp_path),
    )
    records = _run(config)
    assert [r.round for r in records] == [1, 2, 3]
    assert all(r.clients == 10 and r.applied for r in records)
    assert records[-1].accuracy > records[0].accuracy - 1e-9
    assert records[-1].accuracy >= 0.85
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["final_accuracy"] == pytest.approx(records[-1].accuracy)
    assert doc["config"]["task"] == "breast-cancer-mlp"
    assert (tmp_path / "model.pt").stat().st_size > 0
    assert (tmp_path / "metrics.csv").read_text().startswith("round,")


def test_same_seed_same_metrics_and_different_seed_differs() -> None:
    base = dict(task="breast-cancer-mlp", num_clients=6, clients_per_round=3, num_server_rounds=2)
    a = _run(RunConfig(**base, seed=1))
    b = _run(RunConfig(**base, seed=1))
    c = _run(RunConfig(**base, seed=2))
    assert [(r.accuracy, r.loss) for r in a] == [(r.accuracy, r.loss) for r in b]
    assert [(r.accuracy, r.loss) for r in a] != [(r.accuracy, r.loss) for r in c]


def test_selector_is_seeded_and_samples_without_replacement() -> None:
    nodes = list(range(1000, 1100))
    sel = UniformSelector(clients_per_round=10, seed=4)
    first = sel.select(1, nodes)
    assert first == sel.select(1, nodes)
    assert len(set(first)) == 10 and set(first) <= set(nodes)
    assert first != sel.select(2, nodes)


def _failing_app(fail_ids: set[int]) -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(message: Message, context: Context) -> Message:
        if int(context.node_config["partition-id"]) in fail_ids:
            raise RuntimeError("disk on fire")
        return handle_train(message, context)

    app.evaluate()(handle_evaluate)
    return app


def test_failing_clients_are_counted_and_the_round_still_applies() -> None:
    config = RunConfig(
        task="breast-cancer-mlp",
        num_clients=5,
        clients_per_round=5,
        num_server_rounds=1,
        min_clients=3,
    )
    (record,) = _run(config, _failing_app({0, 1}))
    assert record.clients == 3 and record.failures == 2 and record.applied


def test_below_quorum_the_global_model_is_unchanged(tmp_path: Path) -> None:
    config = RunConfig(
        task="breast-cancer-mlp",
        num_clients=5,
        clients_per_round=5,
        num_server_rounds=2,
        min_clients=4,
        out_dir=str(tmp_path),
    )
    records = _run(config, _failing_app({0, 1, 2}))
    assert not any(r.applied for r in records)
    # unchanged model → identical central evaluation in both rounds
    assert records[0].accuracy == records[1].accuracy and records[0].loss == records[1].loss


def test_resume_from_checkpoint_equals_uninterrupted_run(tmp_path: Path) -> None:
    base = dict(task="breast-cancer-mlp", num_clients=6, clients_per_round=3, seed=5)
    full = _run(RunConfig(**base, num_server_rounds=3, out_dir=str(tmp_path / "full")))
    # "crash" after 2 rounds, then run again to 3 rounds in the same folder
    part = tmp_path / "part"
    _run(RunConfig(**base, num_server_rounds=2, out_dir=str(part)))
    resumed = _run(RunConfig(**base, num_server_rounds=3, out_dir=str(part)))
    assert [r.round for r in resumed] == [3]
    assert resumed[0].accuracy == full[2].accuracy and resumed[0].loss == full[2].loss
    import torch

    a = torch.load(tmp_path / "full" / "model.pt")
    b = torch.load(part / "model.pt")
    for key in a:
        np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())
    doc = json.loads((part / "metrics.json").read_text())
    assert [r["round"] for r in doc["rounds"]] == [1, 2, 3]


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (
            {"clients-per-round": 50, "num-clients": 10},
            "clients-per-round .50. is larger than clients",
        ),
        ({"task": "mnist"}, "unknown task"),
        ({"partition": "dirichlet:-2"}, "ALPHA must be > 0"),
        ({"num-server-rounds": "many"}, "not a valid int"),
        ({"learning-rate": 0}, "learning-rate must be a positive"),
    ],
)
def test_run_config_refuses_bad_values(overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RunConfig.from_run_config(overrides)


def test_client_error_reply_is_an_error_not_a_crash() -> None:
    from simulation.inprocess import InProcessGrid

    grid = InProcessGrid(
        client_app=_failing_app({0}),
        num_nodes=1,
        run_config={},
        node_config_fn=lambda i: {"partition-id": i, "num-partitions": 1},
    )
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    msg = Message(RecordDict(), 1000, "train")
    (reply,) = grid.send_and_receive([msg])
    assert reply.has_error() and "disk on fire" in reply.error.reason
    assert isinstance(reply.error, Error)
