"""What every service's ``create_app`` and worker processes are built from."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Flask, current_app, g, request
from sqlalchemy import MetaData, Table
from sqlalchemy.orm import Session

from shared import tracing
from shared.auth import install_auth
from shared.config import Settings
from shared.db import Database
from shared.errors import install_error_handlers
from shared.events import make_event
from shared.health import ServiceHealth
from shared.http import json_response
from shared.messaging import EventConsumer, EventHandler, Relay
from shared.metrics import exposition, install_http_metrics
from shared.openapi import ApiDoc
from shared.outbox import add_event

log = logging.getLogger(__name__)


@dataclass
class EventWriter:
    """Writes a service's events to its outbox; ``wake`` nudges an in-process relay."""

    service: str
    outbox: Table
    wake: threading.Event = field(default_factory=threading.Event)

    def emit(self, session: Session, type_: str, data: dict[str, Any], subject: str | None = None) -> None:
        """Add one event to the outbox within ``session``'s transaction."""
        add_event(session, self.outbox, make_event(self.service, type_, data, subject))

    def emit_all(self, session: Session, events: list[tuple[str, dict[str, Any], str | None]]) -> None:
        """Add several ``(type, data, subject)`` events to the outbox in one statement."""
        add_event(session, self.outbox, *(make_event(self.service, t, d, subj) for t, d, subj in events))

    def committed(self) -> None:
        """Call after the transaction that emitted events has committed."""
        self.wake.set()


@dataclass
class Runtime:
    """One service's settings, database, event writer, relay and (optional) consumer."""

    name: str
    settings: Settings
    db: Database
    events: EventWriter
    relay: Relay
    inbox: Table
    consumer: EventConsumer | None = None
    #: Further background loops of the service (schedulers, delivery workers), each ``loop(stop_event)``.
    loops: list[Callable[[threading.Event], None]] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        name: str,
        settings: Settings,
        metadata: MetaData,
        handlers: Callable[[Runtime], dict[str, EventHandler]] | None = None,
    ) -> Runtime:
        """Wire a service from its metadata (which holds its ``outbox``/``inbox`` tables)."""
        db = Database(settings.database_url_for(name), settings.schema_for(name))
        outbox, inbox = metadata.tables["outbox"], metadata.tables["inbox"]
        events = EventWriter(name, outbox)
        relay = Relay(settings, db, outbox, service=name)
        relay.wake = events.wake
        runtime = cls(name, settings, db, events, relay, inbox)
        if handlers is not None:
            runtime.consumer = EventConsumer(
                settings, name, db, inbox, handlers(runtime), after_commit=events.committed
            )
        return runtime

    def workers(self) -> list[Callable[[threading.Event], None]]:
        """The background loops of this service: relay, consumer if it has one, and any others."""
        loops: list[Callable[[threading.Event], None]] = [self.relay.run]
        if self.consumer is not None:
            loops.append(self.consumer.run)
        return loops + self.loops


def create_service_app(
    runtime: Runtime, blueprints: Iterable[Blueprint], doc: ApiDoc, extra_health: Callable[[], dict] | None = None
) -> Flask:
    """A Flask app with the shared conventions.

    problem+json errors, auth, a body size limit, ``/healthz`` (ok, degraded or
    down: see ``shared.health``), ``/metrics`` (Prometheus), ``/openapi.json``, and
    per request an ``X-Request-Id`` (the caller's or a new one, returned) whose
    trace every log line and every emitted event carries (``shared.tracing``).
    """
    app = Flask(f"labshare.{runtime.name}")
    app.config["MAX_CONTENT_LENGTH"] = runtime.settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["labshare.settings"] = runtime.settings
    app.extensions["labshare.runtime"] = runtime
    health = ServiceHealth(runtime)
    app.extensions["labshare.health"] = health
    install_request_tracing(app)
    install_http_metrics(app, runtime.name)
    install_error_handlers(app)
    install_auth(app, runtime.settings)
    for bp in blueprints:
        app.register_blueprint(bp)
    app.register_blueprint(doc.blueprint())

    @app.get("/healthz")
    def healthz():
        body, status = health.report()
        if extra_health and status == 200:
            body.update(extra_health())
        return json_response(body, status)

    @app.get("/metrics")
    def metrics():
        return exposition([health.collector()])

    @app.after_request
    def _no_sniff(resp):
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        if request.path.startswith("/api/"):
            resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    return app


def install_request_tracing(app: Flask) -> None:
    """Give each request its id and trace (``X-Request-Id``, ``traceparent``), current while it runs."""

    @app.before_request
    def _start_trace() -> None:
        trace = tracing.for_request(request.headers.get("X-Request-Id"), request.headers.get("traceparent"))
        g.labshare_trace = trace
        g.labshare_trace_token = tracing.activate(trace)

    @app.after_request
    def _return_request_id(resp):
        trace = g.get("labshare_trace")
        if trace is not None:
            resp.headers["X-Request-Id"] = trace.request_id
        return resp

    @app.teardown_request
    def _end_trace(_exc: BaseException | None) -> None:
        token = g.pop("labshare_trace_token", None)
        if token is not None:
            with contextlib.suppress(ValueError):  # set in another context: nothing to restore here
                tracing.deactivate(token)


def runtime_of(app: Flask | None = None) -> Runtime:
    """The runtime of the current app."""
    return (app or current_app).extensions["labshare.runtime"]


def run_loops(loops: list[Callable[[threading.Event], None]], stop: threading.Event | None = None) -> None:
    """Run background loops in threads until SIGINT/SIGTERM (or ``stop``), then stop them cleanly."""
    stop = stop or threading.Event()

    def _stop(signum, _frame) -> None:
        log.info("signal %s: stopping", signum)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _stop)
        signal.signal(signal.SIGTERM, _stop)
    threads = [threading.Thread(target=loop, args=(stop,), daemon=True) for loop in loops]
    for t in threads:
        t.start()
    while not stop.is_set():
        time.sleep(0.2)
    for t in threads:
        t.join(timeout=10)
