"""The shipped sample traces, built from published yearly averages with a modelled daily shape.

No data is downloaded. Each region's yearly average carbon intensity of electricity
generation (g CO2/kWh, 2023, rounded) is hand-entered from Ember's Electricity Data
Explorer / "European Electricity Review 2024" (ember-energy.org): France ≈ 56, Sweden ≈ 41,
Great Britain ≈ 238, Germany ≈ 381, Poland ≈ 662. The hourly values are that average
times a daily shape ``1 + a·cos(2π(h − peak)/24)`` (solar pushes Germany's minimum to
midday; evening peaks elsewhere) and a day-of-week factor ``1 + 0.05·sin(2πd/7)``; both
average to 1 over the week, so each region's trace mean is its published average. The
shape is a model, not a measurement: use real exports (Electricity Maps, WattTime)
reshaped to the same CSV format for anything quantitative.

``python -m simulation.carbon.sample_traces`` rewrites ``traces/europe-2023.csv``; a test
checks the shipped file against this code.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

from simulation.carbon.trace import COLUMNS, TRACE_DIR

# region: (yearly average g CO2/kWh, daily amplitude a, hour of the daily peak, UTC)
EUROPE_2023: dict[str, tuple[float, float, int]] = {
    "FR": (56.0, 0.15, 19),
    "SE": (41.0, 0.10, 18),
    "GB": (238.0, 0.15, 18),
    "DE": (381.0, 0.20, 0),  # peak at night, minimum at midday (solar)
    "PL": (662.0, 0.05, 19),
}
START = datetime(2023, 1, 2, tzinfo=UTC)  # a Monday, 00:00 UTC
DAYS = 7


def hourly_value(average: float, amplitude: float, peak: int, hour: int) -> float:
    """The modelled intensity ``hour`` hours after ``START`` (rounded to 0.1 g/kWh)."""
    daily = 1.0 + amplitude * math.cos(2 * math.pi * ((hour % 24) - peak) / 24)
    weekly = 1.0 + 0.05 * math.sin(2 * math.pi * (hour // 24) / DAYS)
    return round(average * daily * weekly, 1)


def europe_2023_csv() -> str:
    """The text of ``traces/europe-2023.csv``."""
    lines = [",".join(COLUMNS)]
    for hour in range(24 * DAYS):
        stamp = (START + timedelta(hours=hour)).strftime("%Y-%m-%dT%H:%M:%SZ")
        for region, (average, amplitude, peak) in EUROPE_2023.items():
            lines.append(f"{stamp},{region},{hourly_value(average, amplitude, peak, hour)}")
    return "\n".join(lines) + "\n"


def write(path: Path = TRACE_DIR / "europe-2023.csv") -> Path:
    """Write the sample trace to ``path``."""
    path.write_text(europe_2023_csv())
    return path


if __name__ == "__main__":  # pragma: no cover
    print(write())
