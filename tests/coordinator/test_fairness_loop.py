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
