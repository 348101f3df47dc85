"""Simulated batteries: hand-computed drain and charge, bounds, and the fleet's use of them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid, ServerApp
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_client.protocol import keys as k
from simulation.battery import BatterySpec, FleetBatteries
from simulation.devices import (
    ClientTiming,
    DeviceProfile,
    client_energy_kwh,
    get_profile,
    register_profile,
)
from simulation.fleet import SimulatedFleet
from simulation.inprocess import run_inprocess

# Plugged in 11:00..23:59 for sure, never before.
PLUGGED = (0.0,) * 11 + (1.0,) * 13


def test_drain_and_charge_match_a_hand_computation() -> None:
    spec = BatterySpec(
        capacity_wh=1.0, start_level=(0.5, 0.5), plugged=PLUGGED, charge_w=0.5, use_w=0.1
    )
    b = FleetBatteries([spec, None], seed=3)
    assert b.status(0, 9) == (0.5, False) and b.status(1, 9) == (None, None)
    # 09:00, unplugged: an instruction of 900 J from 3,600 J (1 Wh) takes 0.25.
    assert b.drain(0, 900.0, 9) is False
    assert b.level[0] == pytest.approx(0.25)
    # 09:00 -> 10:00 unplugged, the owner's 0.1 W: 360 J = 0.1.
    b.advance(0.0, 3600.0, start_hour=9.0)
    assert b.level[0] == pytest.approx(0.15)
    # 10:00: 720 J (0.2) needs more than is left: it runs flat at 0 and cannot train.
    assert b.drain(0, 720.0, 10) is True
    assert b.level[0] == 0.0 and b.empty(0, 10)
    # 10:00 -> 11:30: an hour unplugged (stays 0), half an hour on 0.5 W: 900 J = 0.25.
    b.advance(3600.0, 9000.0, start_hour=9.0)
    assert b.level[0] == pytest.approx(0.25)
    assert b.status(0, 11) == (pytest.approx(0.25), True) and not b.empty(0, 11)
    # Plugged in: an instruction costs the battery nothing.
    assert b.drain(0, 5000.0, 11) is False and b.level[0] == pytest.approx(0.25)
    # 11:30 -> 14:00 plugged: 0.5 W × 9,000 s = 4,500 J > what fits: full, never above 1.
    b.advance(9000.0, 18000.0, start_hour=9.0)
    assert b.level[0] == 1.0


@settings(max_examples=40, deadline=None)
@given(
    steps=st.lists(st.tuples(st.booleans(), st.floats(0, 20000), st.integers(0, 60)), max_size=25),
    start=st.floats(0, 1),
    charge=st.floats(0, 50),
    use=st.floats(0, 50),
)
def test_levels_stay_between_empty_and_full(
    steps: list[tuple[bool, float, int]], start: float, charge: float, use: float
) -> None:
    spec = BatterySpec(
        capacity_wh=0.5,
        start_level=(start, start),
        plugged=(0.5,) * 24,
        charge_w=charge,
        use_w=use,
    )
    b = FleetBatteries([spec] * 3, seed=1)
    now = 0.0
    for is_drain, amount, slot in steps:
        if is_drain:
            b.drain(slot % 3, amount, slot)
        else:
            b.advance(now, now + amount, start_hour=9.0)
            now += amount
        assert all(0.0 <= x <= 1.0 for x in b.level)


def _battery_profile(name: str, *, capacity: float, start: float) -> DeviceProfile:
    return register_profile(
        DeviceProfile(
            name=name,
            description="test battery device",
            seconds_per_example={"t": 0.01},
            default_seconds_per_example=0.01,
            overhead_s=0.25,
            jitter=0.0,
            downlink_mbps=8.0,
            uplink_mbps=4.0,
            latency_ms=50.0,
            hourly_availability=(1.0,) * 24,
            dropout=0.0,
            train_w=4.0,
            idle_w=1.0,
            battery_wh=capacity,
            battery=BatterySpec(capacity_wh=capacity, start_level=(start, start)),
        )
    )


FULL = _battery_profile("test-battery-full", capacity=1.0, start=1.0)
_battery_profile("test-battery-empty", capacity=1.0, start=0.0)
_battery_profile("test-battery-tiny", capacity=1e-6, start=1.0)


def _run(fleet: SimulatedFleet) -> list[Message]:
    replies: list[Message] = []
    client, server = ClientApp(), ServerApp()

    @client.train()
    def train(message: Message, context: Context) -> Message:
        metrics = MetricRecord({k.NUM_EXAMPLES: 50})
        content = RecordDict({"arrays": ArrayRecord({"w": torch.ones(100)}), "metrics": metrics})
        return Message(content, reply_to=message)

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        content = RecordDict({"config": ConfigRecord({k.LOCAL_EPOCHS: 1})})
        messages = [grid.create_message(content, "train", n, "1") for n in grid.get_node_ids()]
        replies.extend(grid.send_and_receive(messages))

    run_inprocess(server_app=server, client_app=client, num_nodes=2, run_config={}, fleet=fleet)
    return replies


def _fleet(name: str) -> SimulatedFleet:
    return SimulatedFleet(mix=((name, 1.0),), num_nodes=2, node_id_base=1000, task="t", seed=0)


def test_fleet_drains_by_the_energy_model_and_reports_it() -> None:
    fleet = _fleet("test-battery-full")
    replies = _run(fleet)
    assert not any(r.has_error() for r in replies)
    status = fleet.telemetry(1000)
    # 50 examples × 0.01 s + 0.25 s overhead at 4 W; 2 × 50 ms latency + ~400 B at 1 W.
    sim_s = replies[0].content["metrics"][k.SIM_SECONDS]
    spent = 4.0 * 0.75 + 1.0 * (sim_s - 0.75)
    assert status.battery == pytest.approx(1.0 - spent / 3600.0)
    assert status.charging is False and status.available
    stats = fleet.take_stats()
    assert stats["battery_empty"] == 0 and stats["ran_flat"] == 0
    assert stats["battery_mean"] == pytest.approx(1.0 - spent / 3600.0, abs=1e-4)


def test_an_empty_battery_cannot_train_and_one_running_flat_loses_its_reply() -> None:
    for name, key in (("test-battery-empty", "battery_empty"), ("test-battery-tiny", "ran_flat")):
        fleet = _fleet(name)
        replies = _run(fleet)
        assert all(r.has_error() and r.error.code == ErrorCode.NODE_UNAVAILABLE for r in replies)
        assert fleet.take_stats()[key] == 2
        assert fleet.telemetry(1000).available is False  # now at 0, not plugged in
        assert fleet.telemetry(1000).battery == 0.0


def test_shipped_phone_profile_has_a_battery_and_bad_tables_name_the_key(tmp_path: Path) -> None:
    phone = get_profile("phone-like").battery
    assert phone is not None and phone.capacity_wh == 15.4 and phone.start_level == (0.3, 1.0)
    assert client_energy_kwh(FULL, ClientTiming(compute_s=900.0, transfer_s=0.0)) == 0.001
    text = get_profile("phone-like").source.read_text()  # type: ignore[union-attr]
    for table, needle in (
        ("[battery]\ncapacity-w = 3\n", "unknown key(s) capacity-w"),
        ("[battery]\nstart-level = [0.9, 0.1]\n", "start-level"),
        ("[battery]\nplugged = [0.5]\n", "24 probabilities"),
    ):
        body = text.split("[battery]")[0] + table
        path = tmp_path / "p.toml"
        path.write_text(body)
        with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            DeviceProfile.from_toml(path)
    no_power = text.split("[power]")[0] + "[battery]\ncapacity-wh = 3\n"
    (tmp_path / "q.toml").write_text(no_power)
    with pytest.raises(ValueError, match=r"\[battery\] needs \[power\]"):
        DeviceProfile.from_toml(tmp_path / "q.toml")
