"""Prometheus metrics of one instance, in a registry of its own (no module globals)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Final, Protocol

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric

from .logs import REQUEST_ID_HEADER, log_access, request_id

LATENCY_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
UNMATCHED_ROUTE: Final = "unmatched"
KNOWN_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class LaneCounts(Protocol):
    """What the vote lane (service/votelane.py) counts, read when /metrics is scraped."""

    answered: int
    handed_over: int


class _LaneCollector:
    """The lanes' plain int counters as Prometheus counters: nothing to do per request."""

    def __init__(self, lanes: list[LaneCounts]) -> None:
        self._lanes = lanes

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "fv_vote_lane_answered",
            "Vote requests answered by the vote lane (the others by aiohttp)",
            value=sum(lane.answered for lane in self._lanes),
        )
        yield CounterMetricFamily(
            "fv_vote_lane_handed_over",
            "Connections the vote lane handed to aiohttp (another route, or an unusual request)",
            value=sum(lane.handed_over for lane in self._lanes),
        )


class Metrics:
    """Requests by route and status, request latency, votes and features."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "fv_http_requests",
            "HTTP requests answered",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "fv_http_request_duration_seconds",
            "Time to answer a request",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.votes = Counter(
            "fv_votes", "Vote requests applied", ["action"], registry=self.registry
        )
        self.votes_set = self.votes.labels("vote")  # the children, looked up once
        self.votes_retracted = self.votes.labels("retract")
        self.features = Counter(
            "fv_features", "Feature changes applied", ["action"], registry=self.registry
        )
        self.seq = Gauge("fv_store_seq", "Last change sequence seen", registry=self.registry)
        self.ws_clients = Gauge(
            "fv_ws_clients", "Open WebSocket connections", registry=self.registry
        )
        self.ws_pushes = Counter(
            "fv_ws_pushes", "Stats messages encoded and pushed", registry=self.registry
        )
        self.ws_frames = Counter(
            "fv_ws_frames", "Frames written to WebSocket clients", registry=self.registry
        )
        self.ws_dropped = Counter(
            "fv_ws_dropped_slow", "Clients closed for staying behind", registry=self.registry
        )
        self.ws_idle_closed = Counter(
            "fv_ws_closed_idle",
            "Clients closed after ws_idle_timeout without a message or pong",
            registry=self.registry,
        )
        self.ws_lag = Histogram(
            "fv_ws_push_lag_seconds",
            "From a change to its frame written to every client",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self.lanes: list[LaneCounts] = []
        self.registry.register(_LaneCollector(self.lanes))

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = (
                self.requests.labels(route, method, str(status)),
                self.latency.labels(route),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)


def metrics_middleware(metrics: Metrics, access: bool = False) -> Middleware:
    """Count and time every request under its route template (never its raw path), tag it with a
    request id, and, with `access`, write its access-log line."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        rid = request_id(request)
        try:
            response = await handler(request)
            status = response.status
            if not response.prepared:
                response.headers[REQUEST_ID_HEADER] = rid
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else UNMATCHED_ROUTE
            method = request.method if request.method in KNOWN_METHODS else "OTHER"
            elapsed = time.perf_counter() - started
            metrics.observe(route, method, status, elapsed)
            if access:
                log_access(request, route, status, elapsed)

    return middleware
