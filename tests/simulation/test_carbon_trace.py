"""Hourly carbon traces: parsing, the shipped sample, and bad input (one line each)."""

from __future__ import annotations

import pytest

from simulation.carbon import sample_traces
from simulation.carbon.trace import TRACE_DIR, available_traces, load_trace, parse_trace

HEADER = "timestamp,region,gco2_per_kwh\n"


def test_parse_reads_each_region_by_hour_and_wraps() -> None:
    text = HEADER + (
        "2024-03-01T00:00:00Z,A,100\n2024-03-01T00:00:00Z,B,10\n"
        "2024-03-01T01:00:00+00:00,A,200\n2024-03-01T01:00:00Z,B,20\n"
        "2024-03-01T02:00:00,A,300\n2024-03-01T02:00:00Z,B,30\n"
    )
    trace = parse_trace(text, name="t.csv")
    assert trace.regions == ["A", "B"]
    assert trace.hours == 3
    assert [trace.intensity("A", h) for h in range(5)] == [100, 200, 300, 100, 200]
    assert trace.intensity("B", 2) == 30


def test_offsets_are_converted_to_utc_and_extra_columns_ignored() -> None:
    text = "zone_name,timestamp,gco2_per_kwh,region\nx,2024-03-01T01:00:00+01:00,5,A\n"
    text += "x,2024-03-01T01:00:00Z,7,A\n"
    trace = parse_trace(text, name="t.csv")
    assert trace.start.hour == 0
    assert [trace.intensity("A", h) for h in range(2)] == [5, 7]


def test_shipped_trace_is_what_the_generator_writes_with_published_means() -> None:
    assert "europe-2023" in available_traces()
    shipped = (TRACE_DIR / "europe-2023.csv").read_text()
    assert shipped == sample_traces.europe_2023_csv()
    trace = load_trace("europe-2023")
    assert trace.hours == 168
    for region, (average, _, _) in sample_traces.EUROPE_2023.items():
        assert trace.intensities[region].mean() == pytest.approx(average, abs=0.05)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("time,region,gco2_per_kwh\n2024-03-01T00:00Z,A,1\n", "missing column(s) timestamp"),
        ("timestamp,region,co2\n2024-03-01T00:00Z,A,1\n", "missing column(s) gco2_per_kwh"),
        (HEADER + "2024-03-01T00:00Z,A,abc\n", "line 2: gco2_per_kwh 'abc' is not a number"),
        (HEADER + "2024-03-01T00:00Z,A,-3\n", "must be a finite number >= 0"),
        (HEADER + "2024-03-01T00:00Z,A,nan\n", "must be a finite number >= 0"),
        (HEADER + "yesterday,A,1\n", "line 2: timestamp 'yesterday' is not ISO 8601"),
        (HEADER + "2024-03-01T00:30Z,A,1\n", "is not on the hour"),
        (HEADER + "2024-03-01T00:00Z,,1\n", "line 2: the region is empty"),
        (HEADER, "has no rows"),
        (
            HEADER + "2024-03-01T00:00Z,A,1\n2024-03-01T00:00Z,A,2\n",
            "line 3: region A has hour 2024-03-01T00:00Z twice",
        ),
        (
            HEADER + "2024-03-01T00:00Z,A,1\n2024-03-01T03:00Z,A,2\n",
            "region A misses 2 hour(s) after 2024-03-01T00:00Z",
        ),
        (
            HEADER + "2024-03-01T00:00Z,A,1\n2024-03-01T01:00Z,A,1\n2024-03-01T00:00Z,B,2\n",
            "region B covers 2024-03-01T00:00Z..2024-03-01T00:00Z but A covers",
        ),
    ],
)
def test_bad_trace_is_one_clear_line(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_trace(text, name="bad.csv")
    assert message in str(info.value)
    assert str(info.value).startswith("carbon trace bad.csv")
    assert "\n" not in str(info.value)


def test_unknown_trace_and_unknown_region_name_the_choices(tmp_path) -> None:
    with pytest.raises(ValueError, match="does not exist; give a CSV file or one of: europe-2023"):
        load_trace(str(tmp_path / "nope.csv"))
    with pytest.raises(ValueError, match="has no region 'XX'; it has: DE, FR, GB, PL, SE"):
        load_trace("europe-2023").intensity("XX", 0)
