"""Prometheus metrics of one instance, in a registry of its own (no module globals).

What changes on every request, vote or push is counted in plain numbers (`Tally`, `Spread`) that
a collector turns into the usual Prometheus series when /metrics is scraped: prometheus_client's
own counters take a lock and check their state on every update, which a single-threaded event
loop does not need (every update and every scrape run on the loop's thread). The rest — feature
changes, sockets opened and closed, drops — keeps prometheus_client's classes.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterable, Iterator
from typing import Any, Final, TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client import metrics as client_metrics
from prometheus_client.core import Metric
from prometheus_client.utils import floatToGoString

from .logs import REQUEST_ID_HEADER, log_access, request_id

LATENCY_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
UNMATCHED_ROUTE: Final = "unmatched"
KNOWN_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
T = TypeVar("T")


class Tally:
    """A counter's or a gauge's value, updated without a lock (see the module's docstring)."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def set(self, value: float) -> None:
        self.value = value


class Spread:
    """A histogram's bucket counts and sum, updated without a lock."""

    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        self.sum += amount
        self.counts[bisect.bisect_left(self.bounds, amount)] += 1  # le: amount <= bound


Labelled = tuple[tuple[str, ...], T]  # label values, and what they label


def _family(
    kind: str, name: str, doc: str, labelnames: tuple[str, ...], items: Iterable[Labelled[Any]]
) -> Metric:
    """A counter family of Tallies or a histogram family of Spreads, with the samples
    prometheus_client's own Counter and Histogram would give (`_created` included)."""
    metric = Metric(name, doc, kind)
    # `_created` series unless switched off for the library's own classes too
    # (PROMETHEUS_DISABLE_CREATED_SERIES, prometheus_client.disable_created_metrics()).
    created = getattr(client_metrics, "_use_created", True)
    for values, item in items:
        labels = dict(zip(labelnames, values, strict=True))
        if isinstance(item, Spread):
            total = 0
            for bound, count in zip((*item.bounds, float("inf")), item.counts, strict=True):
                total += count
                le = floatToGoString(bound)  # type: ignore[no-untyped-call]  # (the library's own)
                metric.add_sample(f"{name}_bucket", {**labels, "le": le}, total)
            metric.add_sample(f"{name}_count", labels, total)
            metric.add_sample(f"{name}_sum", labels, item.sum)
        else:
            metric.add_sample(f"{name}_total", labels, item.value)
        if created:
            metric.add_sample(f"{name}_created", labels, item.created)
    return metric


class _HotCollector:
    """The per-request, per-vote and per-push numbers as Prometheus series, at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._m
        yield _family(
            "counter",
            "fv_http_requests",
            "HTTP requests answered",
            ("route", "method", "status"),
            [((r, meth, str(st)), pair[0]) for (r, meth, st), pair in list(m._children.items())],
        )
        yield _family(
            "histogram",
            "fv_http_request_duration_seconds",
            "Time to answer a request",
            ("route",),
            [((route,), spread) for route, spread in list(m._latency.items())],
        )
        yield _family(
            "counter",
            "fv_votes",
            "Vote requests applied",
            ("action",),
            [(("vote",), m.votes_set), (("retract",), m.votes_retracted)],
        )
        seq = Metric("fv_store_seq", "Last change sequence seen", "gauge")
        seq.add_sample("fv_store_seq", {}, m.seq.value)
        yield seq
        yield _family(
            "counter", "fv_ws_pushes", "Stats messages encoded and pushed", (), [((), m.ws_pushes)]
        )
        yield _family(
            "counter",
            "fv_ws_frames",
            "Frames written to WebSocket clients",
            (),
            [((), m.ws_frames)],
        )
        yield _family(
            "histogram",
            "fv_ws_push_lag_seconds",
            "From a change to its frame written to every client",
            (),
            [((), m.ws_lag)],
        )


class Metrics:
    """Requests by route and status, request latency, votes and features."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # Per request (route, method, status): a count, and the route's latency histogram.
        self._children: dict[tuple[str, str, int], tuple[Tally, Spread]] = {}
        self._latency: dict[str, Spread] = {}
        self.votes_set = Tally()  # fv_votes_total{action="vote"}
        self.votes_retracted = Tally()  # {action="retract"}
        self.seq = Tally()  # fv_store_seq, a gauge
        self.ws_pushes = Tally()
        self.ws_frames = Tally()
        self.ws_lag = Spread(LATENCY_BUCKETS)
        self.registry.register(_HotCollector(self))
        self.features = Counter(
            "fv_features", "Feature changes applied", ["action"], registry=self.registry
        )
        self.ws_clients = Gauge(
            "fv_ws_clients", "Open WebSocket connections", registry=self.registry
        )
        self.ws_dropped = Counter(
            "fv_ws_dropped_slow", "Clients closed for staying behind", registry=self.registry
        )
        self.ws_idle_closed = Counter(
            "fv_ws_closed_idle",
            "Clients closed after ws_idle_timeout without a message or pong",
            registry=self.registry,
        )

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            latency = self._latency.get(route)
            if latency is None:
                latency = self._latency[route] = Spread(LATENCY_BUCKETS)
            children = self._children[key] = (Tally(), latency)
        children[0].value += 1
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
