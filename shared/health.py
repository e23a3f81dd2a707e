"""How a service is doing: what ``/healthz`` answers and what the live Prometheus gauges report.

- ``down`` (HTTP 503): the service's database does not answer; it cannot serve.
- ``degraded`` (HTTP 200): it serves, but events are held up: the broker is
  unreachable, or the oldest unpublished event in the outbox is older than
  ``Settings.health_outbox_age`` seconds (no relay runs, or it is stuck).
  Nothing is lost meanwhile (the outbox keeps it), so an orchestrator must not
  restart the API for it.
- ``ok`` otherwise.

An API process under gunicorn runs no relay, so it cannot know from a relay
thread whether the broker is there: it opens a connection of its own, at most
once per ``Settings.health_broker_interval`` seconds, and reuses the answer in
between, so health checks and scrapes cost the broker next to nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from kombu import Connection
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from shared.config import Settings
from shared.timeutil import now

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrokerState:
    """The answer of one broker check."""

    reachable: bool
    #: Messages ready in the service's own queue (None: it has none, or it is not declared yet).
    ready: int | None = None
    error: str | None = None
    checked_at: float = 0.0


class BrokerProbe:
    """A cached check that the broker accepts a connection (and how full a queue is)."""

    def __init__(self, settings: Settings, queue: str | None = None, interval: float | None = None,
                 timeout: float = 2.0) -> None:
        self.settings = settings
        self.queue = queue
        self.interval = settings.health_broker_interval if interval is None else interval
        self.timeout = timeout
        self._lock = threading.Lock()
        self._state: BrokerState | None = None

    def state(self) -> BrokerState:
        """The latest answer, checking again when it is older than ``interval``.

        While one thread checks, others get the previous answer instead of waiting.
        """
        state = self._state
        if state is not None and time.monotonic() - state.checked_at < self.interval:
            return state
        if not self._lock.acquire(blocking=state is None):
            return state  # type: ignore[return-value]
        try:
            self._state = self._check()
            return self._state
        finally:
            self._lock.release()

    def _check(self) -> BrokerState:
        options: dict[str, Any] = {}
        if not self.settings.broker_is_memory:
            options = {"connect_timeout": self.timeout, "heartbeat": 0,
                       "transport_options": {"read_timeout": self.timeout, "write_timeout": self.timeout}}
        try:
            with Connection(self.settings.broker_url, **options) as conn:
                conn.ensure_connection(max_retries=1)
                ready = None
                if self.queue:
                    channel = conn.channel()
                    try:
                        ready = channel.queue_declare(queue=self.queue, passive=True).message_count
                    except conn.channel_errors:
                        ready = None  # not declared yet: no consumer or relay has run
                return BrokerState(True, ready, None, time.monotonic())
        except Exception as exc:
            return BrokerState(False, None, f"{type(exc).__name__}: {exc}"[:300], time.monotonic())


@dataclass(frozen=True)
class OutboxState:
    """Unpublished events of a service's outbox."""

    backlog: int
    oldest: dt.datetime | None

    @property
    def oldest_age(self) -> float:
        """Seconds since the oldest unpublished event was written (0 when there is none)."""
        return max(0.0, (now() - self.oldest).total_seconds()) if self.oldest else 0.0


class ServiceHealth:
    """The health of one service, from its runtime's database, outbox and broker."""

    def __init__(self, runtime) -> None:
        self.runtime = runtime
        settings: Settings = runtime.settings
        queue = f"{settings.queue_prefix}.{runtime.name}" if runtime.consumer is not None else None
        self.broker = BrokerProbe(settings, queue)

    def outbox(self) -> OutboxState:
        """Backlog and oldest unpublished event (the partial index on unpublished ids keeps it cheap)."""
        t = self.runtime.events.outbox
        unpublished = t.c.published_at.is_(None)
        with self.runtime.db.read() as session:
            backlog = session.execute(select(func.count()).select_from(t).where(unpublished)).scalar_one()
            oldest = None
            if backlog:
                oldest = session.execute(select(t.c.created_at).where(unpublished).order_by(t.c.id).limit(1)).scalar()
        return OutboxState(backlog, oldest)

    def report(self) -> tuple[dict[str, Any], int]:
        """The ``/healthz`` body and its HTTP status."""
        rt = self.runtime
        body: dict[str, Any] = {"service": rt.name}
        if not rt.db.ping():
            body.update(status="down", database="down", problems=["the database does not answer"])
            return body, 503
        body["database"] = "ok"
        problems: list[str] = []
        outbox = self.outbox()
        body["outbox_backlog"] = outbox.backlog
        body["outbox_oldest_age_seconds"] = round(outbox.oldest_age, 3)
        if outbox.oldest_age > rt.settings.health_outbox_age:
            problems.append(
                f"the oldest unpublished event is {outbox.oldest_age:.0f} s old "
                f"(more than {rt.settings.health_outbox_age:g} s)"
            )
        broker = self.broker.state()
        body["broker"] = "ok" if broker.reachable else "unreachable"
        if not broker.reachable:
            problems.append(f"the broker is unreachable ({broker.error})")
        if broker.ready is not None:
            body["queue_ready"] = broker.ready
        body["status"] = "degraded" if problems else "ok"
        if problems:
            body["problems"] = problems
        return body, 200

    def collector(self) -> Collector:
        """Gauges read at scrape time: outbox backlog and age, broker reachability, the queue's ready messages."""
        return _LiveCollector(self)


class _LiveCollector(Collector):
    def __init__(self, health: ServiceHealth) -> None:
        self.health = health

    def collect(self):
        name = self.health.runtime.name
        backlog = GaugeMetricFamily("labshare_outbox_backlog", "Events written to the outbox and not yet published",
                                    labels=["service"])
        age = GaugeMetricFamily("labshare_outbox_oldest_unsent_age_seconds",
                                "Seconds since the oldest unpublished event was written (0 when none)",
                                labels=["service"])
        try:
            outbox = self.health.outbox()
        except Exception as exc:  # the database is away: report what can be reported
            log.warning("metrics: outbox not readable: %s", exc)
        else:
            backlog.add_metric([name], outbox.backlog)
            age.add_metric([name], outbox.oldest_age)
        yield backlog
        yield age
        broker = self.health.broker.state()
        up = GaugeMetricFamily("labshare_broker_up", "1 when the broker accepted a connection at the last check",
                               labels=["service"])
        up.add_metric([name], 1 if broker.reachable else 0)
        yield up
        if self.health.broker.queue:
            ready = GaugeMetricFamily("labshare_consumer_queue_ready",
                                      "Messages ready in the service's queue, not yet delivered to a consumer (lag)",
                                      labels=["service", "queue"])
            if broker.ready is not None:
                ready.add_metric([name, self.health.broker.queue], broker.ready)
            yield ready
