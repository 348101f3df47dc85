"""Measured energy at a site: codecarbon's offline tracker inside the ClientApp (real,
no network), the site.toml switch, SecAgg+'s stages (a fake tracker counting spans) with
the energy slots of the masked input, and the coordinator's per-round and per-site sums."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from coordinator.app import build_server_app
from coordinator.config import RunConfig
from coordinator.run_state import RunState
from coordinator.secagg_exchange import ENERGY_SITES
from coordinator.strategy_setup import SiteEnergy, measured_energy, site_names
from edge_client import energy
from edge_client.app import build_client_app
from edge_client.energy import energy_mod
from edge_client.protocol import keys as k
from edge_client.protocol.secagg import AGGREGATED_CLIENTS
from edge_client.protocol.site import NC_SITE_CONFIG
from edge_client.site_config import EnergySettings, SiteConfig
from privacy.secagg import energy_slots
from privacy.secagg.energy_slots import EnergySum
from simulation.inprocess import run_inprocess

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


# -- SecAgg+ stages: measured, delivered inside the mask (fake tracker) -----------------


class FakeTracker:
    """Tracker i (counted from 1) reports i µWh... i × 1e-6 kWh at 400 g/kWh."""

    made = 0

    def __init__(self, settings: object) -> None:
        FakeTracker.made += 1
        self.number = FakeTracker.made

    def start(self) -> None:
        pass

    def stop(self) -> None:
        kwh = self.number * 1e-6
        self.final_emissions_data = SimpleNamespace(energy_consumed=kwh, emissions=kwh * 0.4)


@pytest.fixture
def fake_tracker(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeTracker.made = 0
    monkeypatch.setattr(energy, "TRACKER", FakeTracker)


def _masked_train(message: Message, context: Context) -> Message:
    """The part of handle_masked_train that matters here: it asks for the slots."""
    slots = energy.masked_energy(context, max_weight=MAX_WEIGHT)
    return Message(RecordDict({"slots": ConfigRecord({"v": slots})}), reply_to=message)


def _answer(message: Message, context: Context) -> Message:
    return Message(RecordDict({"r": ConfigRecord({"ok": 1})}), reply_to=message)


MAX_WEIGHT = 1000
STAGES = ("query.secagg_setup", "query.secagg_share", "train.secagg", "query.secagg_unmask")


def _stage(kind: str, context: Context) -> tuple[Message, dict | None]:
    handler = _masked_train if kind == "train.secagg" else _answer
    reply = energy_mod(_instruction(kind), context, handler)
    return reply, energy.sent_energy(context)


def test_every_secagg_stage_is_measured_and_delivered_in_the_next_masked_input(
    tmp_path: Path, fake_tracker: None
) -> None:
    # Prepare: a measuring site; trackers 1..n report 1..n µWh.
    context = _context(make_site(tmp_path, {"codecarbon = false": "codecarbon = true"}))
    # Execute: round 1's four stages, then round 2 up to its masked input
    sent = [_stage(kind, context) for kind in STAGES] + [
        _stage(kind, context) for kind in STAGES[:3]
    ]
    # Assert: one tracker per stage, plus one after the slots were taken (masking)
    assert FakeTracker.made == 9
    slots_1 = sent[2][0].content.config_records["slots"]["v"]
    slots_2 = sent[6][0].content.config_records["slots"]["v"]
    first = energy_slots.decode(slots_1, max_weight=MAX_WEIGHT)  # type: ignore[arg-type]
    second = energy_slots.decode(slots_2, max_weight=MAX_WEIGHT)  # type: ignore[arg-type]
    # round 1: setup 1 + share 2 + train up to the slots 3; round 2: the rest of round 1
    # (masking 4 + unmask 5) and its own setup 6, share 7, train 8
    assert first.sites == 1 and first.energy_kwh == pytest.approx(6e-6, abs=1e-9)
    assert second.energy_kwh == pytest.approx(30e-6, abs=2e-9)
    assert second.co2_g == pytest.approx(30e-6 * 400, abs=2e-6)
    # Only the masked train delivered, and the audit sees what left, as delivered
    assert [s for _, s in sent if s is not None] == [
        {"kwh": first.energy_kwh, "co2_g": first.co2_g, "how": "masked"},
        {"kwh": second.energy_kwh, "co2_g": second.co2_g, "how": "masked"},
    ]
    # Nothing leaves in clear: the stage replies carry no energy metric
    assert all(k.METRICS not in reply.content for reply, _ in sent)
    # What stays pending is the last masking (tracker 9) plus rounding residue
    assert energy._pending(context).kwh == pytest.approx(9e-6, abs=2e-9)


def test_a_refused_masked_input_keeps_its_energy_at_the_site(
    tmp_path: Path, fake_tracker: None
) -> None:
    context = _context(make_site(tmp_path, {"codecarbon = false": "codecarbon = true"}))

    def refuse(message: Message, ctx: Context) -> Message:
        energy.masked_energy(ctx, max_weight=MAX_WEIGHT)
        return Message(Error(code=1, reason="secagg: refused"), reply_to=message)

    reply = energy_mod(_instruction("train.secagg"), context, refuse)
    assert reply.has_error()
    assert energy.sent_energy(context) is None  # nothing left the site
    assert energy._pending(context).kwh == pytest.approx(3e-6, abs=1e-12)  # trackers 1 + 2


def test_a_site_that_does_not_measure_sends_zeros(tmp_path: Path, fake_tracker: None) -> None:
    context = _context(make_site(tmp_path, {}))
    reply, sent = _stage("train.secagg", context)
    slots = reply.content.config_records["slots"]["v"]
    assert slots == [0] * energy_slots.slot_count(MAX_WEIGHT) and sent is None
    assert FakeTracker.made == 0


@pytest.mark.parametrize("max_weight", [1, 3, 65536])
def test_summed_slots_decode_to_the_sum_of_the_sites_values(max_weight: int) -> None:
    values = [(0.0, 0.0), (1.5e-6, 7e-4), (123.456789, 4.5e4), (2e-9, 1e-6)]
    encoded = [
        energy_slots.encode(EnergySum(1, kwh, g), max_weight=max_weight) for kwh, g in values
    ]
    assert all(0 <= v <= max_weight for slots in encoded for v in slots)
    total = energy_slots.decode([sum(c) for c in zip(*encoded, strict=True)], max_weight=max_weight)
    own = [energy_slots.decode(s, max_weight=max_weight) for s in encoded]
    assert total.sites == 4
    assert total.energy_kwh == pytest.approx(sum(o.energy_kwh for o in own), rel=1e-12)
    assert total.co2_g == pytest.approx(sum(o.co2_g for o in own), rel=1e-12)
    assert total.energy_kwh == pytest.approx(sum(v for v, _ in values), abs=4e-9)


# -- the coordinator's run-level carbon section -----------------------------------------


def _from(node: int, **metrics: Any) -> Message:
    request = Message(content=RecordDict(), dst_node_id=node, message_type="train")
    return Message(RecordDict({k.METRICS: MetricRecord(metrics)}), reply_to=request)


def test_plain_rounds_are_booked_per_site_and_masked_rounds_only_in_total() -> None:
    # Prepare: a plain run's replies, one site claiming to be a masked sum, one NaN
    plain = SiteEnergy(names={11: "st-marys"}, selection="random")
    spoof = {k.ENERGY_KWH: 0.25, k.CO2_G: 20.0, AGGREGATED_CLIENTS: 9, ENERGY_SITES: 9}
    replies = [
        _from(11, **{k.ENERGY_KWH: 0.5, k.CO2_G: 100.0}),
        _from(12, **spoof),
        _from(13, **{k.ENERGY_KWH: float("nan"), k.CO2_G: 1.0}),
        _from(14, **{k.ENERGY_KWH: -5.0, k.CO2_G: 1.0}),
    ]
    # Execute
    plain.measured_energy(1, replies)
    plain.measured_energy(2, [_from(12, **{k.NUM_EXAMPLES: 3})])  # nothing measured
    secure = SiteEnergy(secure=True)
    masked = {k.ENERGY_KWH: 1.0, k.CO2_G: 300.0, AGGREGATED_CLIENTS: 3, ENERGY_SITES: 2}
    secure.measured_energy(1, [_from(11, **masked)])
    # Assert: plain rounds per site by registered name (NaN and negative ignored)
    carbon = plain.section()["carbon"]
    assert carbon["source"] == "codecarbon" and carbon["masked_rounds"] == 0
    assert carbon["energy_kwh"] == 0.75 and carbon["co2_g"] == 120.0
    assert carbon["per_site"] == {
        "node-12": {"energy_kwh": 0.25, "co2_g": 20.0, "client_rounds": 1},
        "st-marys": {"energy_kwh": 0.5, "co2_g": 100.0, "client_rounds": 1},
    }
    assert [(r["round"], r["sites"]) for r in carbon["per_round"]] == [(1, 2)]
    # ... and a SecAgg+ round only in total, with the count of sites that measured
    carbon = secure.section()["carbon"]
    assert carbon["per_site"] == {} and carbon["masked_rounds"] == 1
    assert carbon["per_round"] == [
        {"round": 1, "energy_kwh": 1.0, "co2_g": 300.0, "sites": 2, "per_site": None}
    ]
    assert SiteEnergy().section() == {}


def test_site_names_come_from_the_coordinators_sites_json(tmp_path: Path) -> None:
    # Prepare: a run folder as `run submit` makes it, and sites.json as add-site writes it
    state = tmp_path / "state"
    run = RunState.create(state, {"task": "breast-cancer-mlp"})
    (state / "sites.json").write_text(
        json.dumps({"st-marys": {"node-id": 42, "public-key": "k"}, "bad": {"node-id": "x"}})
    )
    # Execute, Assert
    assert site_names(run.run_config) == {42: "st-marys"}
    assert site_names({"out-dir": str(run.run_dir)}) == {}  # not a deployment run
    (state / "sites.json").write_text("not json")
    assert site_names(run.run_config) == {}


def test_a_resumed_run_takes_back_the_rounds_its_checkpoint_holds(tmp_path: Path) -> None:
    # Prepare: a first attempt that measured rounds 1-3 (round 3 after the checkpoint)
    first = SiteEnergy(names={11: "st-marys"})
    for rnd in (1, 2, 3):
        first.measured_energy(rnd, [_from(11, **{k.ENERGY_KWH: 0.5 * rnd, k.CO2_G: 10.0})])
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"rounds": [], **first.section()}))
    # Execute: the resumed attempt, checkpoint at round 2, then its own round 3
    again = SiteEnergy(names={11: "st-marys"})
    again.resume(metrics, up_to=2)
    again.measured_energy(3, [_from(11, **{k.ENERGY_KWH: 2.0, k.CO2_G: 10.0})])
    # Assert
    carbon = again.section()["carbon"]
    assert [r["round"] for r in carbon["per_round"]] == [1, 2, 3]
    assert carbon["per_site"]["st-marys"] == {
        "energy_kwh": 3.5,
        "co2_g": 30.0,
        "client_rounds": 3,
    }
    assert carbon["energy_kwh"] == 3.5
    estimated = tmp_path / "estimated.json"
    estimated.write_text(json.dumps({"carbon": {"source": "estimated", "per_round": []}}))
    for source in (estimated, tmp_path / "missing.json"):  # the simulator's; none
        fresh = SiteEnergy()
        fresh.resume(source, up_to=9)
        assert fresh.section() == {}


def test_a_run_writes_the_measured_carbon_per_site_into_metrics_json(
    tmp_path: Path, fake_tracker: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: three measuring clients in process; each books what it delivered
    monkeypatch.setattr(energy, "site_energy", lambda context: EnergySettings(codecarbon=True))
    delivered: dict[int, float] = {}

    def ledger(message: Message, context: Context, call_next: Any) -> Message:
        reply = call_next(message, context)
        if (sent := energy.sent_energy(context)) is not None:
            delivered[int(context.node_id)] = delivered.get(int(context.node_id), 0.0) + sent["kwh"]
        return reply

    out = tmp_path / "run"
    config = RunConfig(
        task="breast-cancer-mlp",
        num_clients=3,
        clients_per_round=3,
        num_server_rounds=1,
        local_epochs=1,
        batch_size=256,
        out_dir=str(out),
    )
    # Execute
    run_inprocess(
        server_app=build_server_app(),
        client_app=build_client_app(mods=[ledger, energy.energy_mod]),
        num_nodes=3,
        run_config=config.as_run_config(),
    )
    # Assert: per site (no sites.json in a simulation: node-<id>), equal to the sites'
    # own records, and the rounds' sum equals the total
    doc = json.loads((out / "metrics.json").read_text())
    carbon = doc["carbon"]
    assert carbon["source"] == "codecarbon" and len(delivered) == 3
    assert {n: v["energy_kwh"] for n, v in carbon["per_site"].items()} == pytest.approx(
        {f"node-{node}": kwh for node, kwh in delivered.items()}
    )
    assert all(v["client_rounds"] == 1 for v in carbon["per_site"].values())
    assert sum(r["energy_kwh"] for r in doc["rounds"]) == pytest.approx(carbon["energy_kwh"])
