"""The fairness audit in the round loop (in-process engine, fedfleet's own ClientApp):
what leaves a client, and what a resumed run keeps."""

from __future__ import annotations

import json
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from coordinator.app import build_server_app
from coordinator.config import RunConfig
from coordinator.results import RoundRecord
from edge_client.app import handle_evaluate, handle_train
from edge_client.protocol import keys as k
from simulation.inprocess import run_inprocess

CONFIG = dict(
    task="credit-scoring",
    num_clients=4,
    clients_per_round=4,
    fraction_evaluate=1.0,
    sensitive_attribute="sex",
    partition="natural",
)


def _run(config: RunConfig, replies: list[Message] | None = None) -> list[RoundRecord]:
    app = ClientApp()
    app.train()(handle_train)

    @app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        reply = handle_evaluate(message, context)
        if replies is not None:
            replies.append(reply)
        return reply

    records: list[RoundRecord] = []
    run_inprocess(
        server_app=build_server_app(on_round=records.append),
        client_app=app,
        num_nodes=config.num_clients,
        run_config=config.as_run_config(),
    )
    return records


def test_only_accuracy_loss_and_per_group_counts_leave_a_client() -> None:
    replies: list[Message] = []
    (record,) = _run(RunConfig(**CONFIG, num_server_rounds=1), replies)  # type: ignore[arg-type]
    assert len(replies) == 4
    for reply in replies:
        assert list(reply.content.array_records) == []  # no arrays: no predictions, no records
        (metrics,) = reply.content.metric_records.values()
        assert set(metrics) == {
            k.NUM_EXAMPLES,
            k.EVAL_LOSS,
            k.EVAL_ACCURACY,
            k.EVAL_FAIRNESS_COUNTS,
        }
        counts = metrics[k.EVAL_FAIRNESS_COUNTS]
        assert isinstance(counts, list) and len(counts) == 2 * 4  # tp, fp, tn, fn per group
        assert sum(counts) == metrics[k.NUM_EXAMPLES]
    assert record.fairness is not None and record.fairness["clients_counted"] == 4
    total = sum(g["n"] for g in record.fairness["groups"].values())
    assert total == sum(int(r.content.metric_records[k.METRICS][k.NUM_EXAMPLES]) for r in replies)  # type: ignore[call-overload]


def test_a_resumed_run_keeps_the_audits_of_its_earlier_rounds(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _run(RunConfig(**CONFIG, num_server_rounds=1, out_dir=str(out)))  # type: ignore[arg-type]
    resumed = _run(RunConfig(**CONFIG, num_server_rounds=2, out_dir=str(out)))  # type: ignore[arg-type]
    assert [r.round for r in resumed] == [2]
    doc = json.loads((out / "metrics.json").read_text())
    assert [r["fairness"]["group_by"] for r in doc["rounds"]] == ["sex", "sex"]
    assert doc["fairness"]["round"] == 2


def test_under_secagg_the_counts_travel_only_inside_the_masked_sum() -> None:
    # Prepare: 5 clients, SecAgg+; the round starts from the run's initial model.
    from coordinator.app import initial_arrays
    from edge_client.data import partition_data
    from tasks import get_task
    from tasks.fairness import group_confusion_counts, group_metrics

    config = RunConfig(**{**CONFIG, "num_clients": 5, "clients_per_round": 5}, num_server_rounds=1)  # type: ignore[arg-type]
    from edge_client.secagg_client import register_secagg

    replies: list[Message] = []
    records: list[RoundRecord] = []
    secure_app = ClientApp()
    secure_app.train()(handle_train)

    @secure_app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        reply = handle_evaluate(message, context)
        replies.append(reply)
        return reply

    register_secagg(secure_app, train=handle_train)
    # Execute
    run_inprocess(
        server_app=build_server_app(on_round=records.append),
        client_app=secure_app,
        num_nodes=5,
        run_config={**config.as_run_config(), "secagg": True},
    )
    # Assert: no evaluate reply carries counts; the audit's groups are the start model's
    # counts summed over all five clients (what the masked sum revealed).
    (record,) = records
    assert record.extra["secagg_survivors"] == 5
    assert replies and all(
        k.EVAL_FAIRNESS_COUNTS not in r.content.metric_records[k.METRICS] for r in replies
    )
    spec = get_task("credit-scoring")
    model = spec.build_model()
    model.load_state_dict(initial_arrays(config).to_torch_state_dict())
    import torch

    total = 0
    for i in range(5):
        share = partition_data(
            task_name="credit-scoring", partition_id=i, num_partitions=5,
            partition="natural", seed=0,
        )  # fmt: skip
        with torch.no_grad():
            pred = model(torch.from_numpy(share.x_eval)).argmax(dim=1).numpy()
        assert share.s_eval is not None
        total = total + group_confusion_counts(share.y_eval, pred, share.s_eval, n_groups=2)
    expected = group_metrics(total, spec.sensitive_groups)  # type: ignore[arg-type]
    assert record.fairness is not None
    assert record.fairness["counts"].startswith("secure-aggregation")
    assert record.fairness["clients_counted"] == 5
    assert record.fairness["groups"] == expected["groups"]
    assert (
        record.fairness["demographic_parity_difference"]
        == expected["demographic_parity_difference"]
    )
