"""Measured energy at a site: codecarbon's offline tracker inside the ClientApp (real,
no network), the site.toml switch, and the coordinator's per-round sum."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from coordinator.strategy_setup import measured_energy
from edge_client.energy import energy_mod
from edge_client.protocol import keys as k
from edge_client.protocol.site import NC_SITE_CONFIG
from edge_client.site_config import SiteConfig

sys.path.insert(0, str(Path(__file__).parent))
from site_testkit import make_site


@pytest.fixture(autouse=True)
def task_identity() -> Iterator[None]:  # messages made outside a Flower run need one
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def _context(config: Path) -> Context:
    return Context(
        run_id=1,
        node_id=7,
        node_config={NC_SITE_CONFIG: str(config)},
        state=RecordDict(),
        run_config={"task": "breast-cancer-mlp"},
    )


def _instruction(message_type: str = "train") -> Message:
    content = RecordDict({k.CONFIG: ConfigRecord({k.SERVER_ROUND: 1})})
    return Message(content=content, dst_node_id=7, message_type=message_type)


def _busy_trainer(message: Message, context: Context) -> Message:
    total = 0
    for i in range(2_000_000):  # some CPU work to measure
        total += i
    metrics = MetricRecord({k.NUM_EXAMPLES: 10})
    return Message(RecordDict({k.METRICS: metrics}), reply_to=message)


def test_codecarbon_measures_a_training_when_the_site_enables_it(tmp_path: Path) -> None:
    pytest.importorskip("codecarbon")
    # Prepare
    config = make_site(tmp_path, {"codecarbon = false": "codecarbon = true"})
    assert SiteConfig.load(config).energy.codecarbon
    # Execute
    reply = energy_mod(_instruction(), _context(config), _busy_trainer)
    # Assert: energy measured, and CO2 at a plausible German grid average (g/kWh).
    metrics = reply.content[k.METRICS]
    assert metrics[k.NUM_EXAMPLES] == 10
    energy, co2 = float(metrics[k.ENERGY_KWH]), float(metrics[k.CO2_G])  # type: ignore[arg-type]
    assert energy > 0 and co2 > 0
    assert 100 < co2 / energy < 1000


def test_nothing_is_measured_when_off_or_not_plain_training(tmp_path: Path) -> None:
    config = make_site(tmp_path, {})
    assert not SiteConfig.load(config).energy.codecarbon
    reply = energy_mod(_instruction(), _context(config), _busy_trainer)
    assert k.ENERGY_KWH not in reply.content[k.METRICS]
    on = make_site(tmp_path / "on", {"codecarbon = false": "codecarbon = true"})
    reply = energy_mod(_instruction("evaluate"), _context(on), _busy_trainer)
    assert k.ENERGY_KWH not in reply.content[k.METRICS]


def test_bad_country_code_names_the_key(tmp_path: Path) -> None:
    config = make_site(tmp_path, {'country-iso-code = "DEU"': 'country-iso-code = "Germany"'})
    with pytest.raises(ValueError, match="energy.country-iso-code 'Germany' must be an ISO"):
        SiteConfig.load(config)


def _reply(**metrics: Any) -> Message:
    request = _instruction()
    return Message(RecordDict({k.METRICS: MetricRecord(metrics)}), reply_to=request)


def test_the_coordinator_sums_the_sites_measurements_per_round() -> None:
    replies = [
        _reply(**{k.ENERGY_KWH: 0.5, k.CO2_G: 100.0}),
        _reply(**{k.ENERGY_KWH: 0.25, k.CO2_G: 20.0}),
        _reply(**{k.NUM_EXAMPLES: 3}),
    ]
    kept, stats = measured_energy(1, replies)
    assert kept == replies
    assert stats == {"energy_kwh": 0.75, "co2_g": 120.0}
    assert measured_energy(1, replies[2:])[1] == {}
