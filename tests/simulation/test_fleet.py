"""The simulated fleet: availability, dropouts, reply timing, bytes, deadlines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid, ServerApp

from edge_client.protocol import keys as k
from simulation.devices import DeviceProfile, client_duration_s, register_profile
from simulation.fleet import SimulatedFleet, payload_bytes
from simulation.inprocess import InProcessGrid, run_inprocess
from simulation.runner import run_simulation
from simulation.settings import SimulateSettings


def _profile(name: str, *, online: float, dropout: float) -> DeviceProfile:
    return register_profile(
        DeviceProfile(
            name=name,
            description="test device",
            seconds_per_example={"t": 0.01},
            default_seconds_per_example=0.01,
            overhead_s=0.25,
            jitter=0.0,
            downlink_mbps=8.0,
            uplink_mbps=4.0,
            latency_ms=50.0,
            hourly_availability=(online,) * 24,
            dropout=dropout,
        )
    )


STEADY = _profile("test-steady", online=1.0, dropout=0.0)
GONE = _profile("test-offline", online=0.0, dropout=0.0)
FLAKY = _profile("test-flaky", online=1.0, dropout=1.0)


def _fleet(mix: tuple[tuple[str, float], ...], n: int = 4) -> SimulatedFleet:
    return SimulatedFleet(mix=mix, num_nodes=n, node_id_base=1000, task="t", seed=0)


def _client() -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(message: Message, context: Context) -> Message:
        arrays = ArrayRecord({"w": torch.ones(1000)})  # 4,000 bytes of float32 (+ header)
        metrics = MetricRecord({k.NUM_EXAMPLES: 50})
        return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=message)

    return app


def _server(replies: list[Message], sent: list[Message]) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        content = RecordDict(
            {
                "arrays": ArrayRecord({"w": torch.zeros(2000)}),
                "config": ConfigRecord({k.LOCAL_EPOCHS: 2}),
            }
        )
        messages = [grid.create_message(content, "train", n, "1") for n in grid.get_node_ids()]
        sent.extend(messages)
        replies.extend(grid.send_and_receive(messages))

    return app


def _run(fleet: SimulatedFleet) -> tuple[list[Message], list[Message]]:
    replies: list[Message] = []
    sent: list[Message] = []
    run_inprocess(
        server_app=_server(replies, sent),
        client_app=_client(),
        num_nodes=4,
        run_config={},
        fleet=fleet,
    )
    return replies, sent


def test_replies_carry_the_profiles_duration_and_bytes_are_counted() -> None:
    # Execute
    fleet = _fleet((("test-steady", 1.0),))
    replies, sent = _run(fleet)
    # Assert: sim-seconds is exactly the timing model for these payloads.
    assert len(replies) == 4 and not any(r.has_error() for r in replies)
    expected = client_duration_s(
        STEADY,
        task="t",
        num_examples=50,
        model_bytes=payload_bytes(sent[0]),
        upload_bytes=payload_bytes(replies[0]),
        epochs=2,
    )
    assert expected == pytest.approx(
        0.05 + 8000 * 8 / 8e6 + 0.25 + 1.0 + 0.05 + 4000 * 8 / 4e6, abs=0.01
    )
    assert [r.content["metrics"][k.SIM_SECONDS] for r in replies] == [pytest.approx(expected)] * 4
    stats = fleet.take_stats()
    assert stats["bytes_down"] == 4 * payload_bytes(sent[0])
    assert stats["bytes_up"] == 4 * payload_bytes(replies[0])
    assert stats["offline"] == 0 and stats["dropped"] == 0
    assert fleet.take_stats()["bytes_down"] == 0  # counters reset


def test_offline_and_dropped_devices_answer_node_unavailable() -> None:
    for name, key in (("test-offline", "offline"), ("test-flaky", "dropped")):
        fleet = _fleet(((name, 1.0),))
        replies, _ = _run(fleet)
        assert len(replies) == 4
        assert all(r.has_error() and r.error.code == ErrorCode.NODE_UNAVAILABLE for r in replies)
        assert fleet.take_stats()[key] == 4


def test_phones_are_online_at_night_not_in_the_morning() -> None:
    fleet = SimulatedFleet(
        mix=(("phone-like", 1.0),), num_nodes=2000, node_id_base=0, task="digits-cnn", seed=1
    )
    morning = np.mean([fleet.online(n) for n in range(2000)])  # 09:00
    fleet.advance_to(17 * 3600.0)  # 02:00 the next day
    night = np.mean([fleet.online(n) for n in range(2000)])
    assert fleet.hour_of_day() == pytest.approx(2.0)
    assert morning == pytest.approx(0.1, abs=0.03) and night == pytest.approx(0.8, abs=0.03)
    assert fleet.telemetry(5).speed == pytest.approx(0.3 / 0.75)


def test_fleet_is_reproducible_from_the_seed() -> None:
    mix = (("rpi5", 0.5), ("phone-like", 0.5))
    a = SimulatedFleet(mix=mix, num_nodes=50, node_id_base=0, task="digits-cnn", seed=3)
    b = SimulatedFleet(mix=mix, num_nodes=50, node_id_base=0, task="digits-cnn", seed=3)
    assert [a.profile_of(n).name for n in range(50)] == [b.profile_of(n).name for n in range(50)]
    assert [a.online(n) for n in range(50)] == [b.online(n) for n in range(50)]
    assert a.counts() == {"rpi5": 25, "phone-like": 25}


def test_round_deadline_drops_late_devices_and_reports_wall_clock(tmp_path: Path) -> None:
    # Prepare: jetson-orin answers in ~0.45 s, rpi4 in ~0.7 s; the deadline is 0.6 s.
    settings = SimulateSettings.build(
        config_file=None,
        overrides={
            "task": "breast-cancer-mlp",
            "clients": 20,
            "clients_per_round": 4,
            "rounds": 3,
            "devices": "jetson-orin=0.5,rpi4=0.5",
            "deadline": 0.6,
            "over_select": 0.5,
        },
    )
    # Execute
    doc = run_simulation(settings, out_dir=tmp_path, quiet=True)
    # Assert
    rows = doc["rounds"]
    assert len(rows) == 3
    assert sum(r["late"] for r in rows) > 0, rows
    for r in rows:
        assert r["selected"] == 6 and r["clients"] <= 4
        assert r["sim_round_s"] <= 0.6 + 1e-9
        assert r["bytes_down"] > 0 and r["sim_slowest_s"] > 0.6  # the stragglers were there
        assert "sim_hour" in r and "sim_time_s" in r
    assert rows[-1]["sim_time_s"] == pytest.approx(sum(r["sim_round_s"] for r in rows))
    saved = json.loads((tmp_path / "metrics.json").read_text())["rounds"]
    assert saved[0]["late"] == rows[0]["late"] and "bytes_up" in saved[0]


def test_the_engine_stamps_nothing_without_devices() -> None:
    grid = InProcessGrid(
        client_app=_client(), num_nodes=2, run_config={}, node_config_fn=lambda i: {}
    )
    assert grid.fleet is None


def test_device_aware_selection_sees_the_profiles_availability(tmp_path: Path) -> None:
    # Prepare: at 09:00 nine phones in ten are offline.
    def run(selection: str) -> list[dict]:
        settings = SimulateSettings.build(
            config_file=None,
            overrides={
                "task": "breast-cancer-mlp",
                "clients": 40,
                "clients_per_round": 5,
                "rounds": 2,
                "devices": "phone-like=0.5,jetson-orin=0.5",
                "selection": selection,
            },
        )
        return run_simulation(settings, out_dir=tmp_path / selection, quiet=True)["rounds"]

    # Execute
    naive, aware = run("random"), run("device-aware")
    # Assert: random selection picks offline phones; device-aware selection never does.
    assert sum(r["offline"] for r in naive) > 0
    assert sum(r["offline"] for r in aware) == 0
    assert all(r["selected"] == 5 and r["clients"] + r["dropped"] == 5 for r in aware)
