"""Prometheus `/metrics` and request ids.

One pure ASGI middleware does both, because it sits on the hot path of every request
(status polls are benchmarked against a bare route): it takes or makes the request id,
echoes it as `X-Request-ID`, and counts and times the request under its route template
(the matched route the router leaves in the scope; never the raw path, which would make a
series per request id). Series are kept per (route, method, status) as plain numbers, so a
request costs a tuple, a dict lookup, a bisect and two additions.

Job and queue numbers are read from the database when Prometheus scrapes (three small
counts), never kept up to date on the request path.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from observability.logs import REQUEST_ID
from observability.prometheus import scrape_registry
from observability.queue_stats import queue_stats

log = logging.getLogger("api")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0)
_BOUNDS = [*(str(b) for b in LATENCY_BUCKETS), "+Inf"]
UNMATCHED = "<unmatched>"  # 404s of unknown paths, and answers given before routing (413)
LABELS = ["method", "route", "status"]
REQUESTS = ("alkn_http_requests", "HTTP requests answered, by route template and status")
LATENCY = ("alkn_http_request_duration_seconds", "time to answer, from the request to the "
           "end of the response body, by route template and status")

# A client's X-Request-ID is kept when it is short and plain (it goes into logs and
# headers); anything else gets one of ours.
_ACCEPTED_ID = re.compile(rb"[A-Za-z0-9._:@/+=-]{1,128}")
# Process prefix + counter: unique across processes and far cheaper than a uuid4 per request.
_PREFIX = os.urandom(6).hex()
_counter = itertools.count(1)


def new_request_id() -> str:
    return f"{_PREFIX}-{next(_counter):x}"


class _Series:
    """One (method, route, status) series: bucket counts (not cumulative; the last is
    +Inf) and the sum of seconds."""

    __slots__ = ("labels", "buckets", "total")

    def __init__(self, labels: tuple[str, str, str]) -> None:
        self.labels = labels
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0


class HttpMetrics(Collector):
    """Request counts and latency, kept as plain numbers and turned into a counter and a
    histogram when Prometheus scrapes. A request costs a bisect and two additions: only the
    event loop's thread writes (no lock; a scrape reads whole ints), where prometheus_client's
    own Counter and Histogram take a lock per value (several microseconds a request)."""

    def __init__(self) -> None:
        self._series: dict[tuple[int, str, int], _Series] = {}

    def observe(self, route: Any, method: str, status: int, seconds: float) -> None:
        # id(): routes are not hashable, and they live as long as the app (no id reuse).
        key = (id(route), method, status)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(_labels(route, method, status))
        series.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        series.total += seconds

    def collect(self) -> Iterator[Any]:
        counter = CounterMetricFamily(*REQUESTS, labels=LABELS)
        histogram = HistogramMetricFamily(*LATENCY, labels=LABELS)
        for series in list(self._series.values()):
            counts, cumulative = list(series.buckets), 0
            buckets = []
            for bound, n in zip(_BOUNDS, counts, strict=True):
                cumulative += n
                buckets.append((bound, cumulative))
            counter.add_metric(series.labels, cumulative)
            histogram.add_metric(series.labels, buckets, series.total)
        yield counter
        yield histogram


class MultiprocessHttpMetrics:
    """The same series as prometheus_client metrics, for PROMETHEUS_MULTIPROC_DIR (several
    uvicorn workers): their values live in files that any worker's scrape sums."""

    def __init__(self) -> None:
        self.requests = Counter(*REQUESTS, LABELS, registry=None)
        self.latency = Histogram(*LATENCY, LABELS, registry=None, buckets=LATENCY_BUCKETS)
        self._children: dict[tuple[int, str, int], tuple[Any, Any]] = {}

    def observe(self, route: Any, method: str, status: int, seconds: float) -> None:
        key = (id(route), method, status)
        children = self._children.get(key)
        if children is None:
            labels = _labels(route, method, status)
            children = self._children[key] = (self.requests.labels(*labels),
                                              self.latency.labels(*labels))
        children[0].inc()
        children[1].observe(seconds)


def _labels(route: Any, method: str, status: int) -> tuple[str, str, str]:
    # A route's path_format: "/v1/forget-requests/{request_id}".
    return method, getattr(route, "path_format", None) or UNMATCHED, str(status)


class ObservabilityMiddleware:
    """Request id in (kept if sane) and out, and the request's count and latency."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics | MultiprocessHttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid: str | None = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                if _ACCEPTED_ID.fullmatch(value):
                    rid = value.decode("ascii")
                break
        if rid is None:
            rid = new_request_id()
        # Each request runs in a task of its own, which copies the context: no reset needed.
        REQUEST_ID.set(rid)
        header = (b"x-request-id", rid.encode("ascii"))
        status = 500  # what the client gets if nothing else started a response

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        start = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            # The router left the matched route (or the Mount) in the scope.
            self.metrics.observe(scope.get("route"), scope["method"], status,
                                 time.perf_counter() - start)


class QueueCollector(Collector):
    """Jobs by status, queue depth and outbox lag, read from the database at scrape time."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("alkn_database_up", "1 when the scrape could read the "
                               "database (the gauges below are missing otherwise)")
        try:
            stats = queue_stats(self.db_url)
        except Exception as exc:  # a scrape must answer even when the database does not
            log.warning("metrics: database unavailable: %s", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        jobs = GaugeMetricFamily("alkn_jobs", "jobs by status", labels=["status"])
        for status, n in stats.jobs.items():
            jobs.add_metric([status], n)
        yield jobs
        depth = GaugeMetricFamily("alkn_queue_depth", "work waiting: queued forget requests "
                                  "and queued jobs", labels=["kind"])
        depth.add_metric(["forget_requests"], stats.queued_requests)
        depth.add_metric(["jobs"], stats.jobs.get("queued", 0))
        yield depth
        yield GaugeMetricFamily("alkn_outbox_unpublished", "outbox rows not yet accepted by "
                                "the broker", value=stats.unpublished_outbox)
        yield GaugeMetricFamily("alkn_outbox_lag_seconds", "age of the oldest unpublished "
                                "outbox row (0 when none)", value=stats.outbox_lag_s)


router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus text format; no auth (aggregates only, no tenant data): keep it on the
    internal network."""
    state = request.app.state
    registry = scrape_registry(state.metrics_registry, [state.queue_collector])
    body = await run_in_threadpool(generate_latest, registry)  # the database reads
    return Response(body, media_type=CONTENT_TYPE)


def install(app: FastAPI, db_url: str) -> None:
    """/metrics and the middleware; call after the other middlewares so that this one is
    outermost (it then also times and counts what they answer: 413s, 500s)."""
    registry = CollectorRegistry()
    app.state.metrics_registry = registry
    app.state.queue_collector = QueueCollector(db_url)
    registry.register(app.state.queue_collector)
    http: HttpMetrics | MultiprocessHttpMetrics
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        http = MultiprocessHttpMetrics()
    else:
        http = HttpMetrics()
        registry.register(http)
    app.add_middleware(ObservabilityMiddleware, metrics=http)
    app.include_router(router)
