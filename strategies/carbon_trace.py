"""Hourly carbon-intensity traces: grams of CO2 per kWh of electricity, per region and hour.

The format (docs/carbon.md) is a CSV with a header and at least these columns:

- ``timestamp``: the hour's start, ISO 8601 (``2023-01-01T05:00:00Z``); a UTC offset is
  converted to UTC, a time without one is read as UTC (Electricity Maps' "Datetime
  (UTC)" column). Whole hours only.
- ``region``: a name the simulation's ``--regions`` use (``FR``, ``DE``, ``US-CAL``...).
- ``gco2_per_kwh``: the grid's carbon intensity in that hour, a finite number >= 0.

Every region must cover the same consecutive hours, without gaps or repeats; other
columns are ignored. A simulation's hour ``h`` (hours since 00:00 of its day 0) reads the
trace's row ``h`` hours after its first timestamp, wrapping round at the trace's end.
Shipped traces (``traces/*.csv``) are named by file stem: ``--carbon-trace europe-2023``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import numpy as np

# The shipped samples live with the simulator (simulation/carbon/traces/); the loader is
# here so that a deployment's coordinator reads the same format (``carbon-trace``).
TRACE_DIR = Path(__file__).resolve().parents[1] / "simulation" / "carbon" / "traces"
COLUMNS = ("timestamp", "region", "gco2_per_kwh")


@dataclass(frozen=True)
class CarbonTrace:
    """Hourly intensities (g CO2 / kWh) per region, all over the same hours from ``start``."""

    name: str
    start: datetime
    intensities: Mapping[str, np.ndarray] = field(repr=False)

    @property
    def hours(self) -> int:
        """How many hours the trace covers (per region)."""
        return len(next(iter(self.intensities.values())))

    @property
    def regions(self) -> list[str]:
        """The trace's regions, sorted."""
        return sorted(self.intensities)

    def intensity(self, region: str, hour: int) -> float:
        """g CO2 per kWh in ``region`` during simulated hour ``hour`` (wraps round)."""
        try:
            series = self.intensities[region]
        except KeyError:
            raise ValueError(self.unknown_region(region)) from None
        return float(series[hour % len(series)])

    def unknown_region(self, region: str) -> str:
        """The one-line error for a region the trace lacks."""
        return (
            f"carbon trace {self.name} has no region {region!r}; it has: {', '.join(self.regions)}"
        )


def available_traces() -> list[str]:
    """Names of the shipped sample traces (``traces/*.csv``), sorted."""
    return sorted(p.stem for p in TRACE_DIR.glob("*.csv"))


def load_trace(spec: str) -> CarbonTrace:
    """A shipped trace by name, else a CSV file by path; one-line ``ValueError`` if bad."""
    shipped = TRACE_DIR / f"{spec}.csv"
    path = shipped if "/" not in spec and shipped.is_file() else Path(spec)
    if not path.is_file():
        raise ValueError(
            f"carbon trace {spec} does not exist; give a CSV file or one of: "
            + ", ".join(available_traces())
        )
    return parse_trace(path.read_text(encoding="utf-8-sig"), name=path.name)


def parse_trace(text: str, *, name: str) -> CarbonTrace:
    """Parse and validate a trace CSV's text (see the module doc for the format)."""
    reader = csv.DictReader(text.splitlines())
    header = [c.strip() for c in reader.fieldnames or []]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise ValueError(
            f"carbon trace {name}: missing column(s) {', '.join(missing)}; the header must "
            f"name {','.join(COLUMNS)} (found: {','.join(header) or 'nothing'})"
        )
    reader.fieldnames = header
    rows: dict[str, dict[datetime, float]] = {}
    for line, row in enumerate(reader, start=2):
        stamp = _timestamp(row.get("timestamp"), name=name, line=line)
        region = (row.get("region") or "").strip()
        if not region:
            raise ValueError(f"carbon trace {name} line {line}: the region is empty")
        value = _intensity(row.get("gco2_per_kwh"), name=name, line=line)
        hours = rows.setdefault(region, {})
        if stamp in hours:
            raise ValueError(
                f"carbon trace {name} line {line}: region {region} has hour "
                f"{_iso(stamp)} twice; keep one row per region and hour"
            )
        hours[stamp] = value
    if not rows:
        raise ValueError(f"carbon trace {name} has no rows; add hourly rows under the header")
    return CarbonTrace(name=name, start=_check_hours(rows, name=name), intensities=_series(rows))


def _timestamp(raw: str | None, *, name: str, line: int) -> datetime:
    text = (raw or "").strip()
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"carbon trace {name} line {line}: timestamp {text!r} is not ISO 8601 "
            "(e.g. 2023-01-01T05:00:00Z)"
        ) from None
    stamp = stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)
    if stamp.minute or stamp.second or stamp.microsecond:
        raise ValueError(
            f"carbon trace {name} line {line}: timestamp {text} is not on the hour; "
            "the trace must be hourly"
        )
    return stamp


def _intensity(raw: str | None, *, name: str, line: int) -> float:
    text = (raw or "").strip()
    try:
        value = float(text)
    except ValueError:
        raise ValueError(
            f"carbon trace {name} line {line}: gco2_per_kwh {text!r} is not a number"
        ) from None
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(
            f"carbon trace {name} line {line}: gco2_per_kwh {text} must be a finite number >= 0"
        )
    return value


def _check_hours(rows: Mapping[str, Mapping[datetime, float]], *, name: str) -> datetime:
    """The common first hour; refuses gaps and regions covering different hours."""
    first_region = min(rows)
    start = min(rows[first_region])
    end = max(rows[first_region])
    for region in sorted(rows):
        stamps = sorted(rows[region])
        if stamps[0] != start or stamps[-1] != end:
            raise ValueError(
                f"carbon trace {name}: region {region} covers {_iso(stamps[0])}..{_iso(stamps[-1])}"
                f" but {first_region} covers {_iso(start)}..{_iso(end)}; "
                "every region needs the same hours"
            )
        for before, after in pairwise(stamps):
            if after - before != timedelta(hours=1):
                missing = int((after - before) / timedelta(hours=1)) - 1
                raise ValueError(
                    f"carbon trace {name}: region {region} misses {missing} hour(s) after "
                    f"{_iso(before)}; fill every hour (no gaps)"
                )
    return start


def _series(rows: Mapping[str, Mapping[datetime, float]]) -> dict[str, np.ndarray]:
    return {
        region: np.array([hours[t] for t in sorted(hours)], dtype=np.float64)
        for region, hours in rows.items()
    }


def _iso(stamp: datetime) -> str:
    return stamp.strftime("%Y-%m-%dT%H:%MZ")
