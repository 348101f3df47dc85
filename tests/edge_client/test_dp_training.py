"""DP-SGD at a site: Opacus training, layer fixes, and the ClientApp's refusals."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from torch import nn

from edge_client.dp_training import make_dp_compatible, train_dp_local, train_with_dp
from edge_client.protocol import keys as k
from edge_client.protocol.site import NC_DP_BUDGET_EPSILON, NC_SITE_NAME, NC_STATE_DIR
from edge_client.settings import ClientSettings
from privacy.dp import DPConfig
from privacy.dp.config import (
    RC_DP,
    RC_DP_DELTA,
    RC_DP_EPSILON,
    RC_DP_GRAD_SAMPLE_MODE,
    RC_DP_NOISE_MULTIPLIER,
)
from privacy.ledger import LEDGER_FILE, PrivacyLedger
from tasks import get_task

TASK = "breast-cancer-mlp"


@pytest.fixture(autouse=True)
def _setup():
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data():
    d = get_task(TASK).load_data(0)
    return d.x_train[:120], d.y_train[:120]


@pytest.mark.parametrize("mode", ["fused", "hooks", "functorch", "ghost"])
def test_dp_sgd_trains_with_poisson_sampling(data, mode: str) -> None:
    # Prepare
    x, y = data
    torch.manual_seed(0)
    model = get_task(TASK).build_model()
    before = [p.detach().clone() for p in model.parameters()]
    # Execute
    result = train_dp_local(
        model,
        x,
        y,
        epochs=2,
        batch_size=16,
        learning_rate=0.5,
        noise_multiplier=0.8,
        max_grad_norm=1.0,
        grad_sample_mode=mode,  # type: ignore[arg-type]
    )
    # Assert: Opacus's Poisson loader: rate 1/ceil(120/16) = 1/8, 8 steps an epoch
    assert result.sample_rate == pytest.approx(1 / 8)
    assert result.steps == 16 and result.num_examples == 120
    assert np.isfinite(result.loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    # The module is handed back clean: no Opacus hooks or per-sample gradients left.
    assert not model._forward_hooks and not model[0]._forward_hooks
    assert all(getattr(p, "grad_sample", None) is None for p in model.parameters())


def test_dp_sgd_refuses_zero_noise(data) -> None:
    with pytest.raises(ValueError, match="noise multiplier"):
        train_dp_local(
            get_task(TASK).build_model(),
            *data,
            epochs=1,
            batch_size=16,
            learning_rate=0.1,
            noise_multiplier=0.0,
            max_grad_norm=1.0,
        )


def test_batchnorm_is_replaced_with_a_logged_message(caplog: pytest.LogCaptureFixture) -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    with caplog.at_level(logging.WARNING, logger="edge_client.dp_training"):
        fixed = make_dp_compatible(model)
    assert isinstance(fixed[1], nn.GroupNorm)
    assert "ModuleValidator.fix" in caplog.text and "BatchNorm" in caplog.text
    plain = nn.Sequential(nn.Linear(4, 2))
    assert make_dp_compatible(plain) is plain


# -- the ClientApp handler ----------------------------------------------------------------


def _call(
    tmp_path: Path,
    *,
    run_config: dict,
    node_config: dict | None = None,
    server_round: int = 1,
    model: nn.Module | None = None,
) -> Message:
    from edge_client.app import load_client_data

    torch.manual_seed(0)
    model = model or get_task(TASK).build_model()
    config = ConfigRecord({k.SERVER_ROUND: server_round, k.LEARNING_RATE: 0.1})
    message = Message(
        RecordDict({k.ARRAYS: ArrayRecord(model.state_dict()), k.CONFIG: config}),
        dst_node_id=1001,
        message_type="train",
    )
    context = Context(
        run_id=7,
        node_id=1001,
        node_config={k.NC_PARTITION_ID: 0, k.NC_NUM_PARTITIONS: 4, **(node_config or {})},
        state=RecordDict(),
        run_config={"task": TASK, "num-server-rounds": 3, "out-dir": str(tmp_path), **run_config},
    )
    settings = ClientSettings.from_message(context, config)
    return train_with_dp(
        message, context, settings=settings, data=load_client_data(settings), model=model
    )


LOCAL = {RC_DP: "local", RC_DP_EPSILON: 3.0}


def test_trains_records_and_reports_epsilon(tmp_path: Path) -> None:
    reply = _call(tmp_path, run_config=LOCAL)
    assert not reply.has_error()
    metrics = reply.content.metric_records[k.METRICS]
    ledger = PrivacyLedger(tmp_path / LEDGER_FILE, site="client-0")
    (entry,) = ledger.entries()
    assert entry.status == "completed" and entry.run_id == "7" and entry.server_round == 1
    assert metrics[k.DP_EPSILON] == pytest.approx(entry.epsilon_after)
    # Calibrated so that the run's 3 rounds reach ε=3: one round spends less.
    assert 0 < entry.epsilon_after < 3.0
    assert metrics[k.DP_STEPS] == entry.steps and metrics[k.NUM_EXAMPLES] > 0
    assert list(reply.content.array_records[k.ARRAYS].keys()) == [
        "0.weight",
        "0.bias",
        "2.weight",
        "2.bias",
    ]


def test_over_budget_request_is_an_error_reply_and_a_ledger_row(tmp_path: Path) -> None:
    reply = _call(
        tmp_path,
        run_config={RC_DP: "local", RC_DP_NOISE_MULTIPLIER: 0.6},
        node_config={NC_DP_BUDGET_EPSILON: 0.05},
    )
    assert reply.has_error() and reply.error.code == k.ERROR_DP_REFUSED
    assert "would be exceeded" in reply.error.reason
    (entry,) = PrivacyLedger(tmp_path / LEDGER_FILE, site="client-0").entries()
    assert entry.status == "refused"


@pytest.mark.parametrize(
    ("run_config", "message"),
    [
        ({RC_DP: "local", RC_DP_EPSILON: -1.0}, "epsilon -1.0"),
        ({RC_DP: "local", RC_DP_EPSILON: 1.0, RC_DP_DELTA: 0.2}, "delta 0.2"),
        ({RC_DP: "local"}, "needs --epsilon"),
    ],
)
def test_invalid_configuration_is_refused_not_crashed(
    tmp_path: Path, run_config: dict, message: str
) -> None:
    reply = _call(tmp_path, run_config=run_config)
    assert reply.has_error() and reply.error.code == k.ERROR_DP_REFUSED
    assert message in reply.error.reason


def test_without_a_place_for_the_ledger_the_site_refuses(tmp_path: Path) -> None:
    reply = _call(tmp_path, run_config={**LOCAL, "out-dir": ""})
    assert reply.has_error() and "needs a privacy ledger" in reply.error.reason


def test_a_state_dir_node_keeps_its_own_named_ledger(tmp_path: Path) -> None:
    state = tmp_path / "state"
    reply = _call(
        tmp_path,
        run_config={**LOCAL, "out-dir": ""},
        node_config={NC_STATE_DIR: str(state), NC_SITE_NAME: "st-marys"},
    )
    assert not reply.has_error()
    assert [e.status for e in PrivacyLedger(state / LEDGER_FILE, site="st-marys").entries()] == [
        "completed"
    ]


def test_model_that_dp_cannot_train_compatibly_is_refused(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(30, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    reply = _call(tmp_path, run_config=LOCAL, model=model)
    assert reply.has_error() and "BatchNorm" in reply.error.reason
    assert (
        not (tmp_path / LEDGER_FILE).exists()
        or not PrivacyLedger(tmp_path / LEDGER_FILE, site="client-0").entries()
    )


@pytest.mark.parametrize(
    ("mode", "task", "ran"),
    [
        ("fused", TASK, "fused"),
        ("auto", TASK, None),
        ("auto", "digits-cnn", None),
        ("ghost", TASK, "ghost"),
    ],
)
def test_a_site_round_runs_the_chosen_mode_and_charges_the_same_mechanism(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, task: str, ran: str | None
) -> None:
    # Prepare: record which trainer a DP round runs (fused or Opacus in which mode)
    import edge_client.dp_training as dp_training
    from edge_client.dp_modes import fastest_mode

    seen: list[str] = []
    real_fused, real_opacus = dp_training._train_fused, dp_training._train_opacus

    def fused(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append("fused")
        return real_fused(*args, **kwargs)

    def opacus(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(kwargs["grad_sample_mode"])
        return real_opacus(*args, **kwargs)

    monkeypatch.setattr(dp_training, "_train_fused", fused)
    monkeypatch.setattr(dp_training, "_train_opacus", opacus)
    torch.manual_seed(0)
    model = get_task(task).build_model()
    # Execute: a real site round through train_with_dp, ledger and all
    reply = _call(
        tmp_path,
        run_config={**LOCAL, "task": task, RC_DP_GRAD_SAMPLE_MODE: mode},
        model=model,
    )
    # Assert: the mode ran (auto: the table's fastest), trained, and the ledger charged
    # exactly the mechanism trained (train_with_dp checks rate and steps against it)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    assert seen == [ran or fastest_mode(task)]
    (entry,) = PrivacyLedger(tmp_path / LEDGER_FILE, site="client-0").entries()
    metrics = reply.content.metric_records[k.METRICS]
    assert entry.status == "completed" and metrics[k.DP_STEPS] == entry.steps
    assert metrics[k.DP_SAMPLE_RATE] == pytest.approx(entry.sample_rate)
    assert metrics[k.DP_NOISE_MULTIPLIER] == pytest.approx(entry.noise_multiplier)
    assert DPConfig().grad_sample_mode == "auto"
