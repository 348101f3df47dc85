"""The site mod: refuses off-policy instructions with a reason, audits every reply."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode
from flwr.supercore.task_identity import TaskIdentity

from edge_client.audit import AuditLog
from edge_client.protocol import keys as k
from edge_client.protocol import secagg as sa
from edge_client.protocol.site import NC_SITE_CONFIG
from edge_client.site_config import SiteConfig
from edge_client.site_policy import (
    REFUSAL_PREFIX,
    SECAGG_SETUP,
    DPValue,
    check_policy,
    payload_digest,
    site_mod,
)

sys.path.insert(0, str(Path(__file__).parent))
from site_testkit import make_site


@pytest.fixture(autouse=True)
def task_identity() -> Iterator[None]:
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 42, 1
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def _instruction(message_type: str = "train", server_round: int = 2) -> Message:
    content = RecordDict({k.CONFIG: ConfigRecord({k.SERVER_ROUND: server_round})})
    return Message(content=content, dst_node_id=7, message_type=message_type)


def _context(config: Path | None, **run_config: Any) -> Context:
    node_config: dict[str, Any] = {NC_SITE_CONFIG: str(config)} if config else {}
    rc = {"task": "breast-cancer-mlp", **run_config}
    return Context(run_id=42, node_id=7, node_config=node_config, state=RecordDict(), run_config=rc)


def _trainer(epsilon: float | None = None) -> Any:
    calls: list[Message] = []

    def call_next(message: Message, context: Context) -> Message:
        calls.append(message)
        metrics = {k.NUM_EXAMPLES: 10}
        if epsilon is not None:
            metrics[k.DP_EPSILON] = epsilon
        content = RecordDict(
            {
                k.ARRAYS: ArrayRecord({"w": Array(np.ones((2, 3), dtype=np.float32))}),
                k.METRICS: MetricRecord(metrics),
            }
        )
        return Message(content=content, reply_to=message)

    call_next.calls = calls  # type: ignore[attr-defined]
    return call_next


@pytest.fixture
def site(tmp_path: Path) -> Path:
    return make_site(tmp_path, {"require-dp = true": "require-dp = false"})


def test_allowed_task_trains_and_the_reply_is_audited(site: Path) -> None:
    # Prepare
    call_next = _trainer()
    # Execute
    reply = site_mod(_instruction(), _context(site), call_next)
    # Assert
    assert not reply.has_error() and len(call_next.calls) == 1
    audit = AuditLog.for_site(SiteConfig.load(site))
    (entry,) = list(audit.entries())
    size, sha = payload_digest(reply)
    assert entry["run"] == 42 and entry["round"] == 2 and entry["type"] == "train"
    assert entry["kind"] == "reply" and entry["size"] == size and entry["sha256"] == sha
    assert size >= 2 * 3 * 4  # the weights are in what was hashed
    assert audit.verify().ok


def test_task_off_the_allowlist_is_refused_without_training(site: Path) -> None:
    call_next = _trainer()
    reply = site_mod(_instruction(), _context(site, task="digits-cnn"), call_next)
    assert reply.has_error() and call_next.calls == []
    assert reply.error.code == ErrorCode.MOD_FAILED_PRECONDITION
    assert reply.error.reason.startswith(REFUSAL_PREFIX)
    assert "'digits-cnn' is not on site st-marys's allowlist" in reply.error.reason
    (entry,) = list(AuditLog.for_site(SiteConfig.load(site)).entries())
    assert entry["kind"] == "refusal" and "allowlist" in entry["reason"]


def test_site_requiring_dp_answers_training_but_refuses_evaluation(tmp_path: Path) -> None:
    """A require-dp site trains whatever dp says (with its own DP-SGD, see
    test_site_dp_property.py) and refuses evaluation, whose metrics carry no noise."""
    config = make_site(tmp_path, {})
    call_next = _trainer()
    assert not site_mod(_instruction(), _context(config), call_next).has_error()
    assert len(call_next.calls) == 1
    refused = site_mod(_instruction("evaluate"), _context(config), _trainer())
    assert refused.has_error()
    assert "requires differential privacy and federated evaluation" in refused.error.reason


def test_dp_run_is_refused_once_the_ledger_shows_the_budget_used_up(site: Path) -> None:
    """ε comes from the site's privacy ledger; the audit log records each reply's ε."""
    ledger_mod = pytest.importorskip("privacy.ledger")
    from privacy.dp.accounting import Mechanism

    dp_run = {"dp": "local", "dp-epsilon": 3.0}
    # Prepare: one DP training reported ε=2.5 and was audited
    reply = site_mod(_instruction(), _context(site, **dp_run), _trainer(epsilon=2.5))
    assert not reply.has_error()
    # the ledger then records trainings worth far more than the budget of 8
    config = SiteConfig.load(site)
    ledger = ledger_mod.PrivacyLedger.in_state_dir(config.state_dir, site=config.name)
    decision = ledger.check_and_reserve(
        task="breast-cancer-mlp",
        run_id="r",
        server_round=1,
        mechanism=Mechanism(sample_rate=1.0, noise_multiplier=0.3, steps=50),
        budget=ledger_mod.Budget(epsilon=None, delta=config.policy.delta),
    )
    ledger.commit(decision.entry_id)
    # Execute
    call_next = _trainer()
    refused = site_mod(_instruction(), _context(site, **dp_run), call_next)
    # Assert
    assert refused.has_error() and call_next.calls == []
    assert "privacy budget of site st-marys is used up" in refused.error.reason
    entries = list(AuditLog.for_site(config).entries())
    assert [e["epsilon"] for e in entries] == [2.5, None]
    assert entries[0]["dp"] == {"dp": "local", "dp-epsilon": 3.0}
    # the same run without DP is not a budget question (this site does not require DP)
    assert not site_mod(_instruction(), _context(site), _trainer()).has_error()


def test_without_site_config_the_mod_passes_through(tmp_path: Path) -> None:
    call_next = _trainer()
    reply = site_mod(_instruction(), _context(None, task="digits-cnn"), call_next)
    assert not reply.has_error() and len(call_next.calls) == 1
    assert not any(tmp_path.iterdir())


def test_check_policy_is_pure(site: Path) -> None:
    config = SiteConfig.load(site)
    assert check_policy(config, {"task": "breast-cancer-mlp"}, 0.0) is None
    assert check_policy(config, {"task": "x"}, 0.0, message_type="evaluate") is not None
    dp = {"task": "breast-cancer-mlp", "dp": "local"}
    assert check_policy(config, dp, 8.0) is not None  # budget ε=8 used up
    assert check_policy(config, dp, 7.9) is None  # the ledger decides each round
    assert check_policy(config, {**dp, "dp": "none"}, 8.0) is None


def test_payload_digest_changes_with_any_weight() -> None:
    msg = _instruction()
    a = Message(
        content=RecordDict({k.ARRAYS: ArrayRecord({"w": Array(np.zeros(4, np.float32))})}),
        reply_to=msg,
    )
    w = np.zeros(4, np.float32)
    w[3] = 1e-7
    b = Message(content=RecordDict({k.ARRAYS: ArrayRecord({"w": Array(w)})}), reply_to=msg)
    assert payload_digest(a)[0] == payload_digest(b)[0]
    assert payload_digest(a)[1] != payload_digest(b)[1]


@pytest.mark.parametrize("value", ["yes", "on", "true", "LOCAL", " local", "dp", "", 1, True, 0.0])
def test_an_unknown_or_ambiguous_dp_value_is_refused_with_the_accepted_ones(
    site: Path, value: Any
) -> None:
    call_next = _trainer()
    reply = site_mod(_instruction(), _context(site, dp=value), call_next)
    assert reply.has_error() and call_next.calls == []
    assert f"dp = {value!r} is not one of none, local, central, distributed" in reply.error.reason
    assert "site st-marys" in reply.error.reason
    (entry,) = list(AuditLog.for_site(SiteConfig.load(site)).entries())
    assert entry["kind"] == "refusal" and entry["dp"] == {"dp": value}


@pytest.mark.parametrize("value", [member.value for member in DPValue])
def test_every_accepted_dp_value_passes_the_dp_check(site: Path, value: str) -> None:
    assert (
        check_policy(SiteConfig.load(site), {"task": "breast-cancer-mlp", "dp": value}, 0) is None
    )


def test_a_site_requiring_secagg_answers_only_masked_updates_of_secagg_runs(tmp_path: Path) -> None:
    config = SiteConfig.load(
        make_site(tmp_path, {"require-secagg = false": "require-secagg = true"})
    )
    base = {"task": "breast-cancer-mlp"}
    off = check_policy(config, base, 0.0, message_type="train.secagg")
    assert off is not None and "requires secure aggregation and the run has secagg off" in off
    lying = check_policy(config, {**base, "secagg": True}, 0.0, message_type="train")
    assert lying is not None and "unmasked update" in lying
    assert check_policy(config, {**base, "secagg": True}, 0.0, message_type="train.secagg") is None


def test_a_secagg_round_with_too_few_sites_is_refused(tmp_path: Path) -> None:
    config = make_site(tmp_path, {"min-secagg-sites = 2": "min-secagg-sites = 3"})
    setup = Message(
        content=RecordDict(
            {
                sa.SECAGG: ConfigRecord(
                    {sa.SA_PARTICIPANTS: b"".join(i.to_bytes(8, "big") for i in (7, 8))}
                )
            }
        ),
        dst_node_id=7,
        message_type=SECAGG_SETUP,
    )
    call_next = _trainer()
    reply = site_mod(setup, _context(config), call_next)
    assert reply.has_error() and call_next.calls == []
    assert "at least 3 sites in a secure-aggregation round; this one has 2" in reply.error.reason
    loaded = SiteConfig.load(config)
    three = check_policy(
        loaded, {"task": "breast-cancer-mlp"}, 0.0, message_type=SECAGG_SETUP, participants=3
    )
    assert three is None
