"""Line charts as inline SVG, drawn on the server (no JavaScript, no build step).

:func:`line_chart_svg` is a pure function from points to SVG markup, so the dashboard
shows accuracy per round with nothing to download and the chart can be tested as text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from markupsafe import Markup

_MARGIN_LEFT = 56
_MARGIN_RIGHT = 16
_MARGIN_TOP = 28
_MARGIN_BOTTOM = 40


def nice_ticks(low: float, high: float, *, count: int = 5) -> list[float]:
    """Round tick values covering ``[low, high]`` (steps of 1, 2 or 5 × 10^k)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError("tick range must be finite")
    if high < low:
        low, high = high, low
    if high == low:
        high = low + 1.0
    raw_step = (high - low) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw_step))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw_step)
    digits = max(0, 1 - math.floor(math.log10(step)))
    # Widen from the exact floor/ceil, then drop a tick only when it lies (to the printed
    # precision) at or beyond the bound: a relative fudge on low/step put the first tick at
    # 0 above a low of -6e-8.
    first, last = math.floor(low / step), math.ceil(high / step)
    if round((first + 1) * step, digits) <= low:
        first += 1
    if round((last - 1) * step, digits) >= high:
        last -= 1
    return [round(k * step, digits) for k in range(first, last + 1)]


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def line_chart_svg(
    points: Sequence[tuple[float, float | None]],
    *,
    title: str,
    x_label: str,
    y_label: str,
    y_range: tuple[float, float] | None = None,
    width: int = 640,
    height: int = 260,
) -> Markup:
    """An SVG line chart of ``points`` ``(x, y)``; ``y=None`` leaves a gap.

    Args:
        points: Data in x order (rounds and their accuracy, for example).
        title: Chart title (escaped).
        x_label: X axis label.
        y_label: Y axis label.
        y_range: Fixed y axis range (``(0, 1)`` for accuracy); default: fit the data.
        width: Width in pixels.
        height: Height in pixels.
    """
    if width < 200 or height < 120:
        raise ValueError("chart must be at least 200×120 pixels")
    present = [(x, y) for x, y in points if y is not None and math.isfinite(y)]
    plot_w = width - _MARGIN_LEFT - _MARGIN_RIGHT
    plot_h = height - _MARGIN_TOP - _MARGIN_BOTTOM
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<text class="chart-title" x="{_MARGIN_LEFT}" y="18">{escape(title)}</text>',
    ]
    if not present:
        parts.append(
            f'<text class="chart-empty" x="{width / 2}" y="{height / 2}" '
            'text-anchor="middle">no data yet</text></svg>'
        )
        return Markup("".join(parts))  # noqa: S704 - every interpolated text is escaped

    xs = [x for x, _ in present]
    ys = [y for _, y in present]
    x_low, x_high = min(xs), max(xs)
    if x_high == x_low:
        x_low, x_high = x_low - 1, x_high + 1
    y_ticks = nice_ticks(*(y_range or (min(ys), max(ys))))
    y_low, y_high = y_ticks[0], y_ticks[-1]

    def px(x: float) -> float:
        return _MARGIN_LEFT + (x - x_low) / (x_high - x_low) * plot_w

    def py(y: float) -> float:
        return _MARGIN_TOP + (1 - (y - y_low) / (y_high - y_low)) * plot_h

    for tick in y_ticks:
        y = py(tick)
        parts.append(
            f'<line class="grid" x1="{_MARGIN_LEFT}" x2="{width - _MARGIN_RIGHT}" '
            f'y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="tick" x="{_MARGIN_LEFT - 6}" y="{y + 4:.1f}" '
            f'text-anchor="end">{_fmt(tick)}</text>'
        )
    x_ticks = [t for t in nice_ticks(x_low, x_high, count=8) if x_low <= t <= x_high]
    for tick in x_ticks:
        x = px(tick)
        parts.append(
            f'<text class="tick" x="{x:.1f}" y="{height - _MARGIN_BOTTOM + 16}" '
            f'text-anchor="middle">{_fmt(tick)}</text>'
        )
    parts.append(
        f'<line class="axis" x1="{_MARGIN_LEFT}" x2="{_MARGIN_LEFT}" y1="{_MARGIN_TOP}" '
        f'y2="{_MARGIN_TOP + plot_h}"/>'
        f'<line class="axis" x1="{_MARGIN_LEFT}" x2="{width - _MARGIN_RIGHT}" '
        f'y1="{_MARGIN_TOP + plot_h}" y2="{_MARGIN_TOP + plot_h}"/>'
        f'<text class="axis-label" x="{_MARGIN_LEFT + plot_w / 2}" y="{height - 6}" '
        f'text-anchor="middle">{escape(x_label)}</text>'
        f'<text class="axis-label" x="14" y="{_MARGIN_TOP + plot_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 14 {_MARGIN_TOP + plot_h / 2})">{escape(y_label)}</text>'
    )
    # One polyline per run of consecutive present values (None leaves a gap).
    segment: list[str] = []
    segments: list[list[str]] = []
    for x, value in points:
        if value is None or not math.isfinite(value):
            if segment:
                segments.append(segment)
            segment = []
            continue
        segment.append(f"{px(x):.1f},{py(value):.1f}")
    if segment:
        segments.append(segment)
    for seg in segments:
        parts.append(f'<polyline class="series" points="{" ".join(seg)}"/>')
    for x, y in present:
        parts.append(
            f'<circle class="point" cx="{px(x):.1f}" cy="{py(y):.1f}" r="3">'
            f"<title>{escape(x_label)} {_fmt(x)}: {escape(y_label)} {_fmt(y)}</title></circle>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every interpolated text is escaped
