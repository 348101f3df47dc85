"""Energy and CO2 of simulated clients against hand-computed traces (oracle), the
metrics.json contract of a real simulation, and bad carbon settings (one line each)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from edge_client.protocol import keys as k
from simulation.carbon.accounting import CarbonLedger, assign_regions, parse_region_mix
from simulation.carbon.trace import parse_trace
from simulation.devices import (
    ClientTiming,
    DeviceProfile,
    client_energy_kwh,
    get_profile,
    register_profile,
)
from simulation.fleet import SimulatedFleet
from simulation.inprocess import run_inprocess
from simulation.runner import run_simulation
from simulation.settings import SimulateSettings

# Watts 10 training / 2 idle; 0.01 s per example, 0.25 s overhead, 50 ms latency each way.
WATT = register_profile(
    DeviceProfile(
        name="test-carbon",
        description="test device with watts",
        seconds_per_example={"t": 0.01},
        default_seconds_per_example=0.01,
        overhead_s=0.25,
        jitter=0.0,
        downlink_mbps=8.0,
        uplink_mbps=4.0,
        latency_ms=50.0,
        hourly_availability=(1.0,) * 24,
        dropout=0.0,
        train_w=10.0,
        idle_w=2.0,
    )
)
# A three-hour trace: simulated hour h reads row h % 3 (the run starts at 09:00 → row 0).
TRACE = parse_trace(
    "timestamp,region,gco2_per_kwh\n"
    "2024-01-01T00:00Z,A,300\n2024-01-01T01:00Z,A,600\n2024-01-01T02:00Z,A,900\n"
    "2024-01-01T00:00Z,B,10\n2024-01-01T01:00Z,B,20\n2024-01-01T02:00Z,B,30\n",
    name="tiny.csv",
)


def test_energy_is_train_watts_times_compute_plus_idle_watts_times_transfer() -> None:
    assert client_energy_kwh(WATT, ClientTiming(compute_s=1.25, transfer_s=0.1)) == (
        pytest.approx((10 * 1.25 + 2 * 0.1) / 3.6e6, rel=1e-12)
    )
    bare = DeviceProfile(**{**WATT.__dict__, "name": "bare", "train_w": None, "source": None})
    with pytest.raises(ValueError, match="has no \\[power\\] train-w and idle-w"):
        client_energy_kwh(bare, ClientTiming(compute_s=1.0, transfer_s=0.0))


def _client() -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(message: Message, context: Context) -> Message:  # no arrays: transfer = latency
        return Message(
            RecordDict({"metrics": MetricRecord({k.NUM_EXAMPLES: 50})}), reply_to=message
        )

    return app


def _server() -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        content = RecordDict({"config": ConfigRecord({k.LOCAL_EPOCHS: 2})})
        nodes = sorted(grid.get_node_ids())
        grid.send_and_receive([grid.create_message(content, "train", n, "1") for n in nodes])

    return app


def test_oracle_grams_per_round_region_and_hour() -> None:
    # Prepare: 4 clients, two in A and two in B; rounds one simulated hour apart.
    ledger = CarbonLedger(trace=TRACE, selection="random")
    fleet = SimulatedFleet(
        mix=(("test-carbon", 1.0),),
        num_nodes=4,
        node_id_base=1000,
        task="t",
        seed=0,
        round_hours=1.0,
        regions=(("A", 0.5), ("B", 0.5)),
        carbon=ledger,
    )
    # By hand: compute 0.25 + 0.01 × 50 examples × 2 epochs = 1.25 s at 10 W, transfer
    # 2 × 50 ms at 2 W (no payload) → 12.7 J = 12.7 / 3.6e6 kWh per client and round.
    kwh = 12.7 / 3.6e6
    # Execute: round 1 at 09:00 (row 0: A 300, B 10), round 2 at 10:00 (row 1: 600, 20).
    rounds = []
    for server_round in (1, 2):
        run_inprocess(
            server_app=_server(), client_app=_client(), num_nodes=4, run_config={}, fleet=fleet
        )
        rounds.append(fleet.take_stats())
        fleet.end_round(server_round, sim_time_s=2.0)
    # Assert
    assert sorted(fleet.region_of(n) for n in range(1000, 1004)) == ["A", "A", "B", "B"]
    assert rounds[0]["energy_kwh"] == pytest.approx(4 * kwh, rel=1e-12)
    assert rounds[0]["co2_g"] == pytest.approx(kwh * (2 * 300 + 2 * 10), rel=1e-12)
    assert rounds[1]["co2_g"] == pytest.approx(kwh * (2 * 600 + 2 * 20), rel=1e-12)
    section = ledger.section()
    assert section["co2_g"] == pytest.approx(kwh * (2 * 900 + 2 * 30), rel=1e-12)
    assert section["per_region"]["A"] == {
        "energy_kwh": pytest.approx(4 * kwh, rel=1e-12),
        "co2_g": pytest.approx(kwh * 2 * 900, rel=1e-12),
        "client_rounds": 4,
    }
    assert (section["trace"], section["selection"], section["source"]) == (
        "tiny.csv",
        "random",
        "estimated",
    )
    assert fleet.telemetry(1000).carbon_intensity == TRACE.intensity(str(fleet.region_of(1000)), 11)


def test_regions_are_exact_shares_independent_of_devices() -> None:
    mix = parse_region_mix("FR=0.5,PL=0.3,SE=0.2")
    regions = assign_regions(10, mix, seed=4)
    assert sorted(regions) == ["FR"] * 5 + ["PL"] * 3 + ["SE"] * 2
    assert regions != assign_regions(10, mix, seed=5)
    assert get_profile("rpi5").train_w == 7.0 and get_profile("phone-like").battery_wh == 15.4


def test_simulation_writes_the_carbon_contract(tmp_path: Path) -> None:
    # Prepare
    settings = SimulateSettings.build(
        config_file=None,
        overrides={
            "task": "breast-cancer-mlp",
            "clients": 20,
            "clients_per_round": 5,
            "rounds": 3,
            "devices": "jetson-orin=0.5,rpi5=0.5",
            "carbon_trace": "europe-2023",
            "regions": "FR=0.2,SE=0.2,GB=0.2,DE=0.2,PL=0.2",
            "round_hours": 2.0,
            "selection": "carbon-aware",
        },
    )
    # Execute
    run_simulation(settings, out_dir=tmp_path, quiet=True)
    doc = json.loads((tmp_path / "metrics.json").read_text())
    # Assert: per round and per run, consistent with each other.
    rows, carbon = doc["rounds"], doc["carbon"]
    assert [r["sim_hour"] for r in rows] == [9.0, 11.0, 13.0]
    assert all(r["energy_kwh"] > 0 and r["co2_g"] > 0 for r in rows)
    assert carbon["co2_g"] == pytest.approx(sum(r["co2_g"] for r in rows), rel=1e-9)
    assert carbon["energy_kwh"] == pytest.approx(sum(r["energy_kwh"] for r in rows), rel=1e-9)
    assert set(carbon["per_region"]) == {"FR", "SE", "GB", "DE", "PL"}
    assert sum(v["client_rounds"] for v in carbon["per_region"].values()) == sum(
        r["clients"] for r in rows
    )
    assert carbon["selection"] == "carbon-aware" and carbon["trace"] == "europe-2023.csv"
    assert carbon["source"] == "estimated"
    assert doc["config"]["carbon-trace"] == "europe-2023"


def _simulate(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "from fedfleet.cli import main; main()",
            "simulate",
            "--out",
            str(cwd / "run"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--carbon-trace", "europe-2023"], "--carbon-trace needs simulated devices"),
        (["--devices", "rpi5", "--selection", "carbon-aware"], "needs a carbon trace"),
        (["--devices", "rpi5", "--carbon-trace", "nope.csv"], "carbon trace nope.csv does not"),
        (
            ["--devices", "rpi5", "--carbon-trace", "europe-2023", "--regions", "XX"],
            "has no region 'XX'; it has: DE, FR, GB, PL, SE; check --regions",
        ),
        (
            ["--devices", "rpi5", "--carbon-trace", "europe-2023", "--regions", "FR=0.5"],
            "--regions fractions sum to 0.5, not 1",
        ),
        (["--devices", "rpi5", "--round-hours", "-1"], "--round-hours must be >= 0"),
        (["--selection", "greenest"], "unknown selection 'greenest'"),
    ],
)
def test_bad_carbon_settings_exit_2_with_one_line(args, message, tmp_path: Path) -> None:
    result = _simulate(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("time,region,gco2_per_kwh\n2024-01-01T00:00Z,DE,1\n", "missing column(s) timestamp"),
        (
            "timestamp,region,gco2_per_kwh\n2024-01-01T00:00Z,DE,1\n2024-01-01T05:00Z,DE,1\n",
            "region DE misses 4 hour(s) after 2024-01-01T00:00Z",
        ),
        ("timestamp,region,gco2_per_kwh\n2024-01-01T00:00Z,DE,high\n", "is not a number"),
    ],
)
def test_bad_trace_file_exits_2_with_one_line(body, message, tmp_path: Path) -> None:
    trace = tmp_path / "trace.csv"
    trace.write_text(body)
    result = _simulate("--devices", "rpi5", "--carbon-trace", str(trace), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "run").exists()
