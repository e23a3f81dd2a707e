"""Helpers for the concurrency tests: start many requests at once, check the database, run real server processes.

- ``race`` starts one thread per job and releases them together from a barrier, so the
  requests really do overlap in time (not just run one after the other).
- ``Reply`` is what a job records of a response: status, JSON body, which request it was.
- ``live_bookings``/``assert_no_overlaps`` read the booking service's table directly
  (read-only) and check the guarantee itself, not what the API says about it.
- ``BookingProcesses`` runs the booking service under gunicorn with several worker
  processes against the same database as an in-process ``Stack``, and always stops it.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import select
from werkzeug.test import Client

from services.booking.domain import LIVE
from services.booking.store import Booking
from shared.config import Settings
from shared.timeutil import parse_rfc3339

REPO_ROOT = Path(__file__).resolve().parent.parent


# -- replies and races ---------------------------------------------------------------------------


@dataclass
class Reply:
    """One response, with what was asked for (``tag`` says which group of the race sent it)."""

    status: int
    body: Any
    tag: str = ""
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    booking_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        detail = self.body.get("detail") if isinstance(self.body, dict) else self.body
        return f"Reply({self.tag or '-'} {self.status} {self.start}..{self.end} {detail!r})"


def race(jobs: Sequence[Callable[[], Any]], timeout: float = 60.0) -> list[Any]:
    """Run every job in a thread of its own, all released at once; their results in order.

    An exception in any job is re-raised here (after every thread has finished).
    """
    barrier = threading.Barrier(len(jobs))
    results: list[Any] = [None] * len(jobs)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout)
            results[i] = jobs[i]()
        except BaseException as exc:  # noqa: BLE001 - reported to the test below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(i,), daemon=True, name=f"race-{i}") for i in range(len(jobs))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in threads):
        raise AssertionError(f"{sum(t.is_alive() for t in threads)} of {len(jobs)} racing requests still hang "
                             f"after {timeout:.0f}s")
    if errors:
        raise errors[0]
    return results


def statuses(replies: Iterable[Reply]) -> Counter:
    """How many replies had each status."""
    return Counter(r.status for r in replies)


def assert_only(replies: Sequence[Reply], allowed: set[int]) -> None:
    """Every reply has one of ``allowed`` statuses (a 500 shows its body)."""
    bad = [r for r in replies if r.status not in allowed]
    assert not bad, (
        f"{len(bad)} of {len(replies)} replies were not {sorted(allowed)}: {dict(statuses(replies))}; "
        f"first ones: {bad[:3]}"
    )


def overlaps(a: tuple[dt.datetime, dt.datetime], b: tuple[dt.datetime, dt.datetime]) -> bool:
    """Half-open intervals overlap (touching does not)."""
    return a[0] < b[1] and b[0] < a[1]


def assert_conflicts_explain(reply: Reply, buffer: dt.timedelta = dt.timedelta(0)) -> None:
    """A clash 409 lists busy times, each of which overlaps the requested hold ``[start, end + buffer)``."""
    assert reply.status == 409
    conflicts = reply.body.get("conflicts")
    assert conflicts, f"409 without conflicts: {reply.body}"
    wanted = (reply.start, reply.end + buffer)
    for c in conflicts:
        busy = (parse_rfc3339(c["start"]), parse_rfc3339(c["end"]) + buffer)
        assert overlaps(wanted, busy), f"conflict {c} does not clash with {wanted}"


# -- in-process HTTP -------------------------------------------------------------------------------


class Caller:
    """One thread's HTTP client over the in-process gateway (a werkzeug test Client of its own)."""

    def __init__(self, app: Any, token: str) -> None:
        self.client = Client(app)
        self.headers = {"Authorization": f"Bearer {token}"}

    def call(self, method: str, path: str, body: Any = None, **reply: Any) -> Reply:
        resp = self.client.open(path, method=method, headers=self.headers, json=body)
        return Reply(resp.status_code, resp.get_json(silent=True), **reply)

    def book(self, resource_id: str, start: dt.datetime, end: dt.datetime, tag: str = "", **extra: Any) -> Reply:
        body = {"resource_id": resource_id, "start": start.isoformat(), "end": end.isoformat(), "title": "Race"}
        reply = self.call("POST", "/api/v1/bookings", {**body, **extra}, tag=tag, start=start, end=end)
        if reply.status == 201:
            reply.booking_id = reply.body["id"]
        return reply

    def move(self, booking_id: str, start: dt.datetime, end: dt.datetime, tag: str = "") -> Reply:
        body = {"start": start.isoformat(), "end": end.isoformat()}
        return self.call("PATCH", f"/api/v1/bookings/{booking_id}", body, tag=tag, start=start, end=end,
                         booking_id=booking_id)

    def cancel(self, booking_id: str, tag: str = "") -> Reply:
        return self.call("POST", f"/api/v1/bookings/{booking_id}/cancel", {"reason": "race"}, tag=tag,
                         booking_id=booking_id)


class HttpCaller:
    """The same calls over real HTTP (``requests``), a new connection each time so that
    the server's worker processes share the requests between them."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base = base_url
        self.headers = {"Authorization": f"Bearer {token}", "Connection": "close"}

    def call(self, method: str, path: str, body: Any = None, **reply: Any) -> Reply:
        resp = requests.request(method, self.base + path, json=body, headers=self.headers, timeout=30)
        try:
            data = resp.json()
        except ValueError:
            data = resp.text[:500]
        return Reply(resp.status_code, data, **reply)

    book = Caller.book
    move = Caller.move
    cancel = Caller.cancel


# -- the database, read directly --------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    id: str
    resource_id: str
    start: dt.datetime
    end: dt.datetime
    hold_until: dt.datetime
    status: str
    sequence: int


def all_bookings(stack: Any, resource_ids: Iterable[str] | None = None) -> list[Row]:
    """Every booking row (any status) of the given resources, straight from booking's database."""
    stmt = select(Booking).order_by(Booking.resource_id, Booking.start_at)
    if resource_ids is not None:
        stmt = stmt.where(Booking.resource_id.in_(list(resource_ids)))
    with stack.runtimes["booking"].db.read() as session:
        return [
            Row(b.id, b.resource_id, b.start_at, b.end_at, b.hold_until, b.status, b.sequence)
            for b in session.scalars(stmt)
        ]


def live_bookings(stack: Any, resource_ids: Iterable[str] | None = None) -> list[Row]:
    """Confirmed and pending bookings only."""
    return [r for r in all_bookings(stack, resource_ids) if r.status in LIVE]


def assert_no_overlaps(stack: Any, buffers: dict[str, int]) -> int:
    """No two live bookings of one resource overlap on ``[start_at, hold_until)``; returns how many were checked.

    ``buffers`` maps each resource to check to its ``buffer_minutes``; every live row
    must also hold exactly ``end + buffer``.
    """
    rows = live_bookings(stack, buffers)
    for row in rows:
        assert row.hold_until == row.end + dt.timedelta(minutes=buffers[row.resource_id]), row
        assert row.start < row.end, row
    by_resource: dict[str, list[Row]] = {}
    for row in rows:
        by_resource.setdefault(row.resource_id, []).append(row)
    clashes = [
        (a, b)
        for group in by_resource.values()
        for a, b in itertools.combinations(group, 2)
        if overlaps((a.start, a.hold_until), (b.start, b.hold_until))
    ]
    assert not clashes, f"{len(clashes)} pairs of live bookings overlap, e.g. {clashes[:3]}"
    return len(rows)


# -- real server processes --------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a server process use the same database, broker and dev key as ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABSHARE_")}
    env.update({
        "LABSHARE_DEV_MODE": "1",
        "LABSHARE_DEV_SECRET": settings.dev_secret,
        "LABSHARE_DATA_DIR": str(Path(settings.data_dir).resolve()),
        "LABSHARE_BOOKING_DATABASE_URL": settings.database_url_for("booking"),
        "LABSHARE_BROKER_URL": settings.broker_url,
        "LABSHARE_EXCHANGE": settings.exchange,
        "LABSHARE_QUEUE_PREFIX": settings.queue_prefix,
        "LABSHARE_LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    })
    if settings.database_url:
        env["LABSHARE_DATABASE_URL"] = settings.database_url
    return env


class BookingProcesses:
    """``gunicorn 'services.booking.app:create_app()'`` with several worker processes (and threads each).

    The access log records each request's worker pid, so a test can tell how many
    processes really served it. Use as a context manager: the server is always stopped.
    """

    def __init__(self, settings: Settings, log_dir: Path, workers: int = 3, threads: int = 8) -> None:
        self.settings = settings
        self.workers = workers
        self.threads = threads
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.access_log = log_dir / "booking-access.log"
        self.error_log = log_dir / "booking-server.log"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> BookingProcesses:
        cmd = [
            sys.executable, "-m", "gunicorn",
            "--workers", str(self.workers), "--worker-class", "gthread", "--threads", str(self.threads),
            "--bind", f"127.0.0.1:{self.port}",
            "--timeout", "60", "--graceful-timeout", "3", "--keep-alive", "0",
            "--no-control-socket",
            "--access-logfile", str(self.access_log),
            "--access-logformat", "%(p)s %(m)s %(U)s %(s)s",
            "services.booking.app:create_app()",
        ]
        with open(self.error_log, "wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=service_env(self.settings), stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.error_log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _wait_ready(self, timeout: float = 20.0) -> None:
        """Until every worker answers (a request each on fresh connections) or the deadline passes."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        ok = 0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"gunicorn exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(self.base_url + "/healthz", timeout=2, headers={"Connection": "close"}).ok:
                    ok += 1
                    if ok >= self.workers * 3:
                        return
                    continue
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise AssertionError(f"gunicorn did not answer on {self.base_url} within {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGINT to the master (gunicorn's quick shutdown of its workers), SIGKILL to its process group if that
        takes too long."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=8)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    def worker_pids(self, method: str, path_prefix: str) -> Counter:
        """How many requests of ``method`` under ``path_prefix`` each worker process served (read it after
        ``stop``: a worker logs a request after it has answered)."""
        pids: Counter = Counter()
        if not self.access_log.exists():
            return pids
        for line in self.access_log.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[1] == method and parts[2].startswith(path_prefix):
                pids[parts[0]] += 1
        return pids
