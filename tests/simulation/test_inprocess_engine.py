"""The in-process engine: batching keeps results, clients are isolated and lazy."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from coordinator.app import build_server_app
from simulation.apps import batches_training, build_simulation_client_app
from simulation.inprocess import InProcessGrid, partition_node_config, run_inprocess
from simulation.settings import SimulateSettings


def _run_fedfleet(out: Path, *, batch_train: bool) -> InProcessGrid:
    settings = SimulateSettings(clients=30, clients_per_round=10, rounds=2, partition="dirichlet:1")
    run_config = {
        **settings.run_config(out_dir=str(out)).as_run_config(),
        **settings.feature_run_config(),
    }
    return run_inprocess(
        server_app=build_server_app(),
        client_app=build_simulation_client_app(),
        num_nodes=settings.clients,
        run_config=run_config,
        batch_train=batch_train,
    )


def test_batched_engine_gives_the_one_by_one_results(tmp_path: Path) -> None:
    import json

    # Execute: the same run, batched and message by message.
    grid = _run_fedfleet(tmp_path / "batched", batch_train=True)
    _run_fedfleet(tmp_path / "plain", batch_train=False)
    # Assert: batching happened, and changed nothing that matters.
    assert grid.cohort_stats.jobs == 20 and grid.cohort_stats.batches == 2
    a = torch.load(tmp_path / "batched" / "model.pt")
    b = torch.load(tmp_path / "plain" / "model.pt")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-5)
    rows_a = json.loads((tmp_path / "batched" / "metrics.json").read_text())["rounds"]
    rows_b = json.loads((tmp_path / "plain" / "metrics.json").read_text())["rounds"]
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert ra["accuracy"] == rb["accuracy"] and ra["clients"] == rb["clients"]
        assert ra["loss"] == pytest.approx(rb["loss"], abs=1e-6)


def test_only_fedfleets_own_client_app_is_batched() -> None:
    assert batches_training(build_simulation_client_app())
    assert not batches_training(ClientApp())


def _echo_server(node_ids: list[int], seen: list[Message]) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        content = RecordDict(
            {
                "arrays": ArrayRecord({"w": torch.zeros(3)}),
                "config": ConfigRecord({"lr": 0.1}),
            }
        )
        messages = [grid.create_message(content, "train", n, "1") for n in node_ids]
        seen.extend(grid.send_and_receive(messages))

    return app


def test_each_client_gets_its_own_copy_of_the_content() -> None:
    # Prepare: a client that vandalises what it received; Flower's strategies put the
    # same RecordDict into every message.
    client = ClientApp()

    @client.train()
    def train(message: Message, context: Context) -> Message:
        config = message.content["config"]
        got = float(config["lr"])  # type: ignore[arg-type]
        config["lr"] = 99.0
        del message.content["arrays"]
        return Message(RecordDict({"metrics": MetricRecord({"lr": got})}), reply_to=message)

    replies: list[Message] = []
    # Execute
    for batch_train in (False, True):
        replies.clear()
        run_inprocess(
            server_app=_echo_server([1000, 1001, 1002], replies),
            client_app=client,
            num_nodes=3,
            run_config={},
            batch_train=batch_train,
        )
        # Assert: every client saw the server's value, not a neighbour's change.
        assert [r.content["metrics"]["lr"] for r in replies] == [0.1, 0.1, 0.1]


def test_a_client_exception_becomes_its_error_reply() -> None:
    client = ClientApp()

    @client.train()
    def train(message: Message, context: Context) -> Message:
        if context.node_config["partition-id"] == 1:
            raise RuntimeError("disk full")
        return Message(RecordDict(), reply_to=message)

    replies: list[Message] = []
    run_inprocess(
        server_app=_echo_server([1000, 1001, 1002], replies),
        client_app=client,
        num_nodes=3,
        run_config={},
        batch_train=True,
    )
    errors = [r for r in replies if r.has_error()]
    assert len(replies) == 3 and len(errors) == 1
    assert errors[0].metadata.src_node_id == 1001 and "disk full" in errors[0].error.reason


def test_ten_thousand_clients_cost_nothing_until_they_train() -> None:
    client = ClientApp()

    @client.train()
    def train(message: Message, context: Context) -> Message:
        return Message(RecordDict(), reply_to=message)

    replies: list[Message] = []
    grid = run_inprocess(
        server_app=_echo_server([1000, 5000, 10999], replies),
        client_app=client,
        num_nodes=10_000,
        run_config={},
    )
    assert len(list(grid.get_node_ids())) == 10_000
    assert grid.materialised_clients == 3 and len(replies) == 3
    assert grid.context_for(5000).node_config == partition_node_config(10_000)(4000)
    with pytest.raises(ValueError, match="no simulated node"):
        grid.context_for(20_000)


@pytest.mark.parametrize("batch_train", [True, False])
def test_clients_without_data_count_for_nothing(tmp_path: Path, batch_train: bool) -> None:
    import json
    import math

    # Prepare: digits has 1,437 training samples, so of 2,000 IID clients 563 hold none.
    settings = SimulateSettings(clients=2000, clients_per_round=300, rounds=1)
    run_config = settings.run_config(out_dir=str(tmp_path)).as_run_config()
    # Execute
    run_inprocess(
        server_app=build_server_app(),
        client_app=build_simulation_client_app(),
        num_nodes=settings.clients,
        run_config=run_config,
        batch_train=batch_train,
    )
    # Assert: every reply is kept, none rejected, and the round's train loss is a
    # number (a client with no data reports 0 examples and a loss that weighs nothing).
    row = json.loads((tmp_path / "metrics.json").read_text())["rounds"][0]
    assert row["clients"] == 300 and row["rejected"] == 0
    assert math.isfinite(row["train_train-loss"]) and row["train_train-loss"] > 0
