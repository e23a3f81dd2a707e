"""Notify latency: from a booking event published on the broker to the e-mail accepted by an SMTP
server, and to the webhook call answered by an HTTP endpoint, at a steady rate.

What it does (about three minutes):

1. Starts an SMTP server (aiosmtpd) and an HTTP webhook receiver on 127.0.0.1, in a process of
   their own so that they do not compete with notify for the interpreter.
2. Runs notify alone in this process (its consumer, reminder scheduler and delivery workers) with
   ``LABSHARE_SMTP_URL`` pointing at that server and one admin webhook for ``booking.confirmed``.
3. Publishes ``booking.confirmed`` events to the exchange at a steady rate, as booking's relay
   would, each for an owner of its own, and notes when each was published.
4. Latency of an event = when its mail (matched by the recipient) or webhook call (matched by
   ``ce-id``) arrived − when it was published (wall clock, one machine). Every event must arrive
   exactly once on each channel.

Once on embedded defaults (SQLite, in-process broker) and, when they answer on 127.0.0.1, once on
PostgreSQL + RabbitMQ (a fresh database and a unique exchange and queue prefix, removed afterwards).
``run()`` returns the Markdown section; run alone, it also writes bench/notify.md.
Environment: LABSHARE_BENCH_NOTIFY_RATES (events per second, default ``5,20``: one run each),
LABSHARE_BENCH_NOTIFY_SECONDS (default 15), LABSHARE_BENCH_PG_URL and LABSHARE_BENCH_AMQP_URL (as bench/run.py).
"""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import os
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kombu import Connection, Producer  # noqa: E402
from sqlalchemy import text  # noqa: E402

from services.notify import handlers  # noqa: E402
from services.notify.app import build_runtime  # noqa: E402
from shared.auth import Principal  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.db import admin_engine  # noqa: E402
from shared.events import CONTENT_TYPE, make_event  # noqa: E402
from shared.messaging import SUBSCRIPTIONS, connect, dead_queue, declare_topology, events_exchange, service_queue  # noqa: E402
from shared.migrate import upgrade  # noqa: E402
from tests.servers import MailSink, WebhookSink, wait_until  # noqa: E402

PG_ADMIN_URL = os.environ.get("LABSHARE_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP_URL = os.environ.get("LABSHARE_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
RATES = tuple(float(r) for r in os.environ.get("LABSHARE_BENCH_NOTIFY_RATES", "5,20").split(","))  # events/s
SECONDS = float(os.environ.get("LABSHARE_BENCH_NOTIFY_SECONDS", "15"))
ADMIN = Principal(sub="bench-admin", name="Bench admin", email="bench-admin@example.org", roles=("admin",))


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def booking_event(n: int, start: dt.datetime) -> dict:
    """A confirmed booking as booking's events carry it, owned by a bench user of its own."""
    begins = start + dt.timedelta(hours=n)
    data = {
        "id": str(uuid.uuid4()), "resource_id": "bench-resource", "lab_id": "bench-lab", "title": "Imaging",
        "project": "BENCH", "status": "confirmed", "sequence": 0, "cancel_reason": None, "series_id": None,
        "start": begins.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "end": (begins + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "created_at": "2030-01-01T00:00:00Z", "updated_at": "2030-01-01T00:00:00Z",
        "user": {"sub": f"u{n}", "name": f"Bench user {n}", "org": "ntnu", "email": f"u{n}@bench.example.org"},
        "resource_name": "Zeiss LSM 980",
        "lab": {"id": "bench-lab", "name": "Bench lab", "org": "ntnu", "timezone": "Europe/Oslo",
                "managers": [{"sub": "m", "name": "Manager", "email": "manager@bench.example.org"}]},
    }
    return make_event("booking", "booking.confirmed", data, subject=data["id"])


def _receivers(conn) -> None:
    """Child process: the SMTP server and the webhook receiver, answering the parent's requests."""
    smtp, hooks = MailSink().start(), WebhookSink()
    conn.send((smtp.url, hooks.url("/bench")))
    while True:
        command = conn.recv()
        if command == "count":
            conn.send((len(smtp.received), len(hooks.at("/bench"))))
        elif command == "results":
            conn.send(([(r.rcpt_tos[0], r.wall) for r in smtp.received],
                       [(h.headers["ce-id"], h.wall) for h in hooks.at("/bench")]))
        else:
            smtp.stop()
            hooks.close()
            return


def measure(settings: Settings, label: str, rate: float) -> dict:
    """Publish at ``rate`` events per second for ``SECONDS`` and collect both latencies."""
    parent, child = multiprocessing.Pipe()
    receivers = multiprocessing.get_context("spawn").Process(target=_receivers, args=(child,), daemon=True)
    receivers.start()
    smtp_url, hook_url = parent.recv()
    settings = settings.replace(smtp_url=smtp_url)
    upgrade("notify", settings)
    rt = build_runtime(settings)
    handlers.create_webhook(rt, ADMIN, {"url": hook_url, "events": ["booking.confirmed"], "secret": "bench-secret"})
    stop = threading.Event()
    threads = [threading.Thread(target=loop, args=(stop,), daemon=True) for loop in rt.workers()]
    for t in threads:
        t.start()
    wait_until(lambda: rt.consumer is not None and rt.consumer.connected, 30, "notify's consumer")
    total = int(rate * SECONDS)
    published: dict[str, float] = {}
    by_event: dict[str, str] = {}
    start = dt.datetime(2031, 1, 6, 8, tzinfo=dt.UTC)

    def arrived() -> bool:
        parent.send("count")
        mails, calls = parent.recv()
        return mails >= total and calls >= total

    try:
        with connect(settings) as conn:
            channel = conn.channel()
            declare_topology(settings, channel)
            producer = Producer(channel)
            t0 = time.perf_counter()
            for n in range(total):
                pause = t0 + n / rate - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                event = booking_event(n, start)
                recipient = event["data"]["user"]["email"]
                by_event[event["id"]] = recipient
                published[recipient] = time.time()
                producer.publish(json.dumps(event), exchange=events_exchange(settings), routing_key=event["type"],
                                 content_type=CONTENT_TYPE, delivery_mode=2)
        wait_until(arrived, 120, "every mail and webhook call")
        time.sleep(1.0)  # anything arriving twice would show up now
        parent.send("results")
        mails, calls = parent.recv()
    finally:
        stop.set()
        rt.wake()
        for t in threads:
            t.join(timeout=15)
        rt.db.dispose()
        parent.send("stop")
        receivers.join(timeout=10)
    assert len(mails) == len({m[0] for m in mails}) == total, "a mail was lost or sent twice"
    assert len(calls) == len({c[0] for c in calls}) == total, "a webhook call was lost or made twice"
    return {
        "label": label,
        "rate": rate,
        "events": total,
        "mail": [(at - published[rcpt]) * 1000 for rcpt, at in mails],
        "hook": [(at - published[by_event[ce_id]]) * 1000 for ce_id, at in calls],
    }


def _sqlite(rate: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=tmp, exchange=f"bench.{uuid.uuid4().hex[:8]}",
                            queue_prefix=f"bench{uuid.uuid4().hex[:8]}")
        return measure(settings, "SQLite + in-process broker", rate)


def _postgres(rate: float) -> dict | None:
    if not (port_open("127.0.0.1", 5432) and port_open("127.0.0.1", 5672)):
        return None
    name = f"labshare_bench_notify_{uuid.uuid4().hex[:8]}"
    engine = admin_engine(PG_ADMIN_URL)
    with engine.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    settings = Settings(database_url=url, broker_url=AMQP_URL, data_dir=tempfile.gettempdir(),
                        exchange=f"bench.{uuid.uuid4().hex[:8]}", queue_prefix=f"bench{uuid.uuid4().hex[:8]}")
    try:
        return measure(settings, "PostgreSQL + RabbitMQ", rate)
    finally:
        with Connection(AMQP_URL) as conn:
            channel = conn.channel()
            for service in SUBSCRIPTIONS:
                service_queue(settings, service)(channel).delete()
                dead_queue(settings, service)(channel).delete()
            events_exchange(settings)(channel).delete()
        with engine.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


def _row(r: dict, channel: str, values: list[float]) -> str:
    return (f"| {r['label']} | {r['rate']:g}/s | {channel} | {len(values)} | {statistics.median(values):.0f} | "
            f"{percentile(values, 0.9):.0f} | {percentile(values, 0.99):.0f} | {max(values):.0f} |")


def run() -> str:
    """Measure and return the Markdown section."""
    results: list[dict] = []
    pg_missing = False
    for rate in RATES:
        results.append(_sqlite(rate))
        pg = _postgres(rate)
        pg_missing = pg is None
        if pg is not None:
            results.append(pg)
    load = os.getloadavg()
    lines = [
        "## Notify: event to e-mail and to webhook",
        "",
        f"`booking.confirmed` events at a steady rate for {SECONDS:.0f} s each, published on the broker as "
        "booking's relay would. Latency is from publishing an event to the SMTP server accepting its iMIP "
        "invitation, and to the webhook endpoint (an HTTP server on 127.0.0.1 answering 200) receiving its "
        "signed POST; both servers ran in a process of their own. Every event arrived exactly once on each "
        "channel. Notify ran alone in one process (consumer, reminder scheduler, one e-mail and one webhook "
        "worker, default settings), so the higher rate shows where one such process saturates.",
        "",
        "| stack | rate | channel | events | median ms | p90 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(_row(r, "e-mail (SMTP)", r["mail"]))
        lines.append(_row(r, "webhook (HTTP)", r["hook"]))
    if pg_missing:
        lines += ["", "PostgreSQL + RabbitMQ were not reachable on 127.0.0.1; those rows were skipped."]
    lines += ["", f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
              f"load average {load[0]:.1f} at the end; measured {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    section = run()
    (ROOT / "bench" / "notify.md").write_text(section)
    print(section)
