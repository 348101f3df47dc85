"""Hourly carbon-intensity traces: the loader lives in :mod:`strategies.carbon_trace`
(a deployment's coordinator reads the same format for ``carbon-trace``, and the
coordinator never imports the simulator); this module keeps the simulator's name for it."""

from __future__ import annotations

from strategies.carbon_trace import (
    COLUMNS,
    TRACE_DIR,
    CarbonTrace,
    available_traces,
    load_trace,
    parse_trace,
)

__all__ = ["COLUMNS", "TRACE_DIR", "CarbonTrace", "available_traces", "load_trace", "parse_trace"]
