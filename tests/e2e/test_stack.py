"""Many replicas on one machine: the stack of ``make stack`` (deploy/stack.py) under load and under faults.

Two replicas of every API (each its own gunicorn), two relays per service, two booking
consumers and two notify workers, the web app, and nginx in front (deploy/nginx.conf with
both replicas in each upstream), on a fresh PostgreSQL database and a RabbitMQ vhost of
their own. Every request below goes through nginx.

What a client sees when a booking replica dies (SIGKILL, with its workers): requests
that had reached it get no answer from it. nginx passes an idempotent one (GET) to the
other replica; a POST it must not repeat (``proxy_next_upstream error timeout`` without
``non_idempotent``: the booking may have been committed), so the client gets a 502
problem+json for it (or a cut connection, if the replica died while answering) and must
look before it books again. A request that could not even
connect to the dead replica was never sent, so nginx passes it on, POST included. The
tests hold the stack to exactly that: the only errors are on POSTs that were in flight,
at most one per client, and nothing else.

The event path is checked three ways: booking's outbox (every event published), an
independent AMQP client's queue bound to the exchange (each event exactly once), and
notify's inbox and deliveries (each event handled, each booking's invitation queued once).
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import random
import re
import threading
import time
import uuid
from pathlib import Path

import pika
import pytest
import requests
from sqlalchemy import create_engine, text

from shared.db import psycopg_url
from tests import infra

pytestmark = pytest.mark.e2e

RESOURCES = 50
CLIENTS = 6
TAP_QUEUE = "stack-test-tap"
SETTLE_SECONDS = 45




stack_module = infra.deploy_script("stack.py")


class Harness:
    """The running stack, its database, the tap on the exchange, and the test data."""

    def __init__(self, stack, database_url: str, broker_url: str) -> None:
        self.stack = stack
        self.url = stack.url
        self.engine = create_engine(psycopg_url(database_url), pool_size=2)
        self.broker_url = broker_url
        self.tapped: collections.Counter[str] = collections.Counter()
        self.slot = 0
        self.slot_lock = threading.Lock()
        self.day0 = (dt.datetime.now(dt.UTC) + dt.timedelta(days=2)).replace(hour=0, minute=0, second=0,
                                                                             microsecond=0)

    # -- set-up -------------------------------------------------------------------------------

    def token(self, sub: str, roles: list[str]) -> str:
        body = {"sub": sub, "name": sub.title(), "email": f"{sub}@example.org", "org": "ntnu", "roles": roles}
        resp = requests.post(f"{self.url}/api/v1/dev/token", json=body, timeout=10)
        assert resp.status_code == 201, resp.text
        return resp.json()["token"]

    def open_tap(self) -> None:
        """A queue of our own on the events exchange: what any other subscriber would get."""
        with self._amqp() as conn:
            channel = conn.channel()
            channel.exchange_declare("labshare.events", "topic", durable=True)
            channel.queue_declare(TAP_QUEUE, durable=True)
            channel.queue_bind(TAP_QUEUE, "labshare.events", routing_key="booking.#")

    def _amqp(self) -> pika.BlockingConnection:
        return pika.BlockingConnection(pika.URLParameters(self.broker_url))

    def drain_tap(self) -> collections.Counter[str]:
        """Every booking event the tap got so far, by id (cumulative)."""
        with self._amqp() as conn:
            channel = conn.channel()
            while True:
                method, _props, body = channel.basic_get(TAP_QUEUE, auto_ack=True)
                if method is None:
                    break
                self.tapped[json.loads(body)["id"]] += 1
        return self.tapped

    def setup_data(self) -> None:
        self.manager = self.token("stack-manager", ["researcher", "manager"])
        self.users = [self.token(f"stack-user-{i}", ["researcher"]) for i in range(CLIENTS)]
        lab = {"name": "Stack lab", "org": "ntnu", "building": "B1", "timezone": "Europe/Oslo",
               "managers": [{"sub": "stack-manager", "name": "Manager", "email": "stack-manager@example.org"}]}
        resp = requests.post(f"{self.url}/api/v1/labs", json=lab, headers=self.auth(self.manager), timeout=10)
        assert resp.status_code == 201, resp.text
        lab_id = resp.json()["id"]
        self.resources = []
        for i in range(RESOURCES):
            body = {"lab_id": lab_id, "name": f"Bench {i}", "kind": "equipment", "category": "wetlab/bench",
                    "policy": {"slot_minutes": 15, "min_minutes": 15, "max_minutes": 240, "horizon_days": 120}}
            resp = requests.post(f"{self.url}/api/v1/resources", json=body, headers=self.auth(self.manager),
                                 timeout=10)
            assert resp.status_code == 201, resp.text
            self.resources.append(resp.json()["id"])
        deadline = time.monotonic() + 30
        for rid in self.resources:  # booking learns them through the events
            while requests.get(f"{self.url}/api/v1/availability?resource_id={rid}", headers=self.auth(self.manager),
                               timeout=10).status_code != 200:
                assert time.monotonic() < deadline, "booking never learnt the resources"
                time.sleep(0.1)

    @staticmethod
    def auth(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def next_slot(self) -> tuple[str, dt.datetime]:
        """A resource and a start no other booking of these tests uses (30-minute slots)."""
        with self.slot_lock:
            k, self.slot = self.slot, self.slot + 1
        return self.resources[k % RESOURCES], self.day0 + dt.timedelta(days=30, minutes=30 * (k // RESOURCES))

    # -- the database -----------------------------------------------------------------------------

    def rows(self, sql: str, **params) -> list:
        with self.engine.connect() as conn:
            return list(conn.execute(text(sql), params))

    def settle(self) -> dict[str, int]:
        """Wait until every booking event is published, tapped once, handled by notify and mailed once.

        Gives up when nothing moved for SETTLE_SECONDS (a slow machine is not a lost event).
        """
        last, moved = None, time.monotonic()
        while True:
            state = self.event_state()
            if state["ok"]:
                return state
            if state != last:
                last, moved = state, time.monotonic()
            elif time.monotonic() - moved > SETTLE_SECONDS:
                raise AssertionError(f"the events did not settle: {state}")
            time.sleep(0.5)

    def event_state(self) -> dict:
        unpublished = self.rows("SELECT count(*) FROM booking.outbox WHERE published_at IS NULL")[0][0]
        events = {r.event_id for r in self.rows("SELECT event_id FROM booking.outbox WHERE type LIKE 'booking.%'")}
        handled = {r.event_id for r in self.rows("SELECT event_id FROM notify.inbox WHERE type LIKE 'booking.%'")}
        tapped = self.drain_tap()
        confirmed = {r.id for r in self.rows("SELECT id FROM booking.bookings WHERE status = 'confirmed'")}
        invitations = collections.Counter(
            r.booking_id for r in self.rows("SELECT booking_id FROM notify.deliveries WHERE kind = 'invitation'"))
        duplicates = {k: v for k, v in tapped.items() if v != 1}
        state = {
            "unpublished": unpublished,
            "events": len(events),
            "not_tapped": len(events - set(tapped)),
            "tapped_twice": len(duplicates),
            "tapped_unknown": len(set(tapped) - events),
            "not_handled_by_notify": len(events - handled),
            "bookings": len(confirmed),
            "bookings_without_invitation": len(confirmed - set(invitations)),
            "invitations_twice": sum(1 for v in invitations.values() if v != 1),
        }
        # Duplicates and unknown ids never heal: fail at once.
        assert not duplicates, f"events delivered twice on the tap: {duplicates}"
        assert state["tapped_unknown"] == 0, state
        assert state["invitations_twice"] == 0, state
        state["ok"] = (unpublished == 0 and state["not_tapped"] == 0 and state["not_handled_by_notify"] == 0
                       and state["bookings_without_invitation"] == 0)
        return state

    def gateway_records(self) -> list[dict]:
        log = self.stack.components["gateway"].log_path
        out = []
        for line in Path(log).read_text(errors="replace").splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    infra.nginx_binary()
    database_url = infra.fresh_database()
    try:
        vhost, broker_url = infra.create_vhost()
    except BaseException:
        infra.drop_database(database_url)
        raise
    stack = stack_module.Stack(database_url=database_url, broker_url=broker_url,
                               state_dir=tmp_path_factory.mktemp("stack"),
                               extra_env={"LABSHARE_RELAY_INTERVAL": "0.1", "LABSHARE_NOTIFY_INTERVAL": "0.5"})
    h = None
    try:
        h = Harness(stack, database_url, broker_url)
        h.open_tap()
        stack.start()
        h.setup_data()
        yield h
    finally:
        stack.stop()
        if h is not None:
            h.engine.dispose()
        infra.delete_vhost(vhost)
        infra.drop_database(database_url)


def booking_body(resource_id: str, start: dt.datetime, minutes: int = 30, title: str = "stack") -> dict:
    end = start + dt.timedelta(minutes=minutes)
    return {"resource_id": resource_id, "start": start.isoformat(), "end": end.isoformat(), "title": title}


class Load:
    """CLIENTS threads, each booking a free slot through nginx and reading it back, until stopped.

    A fresh connection per request: what is measured is the stack, not a client's stale keep-alive.
    Each client pauses ``pause`` seconds between bookings: a steady load the notify workers keep up
    with, so that the checks afterwards wait for the stack, not for a backlog.
    """

    def __init__(self, h: Harness, title: str, pause: float = 0.2) -> None:
        self.h = h
        self.title = title
        self.pause = pause
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.posts: list[tuple[str, dt.datetime, int | str, str | None]] = []  # resource, start, status, id
        self.gets: list[int | str] = []
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(CLIENTS)]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def _run(self, i: int) -> None:
        token = self.h.users[i]
        while not self.stop.is_set():
            resource_id, start = self.h.next_slot()
            try:
                resp = requests.post(f"{self.h.url}/api/v1/bookings", json=booking_body(resource_id, start,
                                     title=self.title), headers=self.h.auth(token), timeout=30)
                status: int | str = resp.status_code
                booking_id = resp.json().get("id") if resp.status_code == 201 else None
            except requests.RequestException as exc:
                status, booking_id = f"{type(exc).__name__}: {exc}", None
            with self.lock:
                self.posts.append((resource_id, start, status, booking_id))
            if booking_id:
                try:
                    got: int | str = requests.get(f"{self.h.url}/api/v1/bookings/{booking_id}",
                                                  headers=self.h.auth(token), timeout=30).status_code
                except requests.RequestException as exc:
                    got = f"{type(exc).__name__}: {exc}"
                with self.lock:
                    self.gets.append(got)
            self.stop.wait(self.pause)

    def wait_for(self, posts: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.posts) < posts:
            assert time.monotonic() < deadline, f"only {len(self.posts)} bookings in {timeout} s"
            time.sleep(0.05)

    def statuses(self) -> collections.Counter:
        return collections.Counter(p[2] for p in self.posts)


def _live_rows(h: Harness, title: str) -> dict[tuple[str, dt.datetime], str]:
    rows = h.rows("SELECT id, resource_id, start_at FROM booking.bookings WHERE title = :t AND status = 'confirmed'",
                  t=title)
    return {(r.resource_id, r.start_at.astimezone(dt.UTC)): r.id for r in rows}


# ---- the tests -----------------------------------------------------------------------------------


def test_concurrent_bookings_over_both_replicas_never_overlap(harness):
    h = harness
    title = f"race-{uuid.uuid4().hex[:6]}"
    contested = h.resources[:3]
    window = h.day0 + dt.timedelta(days=3, hours=8)
    results: list[int] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        rnd = random.Random(i)
        for _ in range(20):
            start = window + dt.timedelta(minutes=15 * rnd.randrange(0, 16))
            body = booking_body(rnd.choice(contested), start, minutes=15 * rnd.randrange(1, 7), title=title)
            resp = requests.post(f"{h.url}/api/v1/bookings", json=body, headers=h.auth(h.users[i % CLIENTS]),
                                 timeout=30)
            with lock:
                results.append(resp.status_code)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    counts = collections.Counter(results)
    assert set(counts) <= {201, 409}, counts
    assert counts[201] >= 3 and counts[409] > 0, counts

    overlaps = h.rows("""
        SELECT a.id, b.id FROM booking.bookings a JOIN booking.bookings b
          ON a.resource_id = b.resource_id AND a.id < b.id
         AND a.start_at < b.end_at AND b.start_at < a.end_at
         WHERE a.status IN ('confirmed', 'pending') AND b.status IN ('confirmed', 'pending')""")
    assert overlaps == []
    assert len(_live_rows(h, title)) == counts[201]

    # nginx spread them over both booking replicas.
    replicas = {h.stack.components[n].address for n in ("booking-api-1", "booking-api-2")}
    used = {r["upstream"] for r in h.gateway_records()
            if r["method"] == "POST" and r["uri"] == "/api/v1/bookings" and r["upstream"] in replicas}
    assert used == replicas


def _connection_cut(error: str) -> bool:
    return any(mark in error for mark in ("ConnectionError", "ChunkedEncodingError", "IncompleteRead",
                                          "RemoteDisconnected", "Connection aborted"))


def test_sigkill_of_a_booking_replica_and_a_notify_worker_under_load(harness):
    h = harness
    title = f"kill-{uuid.uuid4().hex[:6]}"
    try:
        with Load(h, title) as load:
            load.wait_for(40)
            h.stack.kill("booking-api-1")
            load.wait_for(len(load.posts) + 20)
            h.stack.kill("notify-consumer-1")
            load.wait_for(len(load.posts) + 60)
    finally:
        # Both come back (whatever happened above, the next tests need them).
        for name in ("booking-api-1", "notify-consumer-1"):
            if not h.stack.components[name].alive():
                h.stack.start_again(name)
    statuses = load.statuses()

    # GETs are retried by nginx on the other replica: never an error.
    assert set(load.gets) == {200}, collections.Counter(load.gets)
    # POSTs: created, or (only those in flight on the killed replica) a 502 or a connection cut
    # mid-answer, which the client must check: nginx does not retry a POST that reached an upstream.
    in_flight = {st for st in statuses if st == 502 or (isinstance(st, str) and _connection_cut(st))}
    assert set(statuses) - in_flight <= {201}, statuses
    assert sum(statuses[st] for st in in_flight) <= CLIENTS, statuses
    lost_answers = {(r, s) for r, s, status, _ in load.posts if status != 201}
    created = {(r, s): i for r, s, status, i in load.posts if status == 201}
    live = _live_rows(h, title)
    assert {live.get(k) for k in created} == set(created.values()), "a 201 booking is missing"
    assert set(live) - set(created) <= lost_answers, "a booking nobody asked for"

    # The stack goes on with everything that was written.
    state = h.settle()
    assert state["bookings"] >= len(created)


def test_rolling_restart_of_every_component_under_load_loses_nothing(harness):
    h = harness
    title = f"roll-{uuid.uuid4().hex[:6]}"
    with Load(h, title) as load:
        load.wait_for(20)
        waves = h.stack.rolling_restart()
        load.wait_for(len(load.posts) + 20)
    assert sorted(n for wave in waves for n in wave) == sorted(h.stack.components)
    assert not h.stack.unexpected_exits()
    statuses = load.statuses()
    assert set(statuses) == {201}, statuses
    assert set(load.gets) == {200}, collections.Counter(load.gets)
    live = _live_rows(h, title)
    assert set(live.values()) == {p[3] for p in load.posts}
    h.settle()


def test_the_stack_serves_the_web_app_and_the_dashboard_metrics(harness):
    """One origin: the web app's pages through nginx; and every metric the dashboard charts is exported."""
    h = harness
    resp = requests.get(f"{h.url}/login", timeout=10)
    assert resp.status_code == 200 and "text/html" in resp.headers["Content-Type"]
    problem = requests.get(f"{h.url}/api/v1/nothing-here", timeout=10)
    assert problem.status_code == 404 and problem.headers["Content-Type"] == "application/problem+json"

    from tests.deploy.test_grafana_dashboard import dashboard_metric_names

    # A labelled counter has no sample until it first counts (no event parked yet): its "# TYPE" line names it.
    families: set[str] = set()
    for component in h.stack.components.values():
        if component.kind in ("api", "relay", "consumer"):
            body = requests.get(f"http://{component.address}/metrics", timeout=10).text
            families |= {line.split()[2] for line in body.splitlines() if line.startswith("# TYPE ")}
    suffixes = re.compile(r"_(total|bucket|sum|count|created)$")
    missing = {name for name in dashboard_metric_names()
               if name not in families and suffixes.sub("", name) not in families}
    assert not missing, f"the dashboard charts metrics no labshare process exports: {sorted(missing)}"
