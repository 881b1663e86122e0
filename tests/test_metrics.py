"""service/metrics.py keeps the exposition's series: the same names, labels, help texts and
buckets as the reference below, built with prometheus_client's classes as a user would."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import pytest
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    enable_created_metrics,
    generate_latest,
)

from service.metrics import LATENCY_BUCKETS, Metrics

HOT = (
    "fv_http_requests",
    "fv_http_request_duration_seconds",
    "fv_votes",
    "fv_store_seq",
    "fv_ws_pushes",
    "fv_ws_frames",
    "fv_ws_push_lag_seconds",
)
# (route, method, status, seconds): bounds hit exactly, between, above every bound, a repeat
REQUESTS = [
    ("/features/{id}/vote", "PUT", 200, 0.0003),
    ("/features/{id}/vote", "PUT", 200, 0.0005),
    ("/features/{id}/vote", "PUT", 429, 0.002),
    ("/features/stats", "GET", 304, 0.5),
    ("unmatched", "OTHER", 404, 3.0),
    ("/features/{id}/vote", "PUT", 200, 0.01),
]


def hot_lines(registry: CollectorRegistry) -> list[str]:
    """The exposition's lines of the hot families, sorted, `_created` values masked."""
    text = generate_latest(registry).decode()
    names = "|".join(re.escape(n) for n in HOT)
    picked = re.compile(rf"^(# (HELP|TYPE) )?({names})(_total|_created|_bucket|_count|_sum)?[ {{]")
    lines = [line for line in text.splitlines() if picked.match(line)]
    return sorted(re.sub(r"^(\S+_created(\{.*\})?) .*$", r"\1 <time>", line) for line in lines)


def reference(registry: CollectorRegistry, used: bool = True) -> None:
    """The same numbers (none when not `used`), kept by prometheus_client's classes."""
    requests = Counter("fv_http_requests", "HTTP requests answered", ["route", "method", "status"],
                       registry=registry)  # fmt: skip
    latency = Histogram("fv_http_request_duration_seconds", "Time to answer a request", ["route"],
                        buckets=LATENCY_BUCKETS, registry=registry)  # fmt: skip
    for route, method, status, seconds in REQUESTS if used else []:
        requests.labels(route, method, str(status)).inc()
        latency.labels(route).observe(seconds)
    votes = Counter("fv_votes", "Vote requests applied", ["action"], registry=registry)
    votes.labels("vote").inc(3 if used else 0)
    votes.labels("retract").inc(1 if used else 0)
    Gauge("fv_store_seq", "Last change sequence seen", registry=registry).set(42 if used else 0)
    pushes = Counter("fv_ws_pushes", "Stats messages encoded and pushed", registry=registry)
    pushes.inc(2 if used else 0)
    frames = Counter("fv_ws_frames", "Frames written to WebSocket clients", registry=registry)
    frames.inc(200 if used else 0)
    lag = Histogram("fv_ws_push_lag_seconds", "From a change to its frame written to every client",
                    buckets=LATENCY_BUCKETS, registry=registry)  # fmt: skip
    for seconds in (0.001, 0.0011, 7.5) if used else ():
        lag.observe(seconds)


@pytest.fixture(params=[True, False], ids=["with _created", "without _created"])
def created_series(request: pytest.FixtureRequest) -> Iterator[bool]:
    """Both ways prometheus_client may be set (PROMETHEUS_DISABLE_CREATED_SERIES); the way it
    was set is restored after (as the environment set it: nothing else here changes it)."""
    was = os.environ.get("PROMETHEUS_DISABLE_CREATED_SERIES", "").lower() not in ("true", "1", "t")
    (enable_created_metrics if request.param else disable_created_metrics)()
    try:
        yield request.param
    finally:
        (enable_created_metrics if was else disable_created_metrics)()


def test_hot_metrics_render_as_prometheus_client_would(created_series: bool) -> None:
    metrics = Metrics()
    for route, method, status, seconds in REQUESTS:
        metrics.observe(route, method, status, seconds)
    for _ in range(3):
        metrics.votes_set.inc()
    metrics.votes_retracted.inc()
    metrics.seq.set(42)
    metrics.ws_pushes.inc()
    metrics.ws_pushes.inc()
    metrics.ws_frames.inc(200)
    for seconds in (0.001, 0.0011, 7.5):
        metrics.ws_lag.observe(seconds)
    expected = CollectorRegistry()
    reference(expected)
    got = hot_lines(metrics.registry)
    assert got == hot_lines(expected)
    assert (
        'fv_http_requests_total{method="PUT",route="/features/{id}/vote",status="200"} 3.0' in got
    )
    assert metrics.registry.get_sample_value("fv_ws_frames_total") == 200
    assert any("_created" in line for line in got) == created_series


def test_a_request_kind_gets_its_children_once() -> None:
    """The first request of a (route, method, status) makes its children; later ones reuse
    them (no `.labels()` call per request), and each kind counts only itself."""
    metrics = Metrics()
    first = metrics.http.series("/features/{id}/vote", "PUT", 200)
    assert metrics.http.series("/features/{id}/vote", "PUT", 200) is first
    other = metrics.http.series("/features/{id}/vote", "PUT", 429)
    assert other.requests is not first.requests
    assert other.latency is first.latency  # one latency histogram per route
    metrics.observe("/features/{id}/vote", "PUT", 200, 0.002)
    metrics.observe("/features/{id}/vote", "PUT", 200, 0.002)
    value = metrics.registry.get_sample_value
    labels = {"route": "/features/{id}/vote", "method": "PUT"}
    assert value("fv_http_requests_total", {**labels, "status": "200"}) == 2
    assert value("fv_http_requests_total", {**labels, "status": "429"}) == 0
    bucket = {"route": "/features/{id}/vote", "le": "0.0025"}
    assert value("fv_http_request_duration_seconds_bucket", bucket) == 2


def test_feature_changes_have_premade_children() -> None:
    metrics = Metrics()
    metrics.features_created.inc()
    metrics.features.labels("update").inc()  # the labelled family still works
    metrics.features_updated.inc()
    metrics.features_deleted.inc(3)
    value = metrics.registry.get_sample_value
    assert [value("fv_features_total", {"action": a}) for a in ("create", "update", "delete")] == [
        1, 2, 3,
    ]


def test_fresh_metrics_render_as_prometheus_client_would(created_series: bool) -> None:
    """Before any request: the same zeros, and the request families with no series yet."""
    expected = CollectorRegistry()
    reference(expected, used=False)
    got = hot_lines(Metrics().registry)
    assert got == hot_lines(expected)
    assert 'fv_votes_total{action="vote"} 0.0' in got and "fv_ws_frames_total 0.0" in got
    assert not [line for line in got if line.startswith("fv_http_requests_total{")]
