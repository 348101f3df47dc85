"""Server-side SVG charts (pure functions)."""

from __future__ import annotations

import itertools
import re
import xml.etree.ElementTree as ET

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fleet.dashboard.charts import line_chart_svg, nice_ticks

SVG = "{http://www.w3.org/2000/svg}"


def _points(svg: str) -> list[tuple[float, float]]:
    root = ET.fromstring(svg)
    return [(float(c.get("cx", 0)), float(c.get("cy", 0))) for c in root.iter(f"{SVG}circle")]


def test_one_point_per_round_left_to_right_higher_accuracy_higher_up() -> None:
    svg = str(
        line_chart_svg(
            [(1, 0.2), (2, 0.5), (3, 0.9)],
            title="acc",
            x_label="round",
            y_label="accuracy",
            y_range=(0, 1),
        )
    )
    points = _points(svg)
    assert len(points) == 3
    xs, ys = zip(*points, strict=True)
    assert list(xs) == sorted(xs)
    assert ys[0] > ys[1] > ys[2]  # SVG y grows downwards
    assert len(ET.fromstring(svg).findall(f"{SVG}polyline")) == 1
    assert "round 2: accuracy 0.5" in svg


def test_missing_values_leave_a_gap() -> None:
    svg = str(
        line_chart_svg(
            [(1, 0.2), (2, None), (3, 0.4), (4, 0.5)], title="t", x_label="x", y_label="y"
        )
    )
    lines = ET.fromstring(svg).findall(f"{SVG}polyline")
    assert [len(line.get("points", "").split()) for line in lines] == [1, 2]


def test_text_is_escaped() -> None:
    svg = str(line_chart_svg([(1, 0.5)], title="<script>x</script>", x_label="&", y_label='"'))
    assert "<script>" not in svg
    ET.fromstring(svg)  # still well-formed XML


def test_empty_chart_says_so() -> None:
    svg = str(line_chart_svg([], title="t", x_label="x", y_label="y"))
    assert "no data yet" in svg and not _points(svg)


def test_too_small_a_chart_is_refused() -> None:
    with pytest.raises(ValueError, match="at least"):
        line_chart_svg([(1, 1.0)], title="t", x_label="x", y_label="y", width=10)


@settings(max_examples=60, deadline=None)
@given(
    low=st.floats(-1e4, 1e4, allow_nan=False),
    span=st.floats(1e-3, 1e4, allow_nan=False),
    count=st.integers(2, 10),
)
@example(low=-5.960464477539063e-08, span=51.0, count=2)  # found by CI: first tick above low
def test_ticks_cover_the_range_with_equal_round_steps(low: float, span: float, count: int) -> None:
    high = low + span
    ticks = nice_ticks(low, high, count=count)
    assert ticks[0] <= low + 1e-9 * max(1.0, abs(low)) and ticks[-1] >= high - 1e-9 * max(
        1.0, abs(high)
    )
    steps = [b - a for a, b in itertools.pairwise(ticks)]
    assert all(s > 0 for s in steps)
    assert max(steps) - min(steps) <= 1e-6 * max(steps) + 1e-9
    mantissa = float(re.sub(r"e.*", "", f"{steps[0]:.6e}"))
    assert round(mantissa, 4) in (1.0, 2.0, 5.0, 10.0)
