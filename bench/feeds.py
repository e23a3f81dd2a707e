"""Calendar feed benchmark: one resource with 20,000 bookings over its history.

What it measures, on SQLite (embedded defaults) and, when a server answers, on PostgreSQL:

- ``GET /feeds/resources/{id}.ics`` answered 200: with no event rendered yet (a fresh process), in the
  steady state (every event memoised), and right after one booking changed (one event rendered again);
- the same feed answered 304 (If-None-Match), which reads the feed's version row and no booking;
- a personal feed (``/feeds/users/{token}.ics``), 200 and 304;
- peak memory (tracemalloc) of one feed request;
- and, in the same run, a straightforward rendering: the window's bookings as ORM objects, one icalendar
  ``Event`` per row, ``add_missing_timezones``, no caching and no conditional GET, so every poll costs that.

The booking service's app is called in-process (Flask test client, no network). ``run()`` returns the
Markdown section; run as a script it also writes bench/feeds.md. Environment: LABSHARE_BENCH_PG_URL (an
admin URL, default postgresql://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import datetime as dt
import os
import random
import resource
import socket
import statistics
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import icalendar  # noqa: E402
from sqlalchemy import insert, select, text, update  # noqa: E402
from werkzeug.test import Client  # noqa: E402

from services.booking import feed_render, store  # noqa: E402
from services.booking.app import build_runtime, create_app  # noqa: E402
from services.booking.feeds import rotate_token  # noqa: E402
from services.booking.store import Booking, LabView, ResourceView  # noqa: E402
from shared.calendar import booking_uid  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.db import admin_engine  # noqa: E402
from shared.migrate import upgrade  # noqa: E402

PG_ADMIN_URL = os.environ.get("LABSHARE_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BOOKINGS = 20_000
PER_DAY = 12
HORIZON_DAYS = 90
ZONE = "Europe/Oslo"
OWNER = "heavy-user"  # owns every tenth booking: the personal feed's subject


@dataclass
class Timing:
    """Latencies of one kind of request, in milliseconds."""

    name: str
    samples: list[float]
    size: int = 0

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p99(self) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def _forget() -> None:
    """Empty the renderer's memos, as in a freshly started process."""
    for memo in (feed_render._vevent, feed_render._place_properties, feed_render._vtimezone):
        memo.cache_clear()


def _timed(fn: Callable[[], object], n: int, before: Callable[[], None] | None = None) -> list[float]:
    out = []
    for _ in range(n):
        if before:
            before()
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def _seed(rt, now: dt.datetime) -> tuple[str, str]:
    """A lab, a resource and 20,000 bookings (12 a day, ending at the horizon); returns (resource, lab) ids."""
    lab_id, resource_id = str(uuid.uuid4()), str(uuid.uuid4())
    rng = random.Random(7)
    day0 = now.date() + dt.timedelta(days=HORIZON_DAYS - BOOKINGS // PER_DAY)
    rows = []
    for i in range(BOOKINGS):
        day = day0 + dt.timedelta(days=i // PER_DAY)
        start = dt.datetime.combine(day, dt.time(7, 0), tzinfo=dt.UTC) + dt.timedelta(hours=i % PER_DAY)
        end = start + dt.timedelta(minutes=45)
        status = rng.choices(["confirmed", "pending", "cancelled"], [90, 5, 5])[0]
        stamp = start - dt.timedelta(days=rng.randint(1, 30))
        rows.append({
            "id": str(uuid.uuid4()), "resource_id": resource_id, "lab_id": lab_id, "series_id": None,
            "rrule": None, "user_sub": OWNER if i % 10 == 0 else f"user-{rng.randint(1, 400)}",
            "user_name": "Someone", "user_email": "someone@example.org", "user_org": "ntnu",
            "title": f"Experiment {i}, run {rng.randint(1, 9)}; stage {rng.choice('ABC')}",
            "project": f"NFR-{rng.randint(10000, 99999)}", "start_at": start, "end_at": end, "hold_until": end,
            "status": status, "cancel_reason": None, "decided_by": None, "sequence": rng.randint(0, 3),
            "checked_in_at": None, "created_at": stamp, "updated_at": stamp,
        })
    with rt.db.begin() as session:
        session.add(LabView(id=lab_id, name="Cell imaging lab", org="ntnu", timezone=ZONE, managers=[],
                            show_titles=False, version=1, data={"building": "Elgeseter 10"}))
        session.add(ResourceView(id=resource_id, lab_id=lab_id, name="Zeiss LSM 980 confocal",
                                 category="microscopy/confocal", status="active",
                                 policy={"horizon_days": HORIZON_DAYS}, rates={}, version=1, data={}))
        for chunk in range(0, len(rows), 1000):
            session.execute(insert(Booking), rows[chunk:chunk + 1000])
        store.bump_feeds(session, resources=[resource_id], labs=[lab_id], users=[OWNER])
    return resource_id, lab_id


def _naive_feed(rt, resource_id: str, now: dt.datetime) -> bytes:
    """The straightforward feed: ORM rows of the window, an icalendar Event per row, nothing cached."""
    win = feed_render.window(now, dt.timedelta(days=HORIZON_DAYS))
    with rt.db.read() as session:
        place = store.load_place(session, resource_id)
        lab = session.get(LabView, place.lab_id)
        bookings = session.scalars(select(Booking).where(
            Booking.resource_id == resource_id, Booking.start_at < win.end, Booking.end_at > win.start,
        ).order_by(Booking.start_at)).all()
        cal = icalendar.Calendar()
        for name, value in (("prodid", "-//labshare//naive//EN"), ("version", "2.0"), ("method", "PUBLISH"),
                            ("x-wr-calname", place.resource_name)):
            cal.add(name, value)
        for b in bookings:
            if b.status not in ("confirmed", "pending") and b.start_at <= now:
                continue
            ev = icalendar.Event()
            ev.add("uid", booking_uid(b.id, rt.settings))
            ev.add("dtstamp", now)
            ev.add("dtstart", b.start_at.astimezone(place.tz))
            ev.add("dtend", b.end_at.astimezone(place.tz))
            ev.add("last-modified", b.updated_at)
            ev.add("sequence", b.sequence)
            ev.add("status", feed_render.ics_status(b.status))
            ev.add("transp", "OPAQUE" if b.status in ("confirmed", "pending") else "TRANSPARENT")
            ev.add("summary", "Booked")
            ev.add("location", f"{lab.name}, {lab.data.get('building', '')}")
            ev.add("resources", place.resource_name)
            ev.add("organizer", f"{rt.settings.public_url}/api/v1/labs/{lab.id}", parameters={"CN": lab.name})
            cal.add_component(ev)
        cal.add_missing_timezones(first_date=win.start.date(), last_date=win.end.date())
        return cal.to_ical()


def _peak_kib(fn: Callable[[], object]) -> float:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 1024
    finally:
        tracemalloc.stop()


def _pg_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


def _measure(settings: Settings) -> tuple[list[Timing], dict[str, float], int]:
    upgrade("booking", settings)
    rt = build_runtime(settings)
    try:
        now = dt.datetime.now(dt.UTC)
        resource_id, _lab_id = _seed(rt, now)
        client = Client(create_app(runtime=rt))
        path = f"/feeds/resources/{resource_id}.ics"
        user_path = f"/feeds/users/{rotate_token(rt, OWNER)}.ics"

        def get(p: str, **headers) -> bytes:
            resp = client.get(p, headers=headers)
            assert resp.status_code in (200, 304), resp.get_data(as_text=True)
            return resp.get_data()

        body = get(path)
        events = body.count(b"BEGIN:VEVENT")
        user_body = get(user_path)
        with rt.db.read() as session:
            ids = session.scalars(select(Booking.id).where(
                Booking.resource_id == resource_id, Booking.start_at > now).limit(50)).all()
        changes = iter(ids * 10)

        def change_one() -> None:
            booking_id = next(changes)
            with rt.db.begin() as session:
                session.execute(update(Booking).where(Booking.id == booking_id).values(
                    title=uuid.uuid4().hex, sequence=Booking.sequence + 1, updated_at=dt.datetime.now(dt.UTC)))
                row = session.get(Booking, booking_id)
                store.bump_feeds_for(session, [row])

        timings = [
            Timing("resource feed 200, nothing memoised (fresh process)",
                   _timed(lambda: get(path), 15, before=_forget), len(body)),
            Timing("resource feed 200, steady state", _timed(lambda: get(path), 40), len(body)),
            Timing("resource feed 200 after one booking changed", _timed(lambda: get(path), 30, before=change_one),
                   len(body)),
        ]
        etag = client.get(path).headers["ETag"]
        user_etag = client.get(user_path).headers["ETag"]  # the changes above may have been the owner's
        timings += [
            Timing("resource feed 304 (If-None-Match)", _timed(lambda: get(path, **{"If-None-Match": etag}), 500)),
            Timing("personal feed 200, nothing memoised",
                   _timed(lambda: get(user_path), 15, before=_forget), len(user_body)),
            Timing("personal feed 200, steady state", _timed(lambda: get(user_path), 40), len(user_body)),
            Timing("personal feed 304 (If-None-Match)",
                   _timed(lambda: get(user_path, **{"If-None-Match": user_etag}), 500)),
            Timing("straightforward rendering (ORM rows, Event per row, no cache)",
                   _timed(lambda: _naive_feed(rt, resource_id, dt.datetime.now(dt.UTC)), 15)),
        ]
        _forget()
        memory = {
            "resource feed 200, nothing memoised": _peak_kib(lambda: get(path)),
            "resource feed 200, steady state": _peak_kib(lambda: get(path)),
            "resource feed 304": _peak_kib(lambda: get(path, **{"If-None-Match": etag})),
            "straightforward rendering": _peak_kib(lambda: _naive_feed(rt, resource_id, dt.datetime.now(dt.UTC))),
        }
        return timings, memory, events
    finally:
        rt.db.dispose()


def _section(label: str, timings: list[Timing], memory: dict[str, float], events: int) -> list[str]:
    by_name = {t.name: t for t in timings}
    naive = by_name["straightforward rendering (ORM rows, Event per row, no cache)"]
    lines = [
        f"### {label}",
        "",
        f"{events} events in the resource feed's window (of {BOOKINGS:,} bookings).",
        "",
        "| request | median ms | p99 ms | body KiB | straightforward ÷ this (median) |",
        "|---|---:|---:|---:|---:|",
    ]
    for t in timings:
        ratio = "" if t is naive else f"{naive.median / t.median:.1f}×"
        size = f"{t.size / 1024:.0f}" if t.size else ""
        lines.append(f"| {t.name} | {t.median:.2f} | {t.p99:.2f} | {size} | {ratio} |")
    lines += ["", "| peak traced memory of one request | KiB |", "|---|---:|"]
    lines += [f"| {name} | {kib:,.0f} |" for name, kib in memory.items()]
    return lines + [""]


def run() -> str:
    """Measure the feeds and return a Markdown section (``## Calendar feeds``)."""
    lines = [
        "## Calendar feeds",
        "",
        f"One resource with {BOOKINGS:,} bookings ({PER_DAY} a day, 45 minutes each, the last ones at its "
        f"{HORIZON_DAYS}-day horizon; 5 % pending, 5 % cancelled), lab zone {ZONE}. The feed covers 90 days back "
        "to the horizon. Requests go to the booking app in-process (Flask test client), one at a time. "
        "The personal feed's owner has every tenth booking. The straightforward rendering writes the same "
        "properties with `Event.add`. Medians and p99 come from one process on a shared 2-core machine, "
        "so expect noise between runs.",
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=tmp, public_url="https://labshare.example.org")
        lines += _section("SQLite (embedded defaults)", *_measure(settings))
    if _pg_reachable():
        name = f"labshare_bench_feeds_{uuid.uuid4().hex[:8]}"
        admin = admin_engine(PG_ADMIN_URL)
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
            pg = Settings(database_url=url, public_url="https://labshare.example.org")
            lines += _section("PostgreSQL", *_measure(pg))
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
    else:
        lines += ["PostgreSQL was not reachable on 127.0.0.1:5432; only SQLite was measured.", ""]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines += [f"Peak RSS of the benchmark process (data set, both databases, all requests): {rss:,.0f} MiB.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    report = run()
    (ROOT / "bench" / "feeds.md").write_text(report)
    print(report)
