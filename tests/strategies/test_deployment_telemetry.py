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
