"""Command line of each service: migrate, relay, consume, worker."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable

from shared import metrics, tracing
from shared.config import Settings
from shared.health import ServiceHealth
from shared.migrate import upgrade
from shared.service import Runtime, run_loops

#: Structured fields a log call may pass in ``extra`` that end up as members of the JSON line.
LOG_FIELDS = ("event_id", "event_type", "event_source", "event_traceparent")


class JsonFormatter(logging.Formatter):
    """One JSON object per log line, with the request id and trace of the work it was written for."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        trace = tracing.current()
        if trace is not None:
            if trace.request_id:
                entry["request_id"] = trace.request_id
            entry["trace_id"] = trace.trace_id
            entry["traceparent"] = trace.traceparent
        for key in LOG_FIELDS:
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(settings: Settings) -> None:
    """One log format for every labshare process: JSON lines on stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler], force=True)


def service_main(name: str, build_runtime: Callable[[Settings], Runtime], argv: list[str] | None = None) -> None:
    """``migrate`` the schema; run the outbox ``relay``, the event ``consume``r, or both (``worker``).

    ``--metrics-port N`` serves the process's Prometheus metrics at ``http://<host>:N/metrics``.
    """
    parser = argparse.ArgumentParser(prog=f"python -m services.{name}")
    parser.add_argument("command", choices=["migrate", "relay", "consume", "worker"])
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="serve Prometheus metrics on this port (relay, consume, worker)")
    parser.add_argument("--metrics-host", default="0.0.0.0", help="address of the metrics port (default 0.0.0.0)")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    configure_logging(settings)
    if args.command == "migrate":
        upgrade(name, settings)
        return
    runtime = build_runtime(settings)
    if args.command == "consume" and runtime.consumer is None:
        parser.error(f"{name} consumes no events")
    loops = {
        "relay": [runtime.relay.run],
        # A service's own loops (reminders, deliveries) act on what its consumer stores, so they run with it.
        "consume": ([runtime.consumer.run] if runtime.consumer else []) + runtime.loops,
        "worker": runtime.workers(),
    }[args.command]
    if args.metrics_port is not None:
        metrics.serve(args.metrics_port, args.metrics_host, [ServiceHealth(runtime).collector()])
        logging.getLogger(__name__).info("metrics at http://%s:%d/metrics", args.metrics_host, args.metrics_port)
    run_loops(loops)
