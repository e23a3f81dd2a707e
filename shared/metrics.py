"""Prometheus metrics of every labshare process (prometheus-client).

Counters and histograms are module-level and labelled by ``service``, so the
three services of ``make run`` share one process without mixing their numbers.
What is a *state* rather than a count (outbox backlog, age of the oldest unsent
event, messages waiting in the service's queue, broker reachability) is read
when Prometheus scrapes, by the collector of ``shared.health``; that keeps
those gauges right however many processes serve a service.

Under gunicorn with several workers, set ``PROMETHEUS_MULTIPROC_DIR`` to an
empty directory writable by the workers (``deploy/gunicorn.conf.py`` empties it
at start and tells the library when a worker exits): each worker then writes
its counters there and ``/metrics`` adds up all of them, whichever worker
answers the scrape.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterable
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.registry import Collector

EVENTS_PUBLISHED = Counter(
    "labshare_events_published", "Events the outbox relay published and the broker confirmed", ["service", "type"]
)
EVENTS_CONSUMED = Counter(
    "labshare_events_consumed", "Events a consumer applied (committed with its inbox row)", ["service", "type"]
)
EVENTS_DUPLICATE = Counter(
    "labshare_events_duplicate", "Redelivered events a consumer found in its inbox and dropped", ["service", "type"]
)
EVENTS_RETRIED = Counter(
    "labshare_events_retried", "Failed events a consumer put back on its queue for another try", ["service", "type"]
)
EVENTS_PARKED = Counter(
    "labshare_events_parked", "Events parked in the dead-letter queue after their last try", ["service", "type"]
)
EVENT_LAG = Histogram(
    "labshare_event_lag_seconds",
    "Seconds from an event's time (its outbox commit) to the commit of its effect at a consumer",
    ["service", "type"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, float("inf")),
)
HTTP_LATENCY = Histogram(
    "labshare_http_request_duration_seconds",
    "Seconds to answer an HTTP request, by route template",
    ["service", "method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, float("inf")),
)
HTTP_REQUESTS = Counter(
    "labshare_http_requests",
    "HTTP requests answered, by route template and status (POST /api/v1/bookings by status: bookings by outcome)",
    ["service", "method", "route", "status"],
)

_EVENT_TYPE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*){1,3}$")


def event_type_label(event: Any) -> str:
    """An event's type as a label value; anything that is not a type name becomes ``invalid``."""
    value = event.get("type") if isinstance(event, dict) else None
    if isinstance(value, str) and len(value) <= 64 and _EVENT_TYPE.match(value):
        return value
    return "invalid"


def multiprocess_dir() -> str | None:
    """The directory of gunicorn's multiprocess mode, when it is on."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class _ThisProcess(Collector):
    """The metrics of this process only (the library's default registry)."""

    def collect(self):
        return REGISTRY.collect()


def registry(live: Iterable[Collector] = ()) -> CollectorRegistry:
    """What one scrape reports: this process's (or, in multiprocess mode, all workers') metrics, then ``live``."""
    reg = CollectorRegistry(auto_describe=False)
    if multiprocess_dir():
        multiprocess.MultiProcessCollector(reg)
    else:
        reg.register(_ThisProcess())
    for collector in live:
        reg.register(collector)
    return reg


def exposition(live: Iterable[Collector] = ()) -> Response:
    """A ``/metrics`` response in the Prometheus text format."""
    return Response(generate_latest(registry(live)),
                    headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"})


def serve(port: int, host: str = "0.0.0.0", live: Iterable[Collector] = ()) -> threading.Thread:
    """Serve ``/metrics`` of a relay or consumer process on ``host:port`` (a daemon thread)."""
    _server, thread = start_http_server(port, addr=host, registry=registry(live))
    return thread


def install_http_metrics(app: Flask, service: str) -> None:
    """Time every request and count it by route template and status."""

    @app.before_request
    def _start_timer() -> None:
        g.labshare_started = time.perf_counter()

    @app.after_request
    def _observe(resp: Response) -> Response:
        started = g.pop("labshare_started", None)
        if started is not None:
            route = request.url_rule.rule if request.url_rule is not None else "unmatched"
            HTTP_LATENCY.labels(service, request.method, route).observe(time.perf_counter() - started)
            HTTP_REQUESTS.labels(service, request.method, route, str(resp.status_code)).inc()
        return resp
