"""Prometheus metrics of one instance, in a registry of its own (no module globals).

Everything is one of prometheus_client's own classes (`Counter`, `Histogram`, `Gauge`). A
labelled series is a child the library makes once: the fixed ones (votes, feature changes) when
the instance starts, the per-request ones on the first request of their (route, method, status)
and then kept in a plain dict, so a request costs one dict lookup, never a `.labels()` call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Final, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
UNMATCHED_ROUTE: Final = "unmatched"
KNOWN_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD: Final = "OTHER"


class RequestSeries(NamedTuple):
    """The children one kind of answer (route, method, status) counts and times itself in."""

    requests: Counter
    latency: Histogram


class HttpMetrics:
    """fv_http_requests_total{route,method,status} and fv_http_request_duration_seconds{route}.

    The label values are bounded by the app: a route template (or `unmatched`), one of
    KNOWN_METHODS (or OTHER) and a status code — never a raw path."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._requests = Counter(
            "fv_http_requests",
            "HTTP requests answered",
            ["route", "method", "status"],
            registry=registry,
        )
        self._latency = Histogram(
            "fv_http_request_duration_seconds",
            "Time to answer a request",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._series: dict[tuple[str, str, int], RequestSeries] = {}

    def series(self, route: str, method: str, status: int) -> RequestSeries:
        """The children of one (route, method, status), made on first use and kept."""
        key = (route, method, status)
        found = self._series.get(key)
        if found is None:
            found = self._series[key] = RequestSeries(
                self._requests.labels(route, method, str(status)), self._latency.labels(route)
            )
        return found

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """One answered request: counted under its labels, its time in its route's histogram."""
        requests, latency = self.series(route, method, status)
        requests.inc()
        latency.observe(seconds)


BOARD_SOCKET_BUCKETS: Final = (1, 5, 10, 50, 100, 500, 1000, 5000, 10000)


class BoardSockets(Collector):
    """fv_ws_board_sockets: how many boards have how many open sockets on this instance,
    collected at scrape time (prometheus_client's documented custom-collector interface)."""

    def __init__(self) -> None:
        self.source: Callable[[], Iterable[int]] = tuple

    def collect(self) -> Iterator[HistogramMetricFamily]:
        counts = list(self.source())
        buckets = [
            (str(bound), float(sum(1 for n in counts if n <= bound)))
            for bound in BOARD_SOCKET_BUCKETS
        ]
        buckets.append(("+Inf", float(len(counts))))
        yield HistogramMetricFamily(
            "fv_ws_board_sockets",
            "Open WebSocket connections per board with any (one observation per board)",
            buckets=buckets,
            sum_value=float(sum(counts)),
        )


class Metrics:
    """Requests by route and status, request latency, votes, features and WebSockets."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.http = HttpMetrics(registry)
        votes = Counter("fv_votes", "Vote requests applied", ["action"], registry=registry)
        self.votes_set = votes.labels("vote")
        self.votes_retracted = votes.labels("retract")
        self.features = Counter(
            "fv_features", "Feature changes applied", ["action"], registry=registry
        )
        self.features_created = self.features.labels("create")
        self.features_updated = self.features.labels("update")
        self.features_deleted = self.features.labels("delete")
        # (the default board's)
        self.seq = Gauge("fv_store_seq", "Last change sequence seen", registry=registry)
        boards = Counter(
            "fv_boards_changes", "Boards created and deleted", ["action"], registry=registry
        )
        self.boards_created = boards.labels("create")
        self.boards_deleted = boards.labels("delete")
        self.boards = Gauge(
            "fv_boards", "Boards of the deployment (set at each scrape)", registry=registry
        )
        # Sockets per board without a label per board (cardinality): a histogram of the live
        # boards' socket counts, made at each scrape from the broadcasters (BoardSockets).
        self.board_sockets = BoardSockets()
        registry.register(self.board_sockets)
        self.ws_pushes = Counter(
            "fv_ws_pushes", "Stats messages encoded and pushed", registry=registry
        )
        self.ws_frames = Counter(
            "fv_ws_frames", "Frames written to WebSocket clients", registry=registry
        )
        self.ws_lag = Histogram(
            "fv_ws_push_lag_seconds",
            "From a change to its frame written to every client",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.ws_clients = Gauge("fv_ws_clients", "Open WebSocket connections", registry=registry)
        self.ws_dropped = Counter(
            "fv_ws_dropped_slow", "Clients closed for staying behind", registry=registry
        )
        self.ws_idle_closed = Counter(
            "fv_ws_closed_idle",
            "Clients closed after ws_idle_timeout without a message or pong",
            registry=registry,
        )

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """One answered HTTP request (see HttpMetrics.observe)."""
        self.http.observe(route, method, status, seconds)
