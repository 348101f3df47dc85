"""`fedfleet simulate --secagg --dropout 0.1` with 100 clients: completes and matches the
non-secure run's accuracy; bad secure-aggregation flags fail before any run folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from simulation.runner import run_simulation
from simulation.settings import SimulateSettings


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models train 100x slower when torch's threads fight over two busy cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_hundred_clients_ten_percent_dropout_matches_plain_accuracy(tmp_path: Path) -> None:
    """Prepare the same 100-client simulation with and without --secagg, 10% of the
    clients dropping after sharing keys; Assert every round applies with the
    survivors, and final accuracies are within 1 point."""
    common = dict(
        task="breast-cancer-mlp",
        clients=100,
        clients_per_round=100,
        rounds=3,
        lr=0.1,
        local_epochs=2,
        seed=5,
        dropout=0.1,
        dropout_stage="after-key-share",
    )
    docs = {}
    for secagg in (False, True):
        settings = SimulateSettings.build(config_file=None, overrides={**common, "secagg": secagg})
        out = tmp_path / f"secagg-{secagg}"
        out.mkdir()
        docs[secagg] = run_simulation(settings, out_dir=out, quiet=True)
    plain, secure = docs[False], docs[True]
    assert all(r["applied"] for r in secure["rounds"])
    assert [r["clients"] for r in secure["rounds"]] == [r["clients"] for r in plain["rounds"]]
    assert all(85 <= r["clients"] <= 95 for r in secure["rounds"])  # ~10% dropped
    assert all(r["secagg_failed"] == 0 for r in secure["rounds"])
    assert abs(secure["final_accuracy"] - plain["final_accuracy"]) <= 0.01
    assert secure["final_accuracy"] > 0.8  # it learned (the majority class is 0.63)
    saved = json.loads((tmp_path / "secagg-True" / "metrics.json").read_text())
    assert saved["rounds"][0]["secagg_survivors"] == secure["rounds"][0]["clients"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--secagg", "--secagg-threshold", "30"], "lower --secagg-threshold"),
        (["--secagg", "--secagg-degree", "3"], "even"),
        (["--secagg", "--clients", "2", "--clients-per-round", "2"], "at least 3 clients"),
        (["--secagg", "--strategy", "trimmed-mean"], "needs every client's update"),
        (["--secagg", "--secagg-bits", "64"], "between 2 and 32"),
        (["--dropout", "1.5"], "--dropout"),
        (["--dropout", "0.1", "--dropout-stage", "later"], "--dropout-stage"),
    ],
)
def test_bad_secure_aggregation_flags_fail_with_one_line(tmp_path: Path, flags, message) -> None:
    from fedfleet.cli import build_app

    out = tmp_path / "run"
    result = CliRunner().invoke(build_app(), ["simulate", *flags, "--out", str(out)])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_dropouts_are_a_function_of_seed_round_and_client_only() -> None:
    from simulation.dropout import drops_out

    draws = [drops_out(seed=1, server_round=2, client=c, rate=0.1) for c in range(2000)]
    again = [drops_out(seed=1, server_round=2, client=c, rate=0.1) for c in range(2000)]
    other_round = [drops_out(seed=1, server_round=3, client=c, rate=0.1) for c in range(2000)]
    assert draws == again
    assert draws != other_round
    assert 150 <= sum(draws) <= 250  # ~10%
    assert not any(drops_out(seed=1, server_round=2, client=c, rate=0.0) for c in range(100))


@pytest.mark.parametrize(
    ("stage", "message_type", "silent"),
    [
        ("after-key-share", "train", True),
        ("after-key-share", "train.secagg", True),
        ("after-key-share", "query.secagg_share", False),
        ("after-masked-input", "train.secagg", False),
        ("after-masked-input", "query.secagg_unmask", True),
        ("after-masked-input", "evaluate", False),
    ],
)
def test_dropout_mod_withholds_only_the_stage_and_later(stage, message_type, silent) -> None:
    """Prepare a client that drops this round (rate just below 1); Assert its reply is
    the unreachable-node error exactly for the messages of the stage and after."""
    from flwr.app import ConfigRecord, Context, Message, RecordDict
    from flwr.common.constant import ErrorCode

    from simulation.dropout import dropout_mod

    context = Context(
        run_id=1,
        node_id=1005,
        node_config={"partition-id": 5, "num-partitions": 10},
        state=RecordDict(),
        run_config={"dropout": 0.999999, "dropout-stage": stage, "seed": 0},
    )
    message = Message(
        RecordDict({"config": ConfigRecord({"server-round": 3})}),
        dst_node_id=1005,
        message_type=message_type,
    )
    calls = []

    def handler(m: Message, c: Context) -> Message:
        calls.append(m)
        return Message(RecordDict(), reply_to=m)

    reply = dropout_mod(message, context, handler)
    assert reply.has_error() is silent
    assert (len(calls) == 0) is silent
    if silent:
        assert reply.error.code == ErrorCode.NODE_UNAVAILABLE
