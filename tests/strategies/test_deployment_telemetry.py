"""A deployment's selector telemetry: site regions, fleet telemetry and a carbon trace."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from strategies.carbon_trace import parse_trace
from strategies.deployment_telemetry import DeploymentTelemetry, deployment_telemetry, trace_row
from strategies.selection import NodeStatus

CSV = "timestamp,region,gco2_per_kwh\n" + "".join(
    f"2024-01-01T{h:02d}:00:00Z,{r},{v + h}\n"
    for h in range(3)
    for r, v in (("DE", 400), ("FR", 50))
)


def test_region_from_the_site_or_the_device_and_intensity_at_the_wall_clock_hour() -> None:
    trace = parse_trace(CSV, name="t.csv")
    now = datetime(2024, 1, 1, 1, 30, tzinfo=UTC)
    fleet = {7: NodeStatus(battery=0.4, charging=False, region="FR"), 8: NodeStatus(region="XX")}
    source = DeploymentTelemetry(
        regions={1: "DE", 7: "DE"}, trace=trace, fleet=fleet.get, clock=lambda: now
    )
    assert source(1) == NodeStatus(region="DE", carbon_intensity=401.0)
    # The site's declaration wins over the device's; battery passes through.
    assert source(7) == NodeStatus(battery=0.4, charging=False, region="DE", carbon_intensity=401.0)
    assert source(8) == NodeStatus(region="XX") and source.unknown_regions["XX"] == 1
    assert source(9) is None  # nothing known
    # 02:59 is row 2; 03:00 wraps to row 0; an hour before the start is the last row.
    assert trace_row(trace, datetime(2024, 1, 1, 2, 59, tzinfo=UTC)) == 2
    assert trace_row(trace, datetime(2024, 1, 1, 3, 0, tzinfo=UTC)) == 0
    assert trace_row(trace, datetime(2023, 12, 31, 23, 0, tzinfo=UTC)) == 2


def test_bad_traces_and_regions_stop_the_run_with_one_line(tmp_path: Path) -> None:
    assert deployment_telemetry({}) is None
    from_config = deployment_telemetry({"node-regions": "4711=DE, 4712=US-CAL-CISO"})
    assert from_config is not None and from_config.regions == {4711: "DE", 4712: "US-CAL-CISO"}
    for text in ("4711:DE", "x=DE", "4711=D E", "1=DE,1=FR"):
        with pytest.raises(ValueError, match="^run config node-regions: .*NODE_ID=REGION"):
            deployment_telemetry({"node-regions": text})
    good = tmp_path / "good.csv"
    good.write_text(CSV)
    made = deployment_telemetry({"carbon-trace": str(good)}, regions={3: "FR"})
    assert made is not None and made.trace is not None and made.trace.regions == ["DE", "FR"]
    with pytest.raises(ValueError, match=r"has no region 'PL'.*node 3's site declares it"):
        deployment_telemetry({"carbon-trace": str(good)}, regions={3: "PL"})
    gap = tmp_path / "gap.csv"
    gap.write_text(CSV.replace("2024-01-01T01:00:00Z,DE,401\n", ""))
    wrong = tmp_path / "wrong.csv"
    wrong.write_text(CSV.replace("gco2_per_kwh", "co2"))
    for path, needle in ((gap, "misses 1 hour"), (wrong, "missing column")):
        with pytest.raises(ValueError, match=f"^run config carbon-trace: carbon trace .*{needle}"):
            deployment_telemetry({"carbon-trace": str(path)}, regions={})


def test_devices_lying_about_battery_and_region_cannot_crowd_out_other_groups() -> None:
    # Prepare: 6 liars claim a full, charging battery on the cleanest grid (region A);
    # 2 honest devices in each of B and C: a battery at 60%, not charging, a dirty grid.
    from strategies.carbon_selection import BatteryAwareSelector, CarbonAwareSelector

    liars = {
        n: NodeStatus(battery=1.0, charging=True, region="A", carbon_intensity=0.0)
        for n in range(6)
    }
    honest = {
        n: NodeStatus(battery=0.6, charging=False, region=r, carbon_intensity=900.0)
        for n, r in ((6, "B"), (7, "B"), (8, "C"), (9, "C"))
    }
    status = {**liars, **honest}
    for selector in (
        BatteryAwareSelector(clients_per_round=4, seed=0, telemetry=status.get),
        CarbonAwareSelector(clients_per_round=4, seed=0, telemetry=status.get),
    ):
        for rnd in range(1, 6):
            # Execute
            chosen = selector.select(rnd, list(status))
            # Assert: the floor serves B and C every round; the liars win only preference.
            regions = {status[n].region for n in chosen}
            assert {"B", "C"} <= regions, (type(selector).__name__, rnd, chosen)
            assert sum(n in liars for n in chosen) == 2


def test_run_submit_preflight_refuses_a_region_the_trace_lacks(tmp_path: Path) -> None:
    from coordinator.preflight import check_run_config

    trace = tmp_path / "grid.csv"
    trace.write_text(CSV)
    ok = {"carbon-trace": str(trace), "node-regions": "5=FR"}
    check_run_config(ok, registered=lambda: 0)
    with pytest.raises(ValueError, match="has no region 'SE'"):
        check_run_config({**ok, "node-regions": "5=SE"}, registered=lambda: 0)
