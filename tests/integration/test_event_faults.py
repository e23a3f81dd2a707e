"""Faults on the event path, on the machine's RabbitMQ and PostgreSQL: nothing lost, nothing applied twice.

- the broker connection cut in the middle of a burst of bookings (a TCP proxy of
  this test's own stands between the services and RabbitMQ, so the machine's
  broker keeps running for everybody else);
- a connection that goes silent without closing (half-dead TCP), found by heartbeats;
- a consumer process killed with SIGKILL while it works through a burst;
- the consumer's database gone for a few seconds (the same proxy, in front of
  PostgreSQL): the messages wait, none is parked;
- poison messages parked in the dead-letter queue after bounded retries while the
  ones behind them go on; and RabbitMQ's own bound, ``x-delivery-limit``.

Every test counts events by id at an independent pika queue bound to the exchange
and at the consumer's inbox. Each runs in well under a minute and removes its
queues, processes and database.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pika.exceptions
import pytest
from sqlalchemy import create_engine, text
from werkzeug.test import Client

from shared import metrics
from shared.config import Settings
from shared.db import psycopg_url
from shared.migrate import upgrade
from tests import eventtap, infra
from tests.conftest import _drop_queues, postgres_settings
from tests.e2e.helpers import PYTHON, Processes, clean_env, wait_until
from tests.harness import Stack, local, rfc

pytestmark = pytest.mark.integration


# -- a TCP proxy in front of RabbitMQ -------------------------------------------------------------


class BrokerProxy:
    """Forwards 127.0.0.1:<port> to RabbitMQ (or ``target``); can sever, refuse and silence connections."""

    def __init__(self, target: tuple[str, int] = (infra.AMQP_HOST, 5672)) -> None:
        self.target = target
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.accepting = True
        self.closed = False
        self.lock = threading.Lock()
        self.links: list[dict] = []  # {"sockets": (client, upstream), "silent": bool}
        self.accepted = 0
        threading.Thread(target=self._accept_loop, daemon=True, name="broker-proxy").start()

    def url(self, url: str) -> str:
        """``url`` with the target's port replaced by the proxy's."""
        return url.replace(f":{self.target[1]}/", f":{self.port}/", 1)

    def _accept_loop(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self.accepting:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _reset(client)
                continue
            link = {"sockets": (client, upstream), "silent": False}
            with self.lock:
                self.links.append(link)
                self.accepted += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(link, src, dst), daemon=True).start()

    def _pump(self, link: dict, src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                break
            if not data:
                break
            if link["silent"]:
                continue  # a half-dead connection: bytes go nowhere, nobody is told
            try:
                dst.sendall(data)
            except OSError:
                break
        self._close_link(link)

    def _close_link(self, link: dict) -> None:
        for sock in link["sockets"]:
            _reset(sock)
        with self.lock:
            if link in self.links:
                self.links.remove(link)

    def sever(self) -> int:
        """Reset every open connection; returns how many there were."""
        with self.lock:
            links = list(self.links)
        for link in links:
            self._close_link(link)
        return len(links)

    def refuse(self) -> None:
        """Reset every connection attempt until :meth:`accept`."""
        self.accepting = False

    def accept(self) -> None:
        self.accepting = True

    def silence(self) -> int:
        """Make every open connection half-dead (still open, nothing passes); new ones work."""
        with self.lock:
            for link in self.links:
                link["silent"] = True
            return len(self.links)

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        self.sever()


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    with contextlib.suppress(OSError):
        sock.close()


# -- helpers ----------------------------------------------------------------------------------------


def counter_values(counter, service: str) -> Counter:
    """A labelled counter's current values for one service, by event type."""
    out: Counter = Counter()
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels.get("service") == service:
                out[sample.labels["type"]] += int(sample.value)
    return out


def delta(after: Counter, before: Counter, prefix: str = "") -> int:
    return sum(v - before.get(k, 0) for k, v in after.items() if k.startswith(prefix))


class Sql:
    """Plain queries on a test database (each service's tables live in its own schema)."""

    def __init__(self, url: str) -> None:
        self.engine = create_engine(psycopg_url(url))

    def all(self, query: str, **params) -> list:
        with self.engine.connect() as conn:
            return list(conn.execute(text(query), params))

    def scalar(self, query: str, **params):
        with self.engine.connect() as conn:
            return conn.execute(text(query), params).scalar()

    def close(self) -> None:
        self.engine.dispose()


@pytest.fixture
def proxy() -> Iterator[BrokerProxy]:
    p = BrokerProxy()
    yield p
    p.close()


@pytest.fixture
def sql(pg_url) -> Iterator[Sql]:
    s = Sql(pg_url)
    yield s
    s.close()


@contextlib.contextmanager
def proxied_stack(pg_url: str, amqp_url: str, proxy: BrokerProxy, **overrides) -> Iterator[tuple[Stack, Settings]]:
    """The three services in this process, speaking to RabbitMQ through ``proxy``."""
    settings = postgres_settings(pg_url, proxy.url(amqp_url)).replace(health_broker_interval=0.2, **overrides)
    stack = Stack(settings)
    try:
        yield stack, settings
    finally:
        stack.close()
        _drop_queues(settings.replace(broker_url=amqp_url))


def wait(check, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def outbox_ids(sql: Sql, service: str, like: str = "%") -> list[str]:
    return [r[0] for r in sql.all(f"SELECT event_id FROM {service}.outbox WHERE type LIKE :like", like=like)]


def unpublished(sql: Sql, service: str) -> int:
    return sql.scalar(f"SELECT count(*) FROM {service}.outbox WHERE published_at IS NULL")


# -- 1. the broker connection cut in the middle of a burst ---------------------------------------


def test_broker_cut_in_a_burst_of_bookings_loses_and_repeats_nothing(rabbit_vhost, pg_url, proxy, sql):
    with proxied_stack(pg_url, rabbit_vhost, proxy) as (stack, settings):
        tap = eventtap.EventTap(rabbit_vhost, settings.exchange)
        try:
            resources = [stack.make_resource()["id"] for _ in range(2)]
            consumed_before = counter_values(metrics.EVENTS_CONSUMED, "notify")
            base = local(3, 0)
            statuses: list[int] = []

            def book_many(worker: int) -> None:
                client = Client(stack.app)  # one per thread
                headers = stack.auth(f"burst-{worker}")
                for i in range(15):
                    start = base + dt.timedelta(hours=worker * 15 + i)
                    body = {"resource_id": resources[i % 2], "start": rfc(start),
                            "end": rfc(start + dt.timedelta(minutes=30)), "title": "burst"}
                    statuses.append(client.post("/api/v1/bookings", json=body, headers=headers).status_code)
                    time.sleep(0.04)

            workers = [threading.Thread(target=book_many, args=(w,)) for w in range(4)]
            for w in workers:
                w.start()
            time.sleep(0.4)
            severed = proxy.sever()
            proxy.refuse()
            assert severed >= 5, "relays and consumers of all three services were connected through the proxy"
            # While RabbitMQ is out of reach the APIs serve, and say they are degraded.
            late = stack.post("/api/v1/resources", stack.MANAGER, {
                "lab_id": stack.make_lab()["id"], "name": "Made while the broker was away", "kind": "equipment",
                "category": "microscopy/confocal"})
            assert late.status_code == 201, late.get_json()
            health = wait(lambda: (r := stack.get("/healthz")).get_json()["status"] == "degraded" and r, 5,
                          "/healthz to say degraded")
            assert health.status_code == 200
            assert health.get_json()["services"]["booking"]["broker"] == "unreachable"
            time.sleep(2.5)
            proxy.accept()
            for w in workers:
                w.join(30)
            assert statuses.count(201) == 60, Counter(statuses)

            wait(lambda: all(unpublished(sql, s) == 0 for s in ("inventory", "booking")), 30, "the outboxes to drain")
            stack.booking_knows(late.get_json()["id"])
            booking_events = outbox_ids(sql, "booking", "booking.%")
            assert len(booking_events) == len(set(booking_events)) == 120  # created + confirmed per booking

            def notify_has_all() -> bool:
                got = sql.scalar("SELECT count(*) FROM notify.inbox WHERE event_id = ANY(:ids)", ids=booking_events)
                return got == len(booking_events)

            wait(notify_has_all, 30, "notify to receive every booking event")
            # Everything written reached the exchange, at least once, and nothing else did.
            everything = set(outbox_ids(sql, "inventory")) | set(outbox_ids(sql, "booking"))
            tap.wait_for(lambda s: everything <= {d.event["id"] for d in s}, 15, "every event at the tap")
            # Notify's own events (notification.sent) keep coming as mail goes out; this counts the others.
            seen = Counter(d.event["id"] for d in tap.drain() if d.event["source"] != "/labshare/notify")
            assert set(seen) == everything, set(seen) ^ everything
            # ... and each was applied exactly once (a redelivery is dropped as a duplicate).
            consumed_after = counter_values(metrics.EVENTS_CONSUMED, "notify")
            assert delta(consumed_after, consumed_before, "booking.") == len(booking_events)
            rows = sql.all("SELECT event_id, count(*) FROM notify.inbox GROUP BY event_id HAVING count(*) > 1")
            assert rows == []
            assert wait(lambda: stack.get("/healthz").get_json()["status"] == "ok", 10, "/healthz to be ok again")
            print(f"broker cut: {severed} connections severed, {proxy.accepted} accepted in all, "
                  f"{sum(seen.values()) - len(seen)} duplicate deliveries at the broker")
        finally:
            tap.close()


def test_events_the_broker_refuses_stay_in_the_outbox_until_it_takes_them(rabbit_vhost, pg_url, sql):
    """The relay publishes a batch and then waits for all its confirms: a nack anywhere in it keeps the
    whole batch unsent (to be published again), never marked sent."""
    settings = postgres_settings(pg_url, rabbit_vhost)
    stack = Stack(settings)
    tap = eventtap.EventTap(rabbit_vhost, settings.exchange)
    full = f"{settings.queue_prefix}.full"
    conn = eventtap.connection(rabbit_vhost)
    try:
        channel = conn.channel()
        # A queue that takes one message and then refuses (nacks) every publish routed to it.
        channel.queue_declare(queue=full, durable=True,
                              arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
        channel.queue_bind(queue=full, exchange=settings.exchange, routing_key="booking.#")
        resource = stack.make_resource()["id"]
        base = local(3, 9)
        for i in range(3):
            start = base + dt.timedelta(hours=i)
            assert stack.book("refused", resource, start, start + dt.timedelta(hours=1)).status_code == 201
        booking_events = set(outbox_ids(sql, "booking", "booking.%"))
        assert len(booking_events) == 6  # created + confirmed per booking
        time.sleep(2.0)
        # The broker confirmed the first and refused the rest: nothing after the first is marked sent.
        assert unpublished(sql, "booking") >= 5
        assert eventtap.queue_counts(rabbit_vhost, full)[0] == 1

        channel.queue_delete(queue=full)
        wait(lambda: unpublished(sql, "booking") == 0, 30, "the relay to publish the refused events")
        tap.wait_for(lambda seen: booking_events <= {d.event["id"] for d in seen}, 15, "every booking event")
    finally:
        with contextlib.suppress(Exception):
            conn.channel().queue_delete(queue=full)
        conn.close()
        tap.close()
        stack.close()
        _drop_queues(settings)


# -- 2. a half-dead connection ------------------------------------------------------------------------


def test_half_dead_connections_are_found_by_heartbeats(rabbit_vhost, pg_url, proxy, sql):
    with proxied_stack(pg_url, rabbit_vhost, proxy, broker_heartbeat=2, publish_timeout=3.0) as (stack, _settings):
        first = stack.make_resource()
        silenced = proxy.silence()
        assert silenced >= 5
        started = time.monotonic()
        # Without heartbeats the consumers would wait on the silent sockets forever.
        second = stack.post("/api/v1/resources", stack.MANAGER, {
            "lab_id": first["lab_id"], "name": "After the silence", "kind": "equipment",
            "category": "microscopy/confocal"})
        assert second.status_code == 201
        wait(lambda: stack.get(f"/api/v1/availability?resource_id={second.get_json()['id']}", "probe").status_code
             == 200, 25, "booking to learn the resource over a new connection")
        took = time.monotonic() - started
        assert took < 20, took
        assert unpublished(sql, "inventory") == 0
        print(f"half-dead connections replaced after {took:.1f}s")


# -- 3. a consumer killed mid-batch -------------------------------------------------------------------


def _inventory_events(count: int) -> tuple[list[tuple[str, bytes]], list[str], list[str]]:
    """A lab and ``count`` resources of it, as inventory would publish them."""
    lab_id = str(uuid.uuid4())
    trace = uuid.uuid4().hex
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def event(type_: str, data: dict) -> dict:
        return {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "/labshare/inventory", "type": type_,
                "time": stamp, "datacontenttype": "application/json", "subject": data["id"],
                "traceparent": f"00-{trace}-{uuid.uuid4().hex[:16]}-01", "data": data}

    events = [event("lab.created", {"id": lab_id, "name": "Burst lab", "org": "ntnu", "timezone": "Europe/Oslo",
                                    "managers": [], "version": 1})]
    resource_ids = []
    for i in range(count):
        rid = str(uuid.uuid4())
        resource_ids.append(rid)
        events.append(event("resource.created", {
            "id": rid, "lab_id": lab_id, "name": f"Bench {i}", "kind": "equipment", "category": "wetlab/bench",
            "status": "active", "policy": {}, "rates": {}, "version": 1}))
    messages = [(e["type"], json.dumps(e).encode()) for e in events]
    return messages, [e["id"] for e in events], resource_ids


def _booking_consumer_env(pg_url: str, amqp_url: str, settings: Settings) -> dict[str, str]:
    return clean_env(LABSHARE_DATABASE_URL=pg_url, LABSHARE_BROKER_URL=amqp_url,
                     LABSHARE_EXCHANGE=settings.exchange, LABSHARE_QUEUE_PREFIX=settings.queue_prefix)


def _wait_for_consumer(amqp_url: str, queue: str, procs: Processes) -> None:
    def attached() -> bool:
        try:
            return eventtap.queue_counts(amqp_url, queue)[1] >= 1
        except pika.exceptions.ChannelClosedByBroker:
            return False  # not declared yet

    wait_until(attached, 30, f"a consumer on {queue}", procs)


def test_consumer_killed_mid_batch_applies_every_event_once(rabbit_vhost, pg_url, sql, tmp_path):
    tag = uuid.uuid4().hex[:8]
    settings = Settings(database_url=pg_url, broker_url=rabbit_vhost, exchange=f"labshare.events.{tag}",
                        queue_prefix=f"kill{tag}")
    upgrade("booking", settings)
    queue = f"{settings.queue_prefix}.booking"
    env = _booking_consumer_env(pg_url, rabbit_vhost, settings)
    procs = Processes(tmp_path / "logs")
    try:
        first = procs.start("booking-consumer", [PYTHON, "-m", "services.booking", "consume"], env)
        _wait_for_consumer(rabbit_vhost, queue, procs)
        messages, event_ids, resource_ids = _inventory_events(800)
        eventtap.publish(rabbit_vhost, settings.exchange, messages)

        applied = lambda: sql.scalar("SELECT count(*) FROM booking.inbox")  # noqa: E731
        wait_until(lambda: applied() >= 40, 30, "the consumer to start on the burst", procs)
        first.popen.send_signal(signal.SIGKILL)
        first.expected_exit = True
        first.popen.wait(10)
        at_kill = applied()
        assert 0 < at_kill < len(event_ids), f"killed with {at_kill} of {len(event_ids)} applied: not mid-batch"

        second = procs.start("booking-consumer-2", [PYTHON, "-m", "services.booking", "consume"], env)
        wait_until(lambda: applied() == len(event_ids), 40, "the restarted consumer to apply the rest", procs)
        time.sleep(0.3)  # anything redelivered twice would show up now

        inbox = sql.all("SELECT event_id FROM booking.inbox")
        assert sorted(r[0] for r in inbox) == sorted(event_ids)
        views = sql.all("SELECT id FROM booking.resource_views")
        assert sorted(r[0] for r in views) == sorted(resource_ids)
        wait_until(lambda: eventtap.queue_counts(rabbit_vhost, queue)[0] == 0, 10, "the queue to be empty", procs)
        assert eventtap.queue_counts(rabbit_vhost, f"{queue}.dead")[0] == 0, "nothing may hit the delivery limit"
        # The consumer logs, as JSON, the traceparent of each event it handles.
        lines = [json.loads(line) for line in second.stderr().splitlines() if line.startswith("{")]
        handled = [line for line in lines if line.get("event_id") in set(event_ids)]
        assert handled and all(line["event_traceparent"].startswith("00-") for line in handled)
        trace_id = json.loads(messages[0][1])["traceparent"].split("-")[1]
        assert {line["trace_id"] for line in handled} == {trace_id}, "the handling continues the event's trace"
        print(f"SIGKILL after {at_kill} of {len(event_ids)} events; the restarted consumer applied the rest once")
    finally:
        procs.stop_all()
        _drop_queues(settings)


# -- 4. the consumer's database away ------------------------------------------------------------------


def test_a_database_outage_parks_nothing(rabbit_vhost, pg_url, sql):
    from services.booking.app import build_runtime

    assert ":5432/" in pg_url
    db_proxy = BrokerProxy(target=("127.0.0.1", 5432))
    tag = uuid.uuid4().hex[:8]
    settings = Settings(database_url=pg_url, broker_url=rabbit_vhost, exchange=f"labshare.events.{tag}",
                        queue_prefix=f"dbout{tag}")
    upgrade("booking", settings)
    runtime = build_runtime(settings.replace(database_url=db_proxy.url(pg_url)))
    stop = threading.Event()
    thread = threading.Thread(target=runtime.consumer.run, args=(stop,), daemon=True)
    thread.start()
    queue = f"{settings.queue_prefix}.booking"
    applied = lambda: sql.scalar("SELECT count(*) FROM booking.inbox")  # noqa: E731
    try:
        wait(lambda: runtime.consumer.connected, 15, "the consumer to connect")
        messages, event_ids, resource_ids = _inventory_events(40)
        eventtap.publish(rabbit_vhost, settings.exchange, messages[:11])
        wait(lambda: applied() == 11, 15, "the first events to be applied")
        db_proxy.sever()
        db_proxy.refuse()
        eventtap.publish(rabbit_vhost, settings.exchange, messages[11:13])
        # Longer than all the retries of two failing messages would take (2 x 1.55 s of pauses).
        time.sleep(5)
        assert applied() == 11
        assert eventtap.queue_counts(rabbit_vhost, f"{queue}.dead")[0] == 0, "an outage is not a poison message"
        db_proxy.accept()
        eventtap.publish(rabbit_vhost, settings.exchange, messages[13:])
        wait(lambda: applied() == len(event_ids), 30, "the rest once the database is back")
        assert sorted(r[0] for r in sql.all("SELECT event_id FROM booking.inbox")) == sorted(event_ids)
        assert sorted(r[0] for r in sql.all("SELECT id FROM booking.resource_views")) == sorted(resource_ids)
        assert eventtap.queue_counts(rabbit_vhost, f"{queue}.dead")[0] == 0
    finally:
        stop.set()
        db_proxy.accept()
        thread.join(20)
        runtime.db.dispose()
        db_proxy.close()
        _drop_queues(settings)


# -- 5. poison messages and the delivery limit --------------------------------------------------------


def test_poison_messages_are_parked_and_the_rest_go_on(rabbit_vhost, pg_url, sql):
    from services.booking.app import build_runtime

    tag = uuid.uuid4().hex[:8]
    settings = Settings(database_url=pg_url, broker_url=rabbit_vhost, exchange=f"labshare.events.{tag}",
                        queue_prefix=f"poison{tag}")
    upgrade("booking", settings)
    runtime = build_runtime(settings)
    stop = threading.Event()
    thread = threading.Thread(target=runtime.consumer.run, args=(stop,), daemon=True)
    thread.start()
    queue = f"{settings.queue_prefix}.booking"
    parked_before = counter_values(metrics.EVENTS_PARKED, "booking")
    retried_before = counter_values(metrics.EVENTS_RETRIED, "booking")
    try:
        wait(lambda: runtime.consumer.connected, 15, "the consumer to connect")
        good, good_ids, resource_ids = _inventory_events(30)
        broken = json.loads(good[1][1])
        broken["id"], broken["data"] = str(uuid.uuid4()), {"id": str(uuid.uuid4())}  # the handler raises KeyError
        messages = [*good[:11], ("resource.created", b'{"specversion": "1.0", not json'), *good[11:21],
                    ("resource.created", json.dumps(broken).encode()), *good[21:]]
        eventtap.publish(rabbit_vhost, settings.exchange, messages)

        def settled() -> bool:
            done = sql.scalar("SELECT count(*) FROM booking.inbox") == len(good_ids)
            return done and eventtap.queue_counts(rabbit_vhost, f"{queue}.dead")[0] == 2

        wait(settled, 30, "every good event applied and both poison messages parked")
        parked = eventtap.read_queue(rabbit_vhost, f"{queue}.dead")
        assert len(parked) == 2
        not_json, raising = sorted(parked, key=lambda d: d.body.startswith(b"{\"specversion\": \"1.0\", not"),
                                   reverse=True)
        assert not_json.body == b'{"specversion": "1.0", not json'
        assert "not JSON" in not_json.headers["x-labshare-error"]
        assert raising.event["id"] == broken["id"]
        assert raising.headers["x-labshare-retries"] == settings.consumer_max_retries
        assert "KeyError" in raising.headers["x-labshare-error"]
        assert sorted(r[0] for r in sql.all("SELECT event_id FROM booking.inbox")) == sorted(good_ids)
        assert sorted(r[0] for r in sql.all("SELECT id FROM booking.resource_views")) == sorted(resource_ids)
        assert eventtap.queue_counts(rabbit_vhost, queue)[0] == 0
        assert delta(counter_values(metrics.EVENTS_PARKED, "booking"), parked_before) == 2
        assert delta(counter_values(metrics.EVENTS_RETRIED, "booking"), retried_before) == \
            settings.consumer_max_retries
    finally:
        stop.set()
        thread.join(15)
        runtime.db.dispose()
        _drop_queues(settings)


def test_a_message_never_acked_is_dead_lettered_at_the_delivery_limit(rabbit_vhost):
    """The broker's own bound, for a message that kills every consumer before it can ack."""
    from kombu import Connection

    from shared.messaging import declare_topology

    tag = uuid.uuid4().hex[:8]
    settings = Settings(broker_url=rabbit_vhost, exchange=f"labshare.events.{tag}", queue_prefix=f"limit{tag}")
    with Connection(rabbit_vhost) as conn:
        declare_topology(settings, conn.channel())
    queue = f"{settings.queue_prefix}.booking"
    try:
        eventtap.publish(rabbit_vhost, settings.exchange, [("lab.created", b'{"id": "crashes-everyone"}')])
        conn = eventtap.connection(rabbit_vhost)
        channel = conn.channel()
        deliveries = 0
        for _ in range(30):
            method, _props, _body = channel.basic_get(queue=queue, auto_ack=False)
            if method is None:
                break
            deliveries += 1
            channel.basic_nack(method.delivery_tag, requeue=True)
        conn.close()
        parked = eventtap.read_queue(rabbit_vhost, f"{queue}.dead")
        assert [d.body for d in parked] == [b'{"id": "crashes-everyone"}']
        assert 20 <= deliveries <= 21, deliveries
    finally:
        _drop_queues(settings)
