"""A site that requires DP: whatever run config arrives, no reply leaves uncharged.

Property (Hypothesis, over arbitrary run-config dictionaries — any keys, JSON-ish values
— sent through fedfleet's real ClientApp with the site's node config): every reply that
is not an error has a completed ledger entry for its run and round, with the site's own
noise multiplier; no error reply carries content. Unit tests: ``dp = "central"`` and
``"none"`` train with the site's DP-SGD (two replies to one instruction differ), an
ambiguous ``dp = "yes"`` is refused with the reason.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from edge_client.app import app
from edge_client.audit import AuditLog
from edge_client.protocol import keys as k
from edge_client.protocol.site import NC_SITE_CONFIG
from edge_client.site import init_site
from edge_client.site_config import SiteConfig
from privacy.ledger import PrivacyLedger
from tasks import get_task

TASK = "breast-cancer-mlp"
NOISE = 1.3  # the site's own noise multiplier (site.toml), not any run's


@pytest.fixture(autouse=True)
def _identity_and_threads() -> Iterator[None]:
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> SiteConfig:
    """A require-dp site with 60 breast-cancer records and a budget large enough that
    the property exercises training, not only budget refusals."""
    root = tmp_path_factory.mktemp("dp-site")
    files = init_site(name="st-marys", out_dir=root)
    (root / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    data = get_task(TASK).load_data(0)
    (root / "data").mkdir()
    np.savez(root / "data" / "records.npz", x=data.x_train[:60], y=data.y_train[:60])
    text = files.config.read_text()
    for old, new in {
        'path = "data/records.csv"': 'path = "data/records.npz"',
        "epsilon = 8.0": "epsilon = 1e6",
        "dp-noise-multiplier = 1.0": f"dp-noise-multiplier = {NOISE}",
    }.items():
        assert old in text
        text = text.replace(old, new)
    files.config.write_text(text)
    config = SiteConfig.load(files.config)
    assert config.policy.require_dp
    return config


_RUN_IDS = itertools.count(1000)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return get_task(TASK).build_model()


def _call(site: SiteConfig, run_config: dict[str, Any], message_type: str = "train") -> Message:
    run_id = next(_RUN_IDS)
    TaskIdentity.run_id = run_id  # the message's run, as Flower's runtime sets it
    model = _model()
    record = ConfigRecord({k.SERVER_ROUND: 1, k.LEARNING_RATE: 0.1})
    message = Message(
        RecordDict({k.ARRAYS: ArrayRecord(model.state_dict()), k.CONFIG: record}),
        dst_node_id=1,
        message_type=message_type,
    )
    context = Context(
        run_id=run_id,
        node_id=1,
        node_config={NC_SITE_CONFIG: str(site.source)},
        state=RecordDict(),
        run_config=run_config,
    )
    return app(message=message, context=context)


def _ledger(site: SiteConfig) -> PrivacyLedger:
    return PrivacyLedger.in_state_dir(site.state_dir, site=site.name)


def _covered(site: SiteConfig, reply: Message) -> bool:
    """A completed ledger entry of this reply's run and round, with the site's noise."""
    return any(
        e.run_id == str(reply.metadata.run_id)
        and e.server_round == 1
        and e.status == "completed"
        and math.isclose(e.noise_multiplier, NOISE)
        for e in _ledger(site).entries(task=TASK)
    )


def _weights(reply: Message) -> list[np.ndarray]:
    return [a.numpy() for a in reply.content.array_records[k.ARRAYS].values()]


@pytest.mark.parametrize("dp", ["central", "none", "distributed", None])
def test_any_accepted_dp_value_trains_with_the_sites_own_dp_sgd(
    site: SiteConfig, dp: str | None
) -> None:
    run_config = {"task": TASK} if dp is None else {"task": TASK, "dp": dp}
    # Execute: the same instruction twice
    first, second = _call(site, run_config), _call(site, run_config)
    # Assert: both trained, both charged, and the noise makes them differ
    assert not first.has_error() and not second.has_error(), first.error
    assert _covered(site, first) and _covered(site, second)
    # the reply keeps the run's shape: DP metrics only where the run asked for dp=local
    assert set(first.content.metric_records[k.METRICS]) == {k.NUM_EXAMPLES, k.TRAIN_LOSS}
    # and the audit log records the ε the site spent on it
    replies = [e for e in AuditLog.for_site(site).entries() if e["run"] == first.metadata.run_id]
    assert replies[0]["epsilon"] is not None and replies[0]["epsilon"] > 0
    assert any(
        not np.array_equal(a, b) for a, b in zip(_weights(first), _weights(second), strict=True)
    )


def test_an_ambiguous_dp_value_is_refused_with_the_reason(site: SiteConfig) -> None:
    before = len(_ledger(site).entries())
    reply = _call(site, {"task": TASK, "dp": "yes"})
    assert reply.has_error() and not reply.has_content()
    assert "dp = 'yes' is not one of none, local, central, distributed" in reply.error.reason
    assert len(_ledger(site).entries()) == before  # nothing trained, nothing reserved


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=5,
)
_KEYS = st.sampled_from(
    [
        "dp",
        "dp-epsilon",
        "dp-noise-multiplier",
        "dp-clip",
        "dp-delta",
        "dp-accountant",
        "secagg",
        "seed",
        "num-server-rounds",
        "batch-size",
        "local-epochs",
    ]
) | st.text(max_size=10)
_DP = st.sampled_from(["none", "local", "central", "distributed", "yes", "off", "", "LOCAL"])


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    extra=st.dictionaries(_KEYS, _JSON, max_size=4),
    dp=st.one_of(st.none(), _DP, _DP, _JSON),
    task=st.sampled_from([TASK, TASK, TASK, "digits-cnn"]) | st.none(),
    message_type=st.sampled_from(["train", "train", "evaluate"]),
)
def test_no_reply_leaves_a_require_dp_site_without_a_ledger_entry_covering_it(
    site: SiteConfig, extra: dict[str, Any], dp: Any, task: str | None, message_type: str
) -> None:
    run_config = dict(extra)
    if dp is not None:
        run_config["dp"] = dp
    if task is not None:
        run_config["task"] = task
    # Execute
    reply = _call(site, run_config, message_type)
    # Assert
    event("refused" if reply.has_error() else "trained")
    if reply.has_error():
        assert not reply.has_content()  # no arrays, no metrics ride on a refusal
        assert reply.error.reason
        return
    assert message_type == "train"  # evaluation of unnoised data is refused at such a site
    assert _covered(site, reply), run_config
    assert k.ARRAYS in reply.content.array_records
