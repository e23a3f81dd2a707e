"""Booking depth benchmark, on PostgreSQL: a 52-week series over HTTP, and the usage report of a busy lab.

What it measures:

- ``POST /api/v1/bookings`` with ``FREQ=WEEKLY;COUNT=52`` (52 occurrence rows, 104 events, one feed bump):
  all or nothing on a free resource, and with ``on_conflict: skip`` where every other week is taken;
  a single booking beside it for scale;
- ``GET /api/v1/usage`` for a lab with 50,000 bookings (20 resources, two years, five organisations,
  40 projects; 85 % confirmed, 5 % no-show, 7 % cancelled, 3 % pending), over a 366-day window, as JSON
  and as CSV: the first request after start and the steady state.

Setup: a fresh PostgreSQL database; booking's schema migrated; its read model (the lab and its resources)
and the 50,000 bookings inserted in bulk straight into booking's tables. The booking API runs under
gunicorn (one sync worker) and is called over HTTP with ``requests`` on one keep-alive connection,
one request at a time. ``run()`` returns the Markdown section; run as a script it also writes
bench/booking_depth.md. Environment: LABSHARE_BENCH_PG_URL (an admin URL, default
postgresql://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import datetime as dt
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
from sqlalchemy import func, insert, select, text  # noqa: E402

from services.booking.app import build_runtime  # noqa: E402
from services.booking.store import Booking, LabView, ResourceView  # noqa: E402
from shared.auth import issue_dev_token  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.db import admin_engine  # noqa: E402
from shared.migrate import upgrade  # noqa: E402

PG_ADMIN_URL = os.environ.get("LABSHARE_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
ZONE = "Europe/Oslo"
BOOKINGS = 50_000
RESOURCES = 20
ORGS = ("ntnu", "sintef", "stolav", "trondheim-kommune", "startup-as")
PROJECTS = 40
SERIES_RUNS = 7
USAGE_RUNS = 15
SINGLE_RUNS = 30
MANAGER = {"sub": "bench-manager", "name": "Bench Manager", "email": "bench-manager@example.org", "org": "ntnu",
           "roles": ["researcher", "manager"]}
USER = {"sub": "bench-user", "name": "Bench User", "email": "bench-user@example.org", "org": "ntnu",
        "roles": ["researcher"]}
POLICY = {"horizon_days": 800, "max_minutes": 480, "slot_minutes": 15, "min_minutes": 15}
RATES = {"internal": 450, "external": 1200, "currency": "NOK"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


def _ms(samples: list[float]) -> str:
    return f"{statistics.median(samples):.1f}"


# -- setup ------------------------------------------------------------------------------------------


def _read_model(rt, lab_id: str, count: int) -> list[str]:
    """A lab and ``count`` always-open resources in booking's read model, as inventory's events would leave them."""
    managers = [{"sub": MANAGER["sub"], "name": MANAGER["name"], "email": MANAGER["email"]}]
    ids = [str(uuid.uuid4()) for _ in range(count)]
    with rt.db.begin() as session:
        session.add(LabView(id=lab_id, name="Bench lab", org="ntnu", timezone=ZONE, managers=managers,
                            show_titles=False, version=1, data={"building": "Elgeseter 10"}))
        for i, rid in enumerate(ids):
            session.add(ResourceView(id=rid, lab_id=lab_id, name=f"Instrument {i:02d}", category="bench/instrument",
                                     status="active", policy=POLICY, rates=RATES, version=1, data={}))
    return ids


def _bulk_bookings(rt, lab_id: str, resource_ids: list[str], today: dt.date) -> dt.date:
    """50,000 bookings over about two years up to today: six one-hour slots a day per resource."""
    rng = random.Random(11)
    per_resource = BOOKINGS // len(resource_ids)
    first_day = today - dt.timedelta(days=per_resource // 6 + 1)
    projects = [(ORGS[i % len(ORGS)], f"P-{i:03d}") for i in range(PROJECTS)]
    rows = []
    for rid in resource_ids:
        for i in range(per_resource):
            day = first_day + dt.timedelta(days=i // 6)
            start = dt.datetime.combine(day, dt.time(7, 0), tzinfo=dt.UTC) + dt.timedelta(hours=(i % 6) * 1.5)
            end = start + dt.timedelta(minutes=rng.choice((30, 60, 75)))
            org, project = rng.choice(projects)
            status = rng.choices(("confirmed", "no_show", "cancelled", "pending"), (85, 5, 7, 3))[0]
            stamp = start - dt.timedelta(days=rng.randint(1, 30))
            rows.append({
                "id": str(uuid.uuid4()), "resource_id": rid, "lab_id": lab_id, "series_id": None, "rrule": None,
                "user_sub": f"user-{rng.randint(1, 600)}", "user_name": "Someone", "user_email": "x@example.org",
                "user_org": org, "title": "Run", "project": project, "start_at": start, "end_at": end,
                "hold_until": end, "status": status, "cancel_reason": None, "decided_by": None, "sequence": 0,
                "checked_in_at": None, "created_at": stamp, "updated_at": stamp, "checkin_due": None,
                "recurrence_id": None,
            })
    with rt.db.begin() as session:
        for chunk in range(0, len(rows), 2000):
            session.execute(insert(Booking), rows[chunk:chunk + 2000])
    with rt.db.begin() as session:
        session.execute(text("ANALYZE bookings"))
    return first_day


class Server:
    """``gunicorn 'services.booking.app:create_app()'`` (one sync worker) on a free port; always stopped."""

    def __init__(self, settings: Settings, url: str) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LABSHARE_")}
        env.update({"LABSHARE_BOOKING_DATABASE_URL": url, "LABSHARE_DEV_MODE": "1",
                    "LABSHARE_DEV_SECRET": settings.dev_secret, "LABSHARE_LOG_LEVEL": "WARNING",
                    "LABSHARE_BROKER_URL": "memory://"})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-w", "1", "-b", f"127.0.0.1:{self.port}", "--timeout", "120",
             "services.booking.app:create_app()"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(self.base + "/healthz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("the booking API did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)


# -- measurements ---------------------------------------------------------------------------------------


def _timed(call) -> tuple[float, requests.Response]:
    t = time.perf_counter()
    resp = call()
    return (time.perf_counter() - t) * 1000, resp


def _series(http: requests.Session, base: str, resource_id: str, start: dt.datetime, **extra) -> float:
    body = {"resource_id": resource_id, "start": start.isoformat(), "end": (start + dt.timedelta(hours=1)).isoformat(),
            "title": "Weekly imaging", "rrule": "FREQ=WEEKLY;COUNT=52", **extra}
    ms, resp = _timed(lambda: http.post(base + "/api/v1/bookings", json=body, timeout=60))
    if resp.status_code != 201:
        raise RuntimeError(f"series refused: {resp.status_code} {resp.text[:300]}")
    return ms


def _measure(url: str) -> list[str]:
    settings = Settings(database_url=url, dev_mode=True)
    upgrade("booking", settings)
    rt = build_runtime(settings)
    lab_id = str(uuid.uuid4())
    try:
        resource_ids = _read_model(rt, lab_id, RESOURCES + 2)
        heavy, (free, half) = resource_ids[:RESOURCES], resource_ids[RESOURCES:]
        today = dt.datetime.now(dt.UTC).date()
        t = time.perf_counter()
        first_day = _bulk_bookings(rt, lab_id, heavy, today)
        seed_s = time.perf_counter() - t
        window_from = dt.datetime.combine(today - dt.timedelta(days=366), dt.time(), tzinfo=dt.UTC)
        window_to = dt.datetime.combine(today, dt.time(), tzinfo=dt.UTC)
        with rt.db.read() as session:
            in_window = session.scalar(select(func.count()).select_from(Booking).where(
                Booking.lab_id == lab_id, Booking.start_at < window_to, Booking.end_at > window_from))
        server = Server(settings, url)
        try:
            http = requests.Session()
            http.headers["Authorization"] = f"Bearer {issue_dev_token(settings, USER)}"
            monday = today + dt.timedelta(days=7 - today.weekday())
            base_day = dt.datetime.combine(monday, dt.time(6, 0), tzinfo=dt.UTC)
            all_or_nothing = [_series(http, server.base, free, base_day + dt.timedelta(hours=i))
                              for i in range(SERIES_RUNS)]
            # Every other week taken on the second resource: half of each series is skipped.
            blocker = requests.Session()
            blocker.headers["Authorization"] = f"Bearer {issue_dev_token(settings, {**USER, 'sub': 'blocker'})}"
            for i in range(SERIES_RUNS):
                start = base_day + dt.timedelta(hours=i)
                body = {"resource_id": half, "start": start.isoformat(),
                        "end": (start + dt.timedelta(hours=1)).isoformat(), "rrule": "FREQ=WEEKLY;INTERVAL=2;COUNT=26"}
                assert blocker.post(server.base + "/api/v1/bookings", json=body, timeout=60).status_code == 201
            skipping = [_series(http, server.base, half, base_day + dt.timedelta(hours=i), on_conflict="skip")
                        for i in range(SERIES_RUNS)]
            singles = []
            for i in range(SINGLE_RUNS):
                start = base_day + dt.timedelta(days=1, minutes=15 * i)
                body = {"resource_id": free, "start": start.isoformat(),
                        "end": (start + dt.timedelta(minutes=15)).isoformat(), "title": "Single"}
                ms, resp = _timed(lambda b=body: http.post(server.base + "/api/v1/bookings", json=b, timeout=30))
                assert resp.status_code == 201, resp.text
                singles.append(ms)

            http.headers["Authorization"] = f"Bearer {issue_dev_token(settings, MANAGER)}"
            query = {"lab_id": lab_id, "from": window_from.isoformat(), "to": window_to.isoformat()}
            usage: dict[str, list[float]] = {}
            first: dict[str, float] = {}
            sizes: dict[str, int] = {}
            rows = 0
            for fmt in ("json", "csv"):
                samples = []
                for i in range(USAGE_RUNS + 1):
                    ms, resp = _timed(lambda f=fmt: http.get(server.base + "/api/v1/usage",
                                                             params={**query, "format": f}, timeout=60))
                    assert resp.status_code == 200, resp.text[:300]
                    if i == 0:
                        first[fmt] = ms
                    else:
                        samples.append(ms)
                    sizes[fmt] = len(resp.content)
                    if fmt == "json":
                        rows = len(resp.json()["items"])
                usage[fmt] = samples
        finally:
            server.stop()
    finally:
        rt.db.dispose()
    return [
        f"{BOOKINGS:,} bookings in one lab ({RESOURCES} resources, {first_day} to {today}; 85 % confirmed, 5 % "
        f"no-show, 7 % cancelled, 3 % pending) inserted in bulk in {seed_s:.1f} s; {in_window:,} of them overlap "
        f"the report's 366-day window.",
        "",
        "| request | median ms | min ms | max ms | runs |",
        "|---|---:|---:|---:|---:|",
        f"| 52-week series, all or nothing (52 rows, 104 events) | {_ms(all_or_nothing)} | "
        f"{min(all_or_nothing):.1f} | {max(all_or_nothing):.1f} | {SERIES_RUNS} |",
        f"| 52-week series, `on_conflict: skip`, 26 weeks taken | {_ms(skipping)} | {min(skipping):.1f} | "
        f"{max(skipping):.1f} | {SERIES_RUNS} |",
        f"| one booking (for scale) | {_ms(singles)} | {min(singles):.1f} | {max(singles):.1f} | {SINGLE_RUNS} |",
        f"| usage, 366 days, JSON ({rows} rows, {sizes['json'] / 1024:.0f} KiB) | {_ms(usage['json'])} | "
        f"{min(usage['json']):.1f} | {max(usage['json']):.1f} | {USAGE_RUNS} |",
        f"| usage, 366 days, CSV ({sizes['csv'] / 1024:.0f} KiB) | {_ms(usage['csv'])} | {min(usage['csv']):.1f} | "
        f"{max(usage['csv']):.1f} | {USAGE_RUNS} |",
        "",
        f"The first usage request after the server started took {first['json']:.1f} ms (JSON) and "
        f"{first['csv']:.1f} ms (CSV, after the JSON ones).",
        "",
    ]


def run() -> str:
    """Measure and return a Markdown section (``## Booking depth``)."""
    lines = [
        "## Booking depth: series and usage",
        "",
        "PostgreSQL on this machine; the booking API under gunicorn (one sync worker), called over HTTP "
        "from one client, one request at a time. A fresh database per run; the read model and the bookings are "
        "inserted straight into booking's tables. Medians come from a shared 2-core machine, so expect noise "
        "between runs.",
        "",
    ]
    if not _pg_reachable():
        return "\n".join(lines + ["PostgreSQL was not reachable on 127.0.0.1:5432; nothing was measured.", ""])
    before = os.getloadavg()[0]
    name = f"labshare_bench_depth_{uuid.uuid4().hex[:8]}"
    admin = admin_engine(PG_ADMIN_URL)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        lines += _measure(PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}")
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    lines += [f"Load average (1 min) of the machine: {before:.1f} before the run, {os.getloadavg()[0]:.1f} after "
              f"({os.cpu_count()} CPUs; other work may share them).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    report = run()
    (ROOT / "bench" / "booking_depth.md").write_text(report)
    print(report)
