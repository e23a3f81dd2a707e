"""Messaging with kombu: the topology, the outbox relay and the inbox consumer.

Topology (declared by every relay and consumer, so no event is published
before the queues that must receive it exist; ``deploy/rabbitmq/definitions.json``
declares the same, and a test keeps the two equal):

- ``labshare.events``: durable topic exchange, routing key = event type;
- ``<prefix>.<service>``: one durable queue per consuming service (quorum on
  RabbitMQ, classic on the in-process broker), bound to the event types the
  service needs. On RabbitMQ it dead-letters to ``labshare.dead`` once a message
  was delivered ``x-delivery-limit`` (20) times without an ack: the bound for a
  message that kills its consumer before it can ack;
- ``labshare.dead`` and ``<prefix>.<service>.dead``: where a message that keeps
  failing is parked instead of blocking the ones behind it; the consumer parks
  there itself after ``Settings.consumer_max_retries`` failed tries, counted in
  the ``x-labshare-retries`` header of the copy it puts back on its queue.

Prefetch (``Settings.consumer_prefetch``, 20): a consumer handles one message at
a time, each in a database transaction of a few milliseconds, so the prefetch
only has to cover the round trip to the broker for the next message to be
there when the previous one is acked; a handful would do on one host, 20 leaves
room for a broker some milliseconds away and for bursts. More buys no speed and
costs: every unacked message comes back (and counts towards the delivery limit)
when a consumer dies, and with several replicas on one queue a large prefetch
lets one of them sit on a burst the others could share.

Publisher confirms stay on for every publish: the relay marks an event sent only
once RabbitMQ confirmed it. It publishes a whole batch and then waits once for
the confirms of all of it (``BatchConfirms``), so the broker writes and syncs a
batch together instead of one message per round trip (measured on one host:
RabbitMQ's CPU per persistent message into a quorum and a classic queue fell
from ~700 to ~150 us). Consumers' republishes (retries, parking) are rare and
wait for each confirm. Each publish and confirm wait is bounded by
``Settings.publish_timeout``, and heartbeats (``Settings.broker_heartbeat``)
make a half-dead connection fail fast; relays and consumers then reconnect with
a growing, jittered pause (0.5 s to 15 s).
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from amqp.exceptions import MessageNacked
from kombu import Connection, Consumer, Exchange, Producer, Queue, binding
from kombu.message import Message
from sqlalchemy import BigInteger, any_, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from shared import tracing
from shared.config import Settings
from shared.db import Database, execute_direct
from shared.events import CONTENT_TYPE
from shared.metrics import (
    EVENT_LAG,
    EVENTS_CONSUMED,
    EVENTS_DUPLICATE,
    EVENTS_PARKED,
    EVENTS_PUBLISHED,
    EVENTS_RETRIED,
    event_type_label,
)
from shared.outbox import remember
from shared.timeutil import now, parse_rfc3339

log = logging.getLogger(__name__)

#: The event types each consuming service listens to.
SUBSCRIPTIONS: dict[str, tuple[str, ...]] = {
    "booking": ("lab.*", "resource.*", "outage.*", "qualification.*"),
    "notify": ("booking.*", "waitlist.*", "lab.*", "resource.*", "outage.*"),
}

DEAD_EXCHANGE = "labshare.dead"
RETRY_HEADER = "x-labshare-retries"

EventHandler = Callable[[Session, dict[str, Any]], None]


def connect(settings: Settings, confirm_each: bool = True) -> Connection:
    """A kombu connection: publisher confirms and heartbeats on RabbitMQ, fast polling in-process.

    With ``confirm_each`` every publish waits for its confirm; without it the
    caller confirms batches itself (``BatchConfirms``).

    The heartbeat makes a half-dead TCP connection (the broker's host gone, a
    firewall dropping the flow) fail within about twice its interval instead of
    hanging; the socket timeouts do the same for a write the broker stopped reading
    and for a reply that never comes.
    """
    if settings.broker_is_memory:
        return Connection(settings.broker_url, transport_options={"polling_interval": 0.02})
    return Connection(
        settings.broker_url,
        heartbeat=settings.broker_heartbeat,
        connect_timeout=5,
        transport_options={
            "confirm_publish": confirm_each,
            "write_timeout": settings.publish_timeout,
            # bounds waits that have no timeout of their own (a close-ok from a vanished broker)
            "read_timeout": settings.publish_timeout,
        },
    )


def publish_options(settings: Settings) -> dict[str, float]:
    """Timeouts for one publish: the write, and the wait for the broker's confirm."""
    if settings.broker_is_memory:
        return {}
    return {"timeout": settings.publish_timeout, "confirm_timeout": settings.publish_timeout}


class BatchConfirms:
    """Publisher confirms for a batch at a time: publish many, then ``wait`` once for all of them.

    The channel is put in confirm mode; RabbitMQ numbers the messages published
    on it from 1 and acks (or nacks) them, one or several up to a number at a
    time, in any order. ``wait`` returns when every message published since the
    last ``wait`` was acked, raises ``MessageNacked`` if the broker refused any,
    and a timeout error if the confirms do not come within ``timeout``. On the
    in-process broker there is nothing to confirm.
    """

    def __init__(self, conn: Connection, channel, settings: Settings) -> None:
        self.conn = conn
        self.active = not settings.broker_is_memory
        self.timeout = settings.publish_timeout
        self.sent = 0
        self.outstanding: set[int] = set()
        self.nacked = 0
        if self.active:
            channel.confirm_select()
            channel.events["basic_ack"].add(self._ack)
            channel.events["basic_nack"].add(self._nack)

    def published(self) -> None:
        """Count one message just published on the channel."""
        self.sent += 1
        if self.active:
            self.outstanding.add(self.sent)

    def _ack(self, tag: int, multiple: bool) -> None:
        if multiple:
            self.outstanding = {t for t in self.outstanding if t > tag}
        else:
            self.outstanding.discard(tag)

    def _nack(self, tag: int, multiple: bool) -> None:
        before = len(self.outstanding)
        self._ack(tag, multiple)
        self.nacked += before - len(self.outstanding)

    def wait(self) -> None:
        """Until the broker confirmed everything published so far."""
        deadline = time.monotonic() + self.timeout
        while self.outstanding:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{len(self.outstanding)} publisher confirms did not come in {self.timeout} s")
            self.conn.drain_events(timeout=remaining)
        if self.nacked:
            nacked, self.nacked = self.nacked, 0
            raise MessageNacked(f"the broker refused {nacked} of the batch")


class _Keepalive:
    """Reads the broker's heartbeats on an otherwise idle connection and sends our own.

    ``heartbeat_check`` raises when nothing came from the broker for two heartbeat
    intervals; a connection that only publishes must read the broker's heartbeat
    frames itself, or a healthy connection would look dead.
    """

    def __init__(self, conn: Connection, settings: Settings, read: bool) -> None:
        self.conn = conn
        self.active = not settings.broker_is_memory and settings.broker_heartbeat > 0
        self.read = read
        self.interval = max(0.2, settings.broker_heartbeat / 4)
        self.last = time.monotonic()

    def tick(self) -> None:
        """Call often; does its work at most every quarter heartbeat."""
        if not self.active or time.monotonic() - self.last < self.interval:
            return
        self.last = time.monotonic()
        if self.read:
            with contextlib.suppress(socket.timeout):
                self.conn.drain_events(timeout=0.01)
        self.conn.heartbeat_check()


def events_exchange(settings: Settings) -> Exchange:
    """The durable topic exchange all events go through."""
    return Exchange(settings.exchange, type="topic", durable=True)


def dead_exchange() -> Exchange:
    """Where poison messages are parked."""
    return Exchange(DEAD_EXCHANGE, type="direct", durable=True)


def service_queue(settings: Settings, service: str) -> Queue:
    """The queue of one consuming service, with its bindings."""
    exchange = events_exchange(settings)
    name = f"{settings.queue_prefix}.{service}"
    arguments: dict[str, Any] = {}
    if not settings.broker_is_memory:
        arguments = {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": DEAD_EXCHANGE,
            "x-dead-letter-routing-key": name,
            "x-delivery-limit": 20,
        }
    return Queue(
        name,
        bindings=[binding(exchange, routing_key=key) for key in SUBSCRIPTIONS[service]],
        durable=True,
        queue_arguments=arguments,
    )


def dead_queue(settings: Settings, service: str) -> Queue:
    """The dead-letter queue of one consuming service."""
    name = f"{settings.queue_prefix}.{service}"
    return Queue(f"{name}.dead", exchange=dead_exchange(), routing_key=name, durable=True)


def declare_topology(settings: Settings, channel) -> None:
    """Declare the exchange, every service queue and every dead-letter queue (idempotent)."""
    events_exchange(settings)(channel).declare()
    dead_exchange()(channel).declare()
    for service in SUBSCRIPTIONS:
        service_queue(settings, service)(channel).declare()
        dead_queue(settings, service)(channel).declare()


class Relay:
    """Publishes a service's outbox with publisher confirms, then marks the rows sent.

    On PostgreSQL each batch is claimed with ``FOR UPDATE SKIP LOCKED`` so several
    relays can run side by side; on SQLite the write lock serialises them. When the
    broker goes away mid-batch the transaction rolls back and the whole batch is
    published again after reconnecting: the broker may see an event twice (the
    consumers' inboxes drop the second), never zero times.
    """

    def __init__(self, settings: Settings, db: Database, outbox, service: str = "") -> None:
        self.settings = settings
        self.db = db
        self.outbox = outbox
        self.service = service
        self.wake = threading.Event()
        self.connected = False
        self.published = 0
        # Built once, so a poll (several a second, most of them finding nothing) costs one prepared
        # statement, not a statement built and looked up in SQLAlchemy's cache.
        t = outbox
        claim = select(t.c.id, t.c.type, t.c.payload).where(t.c.published_at.is_(None)).order_by(t.c.id)
        claim = claim.limit(settings.relay_batch)
        self._claim = claim if db.is_sqlite else claim.with_for_update(skip_locked=True)
        self._mark = (
            update(t).where(t.c.id.in_(bindparam("ids", expanding=True))).values(published_at=bindparam("at"))
            if db.is_sqlite else
            update(t).where(t.c.id == any_(bindparam("ids", type_=ARRAY(BigInteger)))).values(
                published_at=bindparam("at"))
        )

    def publish_batch(self, producer: Producer, confirms: BatchConfirms) -> int:
        """Publish one batch of unsent events, wait for the broker's confirms of all of them, then mark
        them sent; returns how many were sent."""
        exchange = events_exchange(self.settings)
        options = publish_options(self.settings)  # the confirm wait itself is BatchConfirms.wait's
        with self.db.begin() as session:
            rows = execute_direct(session, self._claim, {})
            for row in rows:
                producer.publish(
                    row.payload,
                    exchange=exchange,
                    routing_key=row.type,
                    content_type=CONTENT_TYPE,
                    content_encoding="utf-8",
                    delivery_mode=2,
                    retry=False,
                    **options,
                )
                confirms.published()
            confirms.wait()
            if rows:
                execute_direct(session, self._mark, {"ids": [r.id for r in rows], "at": now()})
        for row in rows:
            EVENTS_PUBLISHED.labels(self.service, row.type).inc()
        self.published += len(rows)
        return len(rows)

    def backlog(self) -> int:
        """How many events wait to be published."""
        with self.db.read() as session:
            return session.execute(
                select(func.count()).select_from(self.outbox).where(self.outbox.c.published_at.is_(None))
            ).scalar_one()

    def run(self, stop: threading.Event) -> None:
        """Publish until ``stop`` is set, reconnecting with backoff when the broker goes away."""
        delay = 0.5
        while not stop.is_set():
            try:
                with connect(self.settings, confirm_each=False) as conn:
                    conn.ensure_connection(max_retries=1)
                    channel = conn.channel()
                    declare_topology(self.settings, channel)
                    producer = Producer(channel)
                    confirms = BatchConfirms(conn, channel, self.settings)
                    keepalive = _Keepalive(conn, self.settings, read=True)
                    if delay > 0.5:
                        log.info("%s relay: connected to the broker again", self.service)
                    self.connected = True
                    delay = 0.5
                    while not stop.is_set():
                        sent = self.publish_batch(producer, confirms)
                        if sent >= self.settings.relay_batch:
                            continue
                        self.wake.wait(self.settings.relay_busy_interval if sent else self.settings.relay_interval)
                        self.wake.clear()
                        keepalive.tick()
            except Exception as exc:  # broker or database away: back off, then retry
                self.connected = False
                log.warning("%s relay: %s: %s; retrying in %.1fs", self.service, type(exc).__name__, exc, delay)
                stop.wait(delay + random.random() * delay / 2)
                delay = min(delay * 2, 15.0)
        self.connected = False


class DatabaseUnavailable(Exception):
    """The consumer's database stopped answering while it handled a message."""


def _database_down(exc: BaseException, db: Database) -> bool:
    """Whether ``exc`` came from losing the database (not from the event): then it must not count as a try."""
    if not isinstance(exc, (OperationalError, InterfaceError)) and not (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    ):
        return False
    return not db.ping()


class EventConsumer:
    """Consumes one service's queue: inbox check, handler and commit, then ack.

    Bounded redelivery, twice over:

    - a handler that raises is retried ``Settings.consumer_max_retries`` times
      (the message goes back to the end of the queue with the retry count in the
      ``x-labshare-retries`` header, after a short growing pause), then parked in
      the service's dead-letter queue; a message that is not a CloudEvent at all
      is parked at once. Either way the ones behind it go on.
    - a message that kills the consumer process before it can ack comes back each
      time; RabbitMQ counts those deliveries and dead-letters it after
      ``x-delivery-limit`` (quorum queues).

    When the *database* goes away the message is not the culprit: it is left
    unacknowledged, the consumer disconnects (so RabbitMQ keeps the message for
    the next one) and connects again once the database answers.
    """

    def __init__(
        self,
        settings: Settings,
        service: str,
        db: Database,
        inbox,
        handlers: dict[str, EventHandler],
        after_commit: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.service = service
        self.db = db
        self.inbox = inbox
        self.handlers = handlers
        self.after_commit = after_commit
        self.connected = False
        self.processed = 0
        self._producer: Producer | None = None

    @property
    def queue_name(self) -> str:
        """The service's queue."""
        return f"{self.settings.queue_prefix}.{self.service}"

    def handle(self, event: dict[str, Any]) -> bool:
        """Apply one event exactly once; False when it was a duplicate."""
        handler = self.handlers.get(event.get("type", ""))
        with self.db.begin() as session:
            if not remember(session, self.inbox, event):
                return False
            if handler is not None:
                handler(session, event)
        if self.after_commit:
            self.after_commit()
        return True

    def _on_message(self, message: Message) -> None:
        try:
            event = json.loads(message.body)
        except ValueError as exc:
            self._park(message, {}, f"not JSON: {exc}")
            return
        if not isinstance(event, dict) or not isinstance(event.get("id"), str) or not event["id"]:
            self._park(message, event, "not a CloudEvent (no id)")
            return
        kind = event_type_label(event)
        with tracing.active(tracing.for_event(event)):
            extra = {"event_id": event["id"], "event_type": kind, "event_source": event.get("source"),
                     "event_traceparent": event.get("traceparent")}
            try:
                applied = self.handle(event)
            except Exception as exc:
                if _database_down(exc, self.db):
                    raise DatabaseUnavailable(str(exc)) from exc
                self._retry_or_park(message, event, exc)
                return
            # Counted once committed: if the ack is lost now, the redelivery counts as a duplicate.
            if applied:
                self.processed += 1
                EVENTS_CONSUMED.labels(self.service, kind).inc()
                lag = _lag(event)
                if lag is not None:
                    EVENT_LAG.labels(self.service, kind).observe(lag)
                log.info("%s: handled %s %s", self.service, kind, event["id"], extra=extra)
            else:
                EVENTS_DUPLICATE.labels(self.service, kind).inc()
                log.info("%s: dropped %s %s, already handled", self.service, kind, event["id"], extra=extra)
            message.ack()

    def _retry_or_park(self, message: Message, event: dict[str, Any], exc: Exception) -> None:
        retries = int((message.headers or {}).get(RETRY_HEADER, 0))
        if retries >= self.settings.consumer_max_retries:
            self._park(message, event, f"{type(exc).__name__}: {exc}", retries)
            return
        kind = event_type_label(event)
        log.warning("%s: %s %s failed (%s: %s), retry %d", self.service, kind, event.get("id"),
                    type(exc).__name__, exc, retries + 1, extra={"event_id": event.get("id"), "event_type": kind})
        time.sleep(min(0.05 * 2**retries, 2.0))
        self._republish(message, exchange="", headers={RETRY_HEADER: retries + 1})
        EVENTS_RETRIED.labels(self.service, kind).inc()
        message.ack()

    def _park(self, message: Message, event: dict[str, Any], reason: str, tries: int = 0) -> None:
        kind = event_type_label(event)
        log.error("%s: message parked in the dead-letter queue after %d tries: %s", self.service, tries, reason,
                  extra={"event_id": event.get("id"), "event_type": kind})
        self._republish(message, exchange=dead_exchange(), headers={"x-labshare-error": reason[:500]})
        EVENTS_PARKED.labels(self.service, kind).inc()
        message.ack()

    def _republish(self, message: Message, exchange, headers: dict[str, Any]) -> None:
        assert self._producer is not None
        self._producer.publish(
            message.body,
            exchange=exchange,
            routing_key=self.queue_name,
            headers={**(message.headers or {}), **headers},
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            delivery_mode=2,
            retry=False,
            **publish_options(self.settings),
        )

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set, reconnecting with backoff."""
        delay = 0.5
        while not stop.is_set():
            try:
                with connect(self.settings) as conn:
                    conn.ensure_connection(max_retries=1)
                    channel = conn.channel()
                    declare_topology(self.settings, channel)
                    self._producer = Producer(conn.channel())
                    queue = service_queue(self.settings, self.service)
                    with Consumer(
                        channel,
                        queues=[queue],
                        on_message=self._on_message,
                        prefetch_count=self.settings.consumer_prefetch,
                    ):
                        if delay > 0.5:
                            log.info("%s consumer: connected to the broker again", self.service)
                        self.connected = True
                        delay = 0.5
                        keepalive = _Keepalive(conn, self.settings, read=False)
                        while not stop.is_set():
                            with contextlib.suppress(socket.timeout):
                                conn.drain_events(timeout=0.5)
                            keepalive.tick()
            except DatabaseUnavailable as exc:
                self.connected = False
                log.warning("%s consumer: the database is away (%s); waiting for it", self.service, exc)
                self._wait_for_database(stop)
            except Exception as exc:
                self.connected = False
                log.warning("%s consumer: %s: %s; retrying in %.1fs", self.service, type(exc).__name__, exc, delay)
                stop.wait(delay + random.random() * delay / 2)
                delay = min(delay * 2, 15.0)
        self.connected = False

    def _wait_for_database(self, stop: threading.Event) -> None:
        delay = 0.5
        while not stop.is_set() and not self.db.ping():
            stop.wait(delay)
            delay = min(delay * 2, 15.0)


def _lag(event: dict[str, Any]) -> float | None:
    """Seconds from the event's ``time`` to now."""
    try:
        return max(0.0, (now() - parse_rfc3339(str(event["time"]))).total_seconds())
    except (KeyError, ValueError):
        return None


__all__ = [
    "BatchConfirms",
    "EventConsumer",
    "Relay",
    "SUBSCRIPTIONS",
    "connect",
    "declare_topology",
]
