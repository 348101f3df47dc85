"""The attack harness: who attacks, what they send, and what robust aggregation buys."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity
from typer.testing import CliRunner

from coordinator.app import build_server_app, initial_arrays
from coordinator.config import RunConfig
from coordinator.results import RoundRecord
from edge_client.app import build_client_app
from simulation.attacks import (
    AttackSpec,
    attack_mod,
    attacker_partitions,
    flip_labels,
    poison_update,
)
from simulation.inprocess import run_inprocess
from simulation.settings import SimulateSettings

logging.getLogger("flwr").setLevel(logging.WARNING)


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("sign-flip", AttackSpec("sign-flip")),
        ("scale:-4", AttackSpec("scale", -4.0)),
        ("gaussian:0.5", AttackSpec("gaussian", 0.5)),
        ("label-flip", AttackSpec("label-flip")),
    ],
)
def test_attack_specs_parse_and_print_back(text: str, spec: AttackSpec) -> None:
    assert AttackSpec.parse(text) == spec
    assert str(spec) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("flip", "unknown attack 'flip'"),
        ("scale", "needs a number, e.g. --attack scale:-4"),
        ("gaussian:-1", "needs a number, e.g. --attack gaussian:0.5"),
        ("scale:nan", "needs a number"),
        ("sign-flip:3", "unknown attack"),
    ],
)
def test_bad_attack_specs_say_what_to_write(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AttackSpec.parse(text)


def test_attackers_are_a_fixed_fraction_chosen_by_the_seed() -> None:
    a = attacker_partitions(num_clients=50, fraction=0.2, seed=1)
    assert len(a) == 10 and a <= set(range(50))
    assert a == attacker_partitions(num_clients=50, fraction=0.2, seed=1)
    assert a != attacker_partitions(num_clients=50, fraction=0.2, seed=2)
    assert attacker_partitions(num_clients=50, fraction=0.0, seed=1) == frozenset()
    with pytest.raises(ValueError, match=r"fraction in \[0, 1\)"):
        attacker_partitions(num_clients=50, fraction=1.0, seed=1)


def test_model_poisoning_formulas() -> None:
    g = {"w": np.array([1.0, 2.0], dtype=np.float32), "n": np.array([3])}
    w = {"w": np.array([1.5, 1.0], dtype=np.float32), "n": np.array([3])}
    rng = np.random.default_rng(0)
    flip = poison_update(AttackSpec("sign-flip"), trained=w, global_arrays=g, rng=rng)
    np.testing.assert_allclose(flip["w"], [0.5, 3.0])  # g − (w − g)
    scaled = poison_update(AttackSpec("scale", 10.0), trained=w, global_arrays=g, rng=rng)
    np.testing.assert_allclose(scaled["w"], [6.0, -8.0])  # g + 10 (w − g)
    big = {"w": np.zeros(20_000, dtype=np.float32)}
    noisy = poison_update(AttackSpec("gaussian", 2.0), trained=big, global_arrays=big, rng=rng)
    assert noisy["w"].std() == pytest.approx(2.0, rel=0.05)
    assert flip["n"] is w["n"]  # integer buffers are left alone


def test_label_flip_maps_every_label_to_a_wrong_one() -> None:
    y = np.arange(10)
    flipped = flip_labels(y, 10)
    np.testing.assert_array_equal(flipped, 9 - y)
    assert (flip_labels(np.array([0, 1]), 2) == np.array([1, 0])).all()


def _train_message(config: RunConfig) -> Message:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    content = RecordDict(
        {
            "arrays": initial_arrays(config),
            "config": ConfigRecord({"server-round": 1, "local-epochs": 1, "learning-rate": 0.1}),
        }
    )
    message = Message(content, dst_node_id=1003, message_type="train")
    message.metadata.__dict__["_message_id"] = "m1"
    return message


def _weights(reply: Message) -> dict[str, np.ndarray]:
    record: ArrayRecord = reply.content.array_records["arrays"]
    return {k: a.numpy() for k, a in record.items()}


def _context(partition: int, run_config: dict) -> Context:
    node_config = {"partition-id": partition, "num-partitions": 4}
    return Context(
        run_id=1, node_id=1003, node_config=node_config, state=RecordDict(), run_config=run_config
    )


@pytest.mark.parametrize("attack", ["sign-flip", "label-flip"])
def test_the_mod_changes_only_attackers_replies(attack: str) -> None:
    config = RunConfig(task="breast-cancer-mlp", num_clients=4, clients_per_round=4)
    run_config = {**config.as_run_config(), "attack": attack, "attackers": 0.25}
    (bad,) = attacker_partitions(num_clients=4, fraction=0.25, seed=0)
    app, honest_app = build_client_app(mods=[attack_mod]), build_client_app()
    for partition in range(4):
        got = _weights(app(_train_message(config), _context(partition, run_config)))
        honest = _weights(honest_app(_train_message(config), _context(partition, run_config)))
        same = all(np.array_equal(got[k], honest[k]) for k in honest)
        assert same == (partition != bad)
        if attack == "sign-flip" and partition == bad:
            g = {k: a.numpy() for k, a in initial_arrays(config).items()}
            for k in honest:
                np.testing.assert_allclose(got[k] - g[k], -(honest[k] - g[k]), atol=1e-6)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"attackers": 0.2}, "--attackers is set but --attack is not"),
        ({"attack": "sign-flip"}, "--attackers is 0"),
        ({"attack": "sign-flip", "attackers": 1.2}, "fraction in"),
        ({"deadline": 30.0}, "needs simulated device speeds"),
        ({"speeds": "pareto:0"}, "pareto needs a positive number"),
        ({"strategy_options": "server-lr"}, "is not NAME=VALUE"),
        (
            {"strategy": "bulyan", "attack": "sign-flip", "attackers": 0.2},
            "raise clients-per-round to 11 or lower strategy-byzantine to 1",
        ),
    ],
)
def test_bad_attack_and_strategy_flags_are_refused(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SimulateSettings.build(config_file=None, overrides=overrides)


def test_cli_refuses_too_few_clients_for_bulyan_in_one_line(tmp_path: Path) -> None:
    from fedfleet.cli import build_app

    out = tmp_path / "run"
    args = ["simulate", "--strategy", "bulyan", "--attack", "sign-flip", "--attackers", "0.2"]
    result = CliRunner().invoke(build_app(), [*args, "--out", str(out)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "raise clients-per-round to 11" in lines[0]
    assert not out.exists()


def _final_accuracy(strategy: str, attack: str | None) -> float:
    overrides: dict = {
        "task": "breast-cancer-mlp",
        "strategy": strategy,
        "clients": 10,
        "clients_per_round": 10,
        "rounds": 5,
        # One plain-SGD epoch, the training the thresholds below were measured for: with
        # the task's defaults (5 epochs, momentum 0.9) honest clients learn breast cancer
        # so fast that 20% sign-flippers cost FedAvg under a point (0.974 → 0.965).
        "lr": 0.05,
        "local_epochs": 1,
        "momentum": 0.0,
    }
    if attack:
        overrides.update(attack=attack, attackers=0.2)
    settings = SimulateSettings.build(config_file=None, overrides=overrides)
    run_config = {**settings.run_config().as_run_config(), **settings.feature_run_config()}
    records: list[RoundRecord] = []
    run_inprocess(
        server_app=build_server_app(on_round=records.append),
        client_app=build_client_app(mods=[attack_mod]),
        num_nodes=settings.clients,
        run_config=run_config,
    )
    return records[-1].accuracy


@pytest.mark.slow
def test_sign_flip_attackers_hurt_fedavg_but_not_robust_aggregation() -> None:
    # Prepare/Execute: 10 clients, 2 of them (20%) send negated updates.
    clean = _final_accuracy("fedavg", None)
    fedavg = _final_accuracy("fedavg", "sign-flip")
    multikrum = _final_accuracy("multikrum", "sign-flip")
    trimmed = _final_accuracy("trimmed-mean", "sign-flip")
    # Assert
    assert clean >= 0.88
    assert fedavg <= clean - 0.03  # FedAvg degrades
    assert multikrum >= clean - 0.05  # robust aggregation stays within 5 points
    assert trimmed >= clean - 0.05
