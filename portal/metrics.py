"""The portal's metrics: requests by route and status, and how long they took.

Counted by an HTTP middleware (`create_app(..., metrics=PortalMetrics())`, which
`run_portal` passes when `SCHOOLGATE_METRICS_PORT` is set); served on the metrics port with
`/healthz` and `/readyz` (service/metrics.py), apart from the portal's own port, which
guests reach. The route is the path template (`/api/v1/devices/{mac}`), never the path a
client sent: one series per route, whatever the client asks for.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastapi import Request, Response
from prometheus_client import CollectorRegistry, Counter, Histogram

UNMATCHED = "(unmatched)"


class PortalMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            "schoolgate_portal_requests",
            "Portal HTTP requests, by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.seconds = Histogram(
            "schoolgate_portal_request_seconds",
            "Time to answer a portal HTTP request, by route template",
            ["route"],
            registry=self.registry,
        )

    async def middleware(self, request: Request, call_next: Callable[[Request], Any]) -> Response:
        started = time.perf_counter()
        status = 500  # unless an answer comes back: an error went on up
        try:
            response: Response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = _route_of(request)
            self.requests.labels(route, request.method, str(status)).inc()
            self.seconds.labels(route).observe(time.perf_counter() - started)


def _route_of(request: Request) -> str:
    route = request.scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    if request.url.path.startswith("/static/"):
        return "/static"
    return UNMATCHED
