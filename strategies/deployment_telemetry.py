"""What a deployment tells carbon- and battery-aware selection about its nodes.

In simulation the simulated fleet is the selector's telemetry. In a deployment,
:class:`DeploymentTelemetry` builds each node's :class:`~strategies.selection.NodeStatus`
from what is known there:

- ``region``: the site's region as the operator declares it in the run config
  (``node-regions = "NODE_ID=REGION,..."``, node ids as ``coordinator site list`` shows
  them) or, for a device, the region in its latest fleet telemetry; the declaration wins;
- ``carbon_intensity``: the run config's ``carbon-trace`` (the CSV format and loader of
  :mod:`strategies.carbon_trace`, as ``fedfleet simulate --carbon-trace``) for that region
  at the round's wall-clock hour: the trace's row ``⌊(now − first timestamp) / 1 h⌋``,
  wrapping round at its end (a trace covering the deployment's dates gives the real
  hour; a sample week repeats);
- ``battery``, ``charging``, ``available`` and the rest: the fleet's latest telemetry for
  the device (``fleet`` source), unchanged.

Bad input stops the run before round 1 with one line: a trace that does not load (gaps,
wrong columns: the loader's own message, prefixed with the run-config key) and a site
region the trace lacks. A region a device reports that the trace lacks cannot stop a
run: its intensity is unknown (carbon-aware selection ranks it with the most expensive
known) and it is counted in :attr:`DeploymentTelemetry.unknown_regions`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from strategies.carbon_trace import CarbonTrace, load_trace
from strategies.selection import NodeStatus, TelemetrySource

RC_CARBON_TRACE = "carbon-trace"  # run-config key: a trace file or shipped trace name
RC_NODE_REGIONS = "node-regions"  # run-config key: "NODE_ID=REGION,..." (sites' regions)
_REGION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}\Z")  # as the device protocol's


def check_region(region: str) -> str:
    """``region`` if it is a region name (as the device protocol's: 1–32 letters, digits,
    ``-``, ``_``); a one-line ``ValueError`` saying so otherwise."""
    if not _REGION.match(region):
        raise ValueError(
            f"region {region!r} is not a region name: 1-32 letters, digits, '-' or '_', "
            "e.g. DE or us-east-1"
        )
    return region


def parse_node_regions(text: str) -> dict[int, str]:
    """``node-regions``: ``NODE_ID=REGION,...``; a one-line ``ValueError`` if malformed."""
    hint = f'give {RC_NODE_REGIONS} as "NODE_ID=REGION,...", e.g. "4711=DE,4712=FR"'
    out: dict[int, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        node, sep, region = (x.strip() for x in item.partition("="))
        if not sep or not node.isdigit() or not _REGION.match(region):
            raise ValueError(f"run config {RC_NODE_REGIONS}: bad item {item!r}; {hint}")
        if int(node) in out:
            raise ValueError(f"run config {RC_NODE_REGIONS}: node {node} is named twice; {hint}")
        out[int(node)] = region
    return out


def trace_row(trace: CarbonTrace, now: datetime) -> int:
    """The trace's row for the wall-clock hour ``now`` (wraps round; before the trace's
    start counts backwards from its end)."""
    hours = (now.astimezone(UTC) - trace.start).total_seconds() / 3600.0
    return math.floor(hours) % trace.hours


@dataclass
class DeploymentTelemetry:
    """A :data:`~strategies.selection.TelemetrySource` for a deployment (module doc)."""

    regions: Mapping[int, str] = field(default_factory=dict)
    trace: CarbonTrace | None = None
    fleet: TelemetrySource | None = None
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    unknown_regions: Counter[str] = field(default_factory=Counter)

    def __call__(self, node_id: int) -> NodeStatus | None:
        reported = self.fleet(node_id) if self.fleet is not None else None
        region = self.regions.get(node_id) or (reported.region if reported else None)
        if reported is None and region is None:
            return None
        base = reported or NodeStatus()
        return replace(base, region=region, carbon_intensity=self._intensity(region))

    def _intensity(self, region: str | None) -> float | None:
        if self.trace is None or region is None:
            return None
        if region not in self.trace.intensities:
            self.unknown_regions[region] += 1
            return None
        return self.trace.intensity(region, trace_row(self.trace, self.clock()))


def deployment_telemetry(
    run_config: Mapping[str, Any],
    *,
    regions: Mapping[int, str] | None = None,
    registered: Mapping[int, str] | None = None,
    fleet: TelemetrySource | None = None,
) -> DeploymentTelemetry | None:
    """The run's telemetry source, or ``None`` when nothing is known (no trace, no
    regions, no fleet). ``regions`` default to the regions sites were registered with
    (``registered``: ``coordinator add-site --region``), overridden node by node by the run
    config's ``node-regions``. Raises
    a one-line ``ValueError`` for a bad ``carbon-trace`` or ``node-regions``, or a
    declared region the trace lacks."""
    if regions is None:
        declared = parse_node_regions(str(run_config.get(RC_NODE_REGIONS, "")))
        regions = {**(registered or {}), **declared}
    spec = run_config.get(RC_CARBON_TRACE)
    trace = None
    if spec not in (None, ""):
        try:
            trace = load_trace(str(spec))
        except ValueError as exc:
            raise ValueError(f"run config {RC_CARBON_TRACE}: {exc}") from None
        for node_id, region in sorted(regions.items()):
            if region not in trace.intensities:
                raise ValueError(
                    f"run config {RC_CARBON_TRACE}: {trace.unknown_region(region)} "
                    f"(node {node_id}'s site declares it; fix the site's region or the trace)"
                )
    if trace is None and not regions and fleet is None:
        return None
    return DeploymentTelemetry(regions=dict(regions), trace=trace, fleet=fleet)
