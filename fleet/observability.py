"""Prometheus metrics for ``/metrics``: HTTP traffic and fleet state.

Each app gets its own registry (several apps in one test process must not share
counters). Request metrics are labelled by route template (``/api/v1/devices/{device_id}``),
never by raw path, so label cardinality stays bounded. Fleet gauges (devices by status,
model versions by stage) are computed from the database at scrape time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from fleet.limits import ASGIApp, Message, Receive, Scope, Send

#: The one label of every request no route matched.
UNMATCHED = "<unmatched>"
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class HttpMetrics:
    """Request counters and latency histograms registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "fleet_http_requests",
            "HTTP requests handled, by method, route template and status code.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "fleet_http_request_duration_seconds",
            "Time from request start to the end of the response, in seconds.",
            ["method", "route"],
            buckets=_BUCKETS,
            registry=registry,
        )


class MetricsMiddleware:
    """Pure ASGI middleware recording every HTTP request in :class:`HttpMetrics`."""

    def __init__(self, app: ASGIApp, *, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        root_path = str(scope.get("root_path", ""))

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            template = route_template(scope, root_path=root_path)
            method = scope.get("method", "")
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - started)


def route_template(scope: Scope, *, root_path: str = "") -> str:
    """The matched route as a template (``/api/v1/devices/{device_id}``), for labels.

    Never the raw path, so there is a label per route, not per URL: an API route's
    template is rebuilt from the path and its matched parameters and must end with the
    template of the route FastAPI matched (``scope["route"]``; else that template alone
    is used). A mounted app (the dashboard's ``/static`` files, the docs' assets) is one
    label, its mount path and ``/{path}`` (``root_path`` is the scope's before routing:
    a mount extends it). Anything else (no route matched, or refused before routing, as
    by the auth gate) is :data:`UNMATCHED`. 2,000 random paths add no series
    (``tests/fleet/test_health_metrics.py``); the raw path used to be the label of every
    request to a mount.
    """
    if scope.get("endpoint") is None:
        return UNMATCHED
    local = getattr(scope.get("route"), "path_format", None)
    if isinstance(local, str):
        names = {str(value): name for name, value in scope.get("path_params", {}).items()}
        segments = [f"{{{names[s]}}}" if s in names else s for s in scope["path"].split("/")]
        template = "/".join(segments)
        return template if template.endswith(local) else local
    mounted = str(scope.get("root_path", ""))
    if mounted != root_path and mounted.startswith(root_path):
        return f"{mounted[len(root_path) :]}/{{path}}"
    return UNMATCHED


class FleetStateCollector(Collector):
    """Gauges computed from the database when Prometheus scrapes."""

    def __init__(self, read_state: Callable[[], dict[str, dict[str, int]]]) -> None:
        self._read_state = read_state

    def collect(self) -> Iterator[Any]:
        state = self._read_state()
        devices = GaugeMetricFamily(
            "fleet_devices", "Enrolled devices by derived status.", labels=["status"]
        )
        for status, count in sorted(state.get("devices", {}).items()):
            devices.add_metric([status], count)
        yield devices
        models = GaugeMetricFamily(
            "fleet_model_versions", "Registered model versions by stage.", labels=["stage"]
        )
        for stage, count in sorted(state.get("models", {}).items()):
            models.add_metric([stage], count)
        yield models
