"""Messaging with kombu: the topology, the outbox relay and the inbox consumer.

Topology (declared by every relay and consumer, so no event is published
before the queues that must receive it exist):

- ``labshare.events``: durable topic exchange, routing key = event type;
- ``<prefix>.<service>``: one durable queue per consuming service (quorum on
  RabbitMQ, classic on the in-process broker), bound to the event types the
  service needs;
- ``labshare.dead`` and ``<prefix>.<service>.dead``: where a message that keeps
  failing is parked instead of blocking the ones behind it.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from kombu import Connection, Consumer, Exchange, Producer, Queue, binding
from kombu.message import Message
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from shared.config import Settings
from shared.db import Database
from shared.events import CONTENT_TYPE
from shared.outbox import remember
from shared.timeutil import now

log = logging.getLogger(__name__)

#: The event types each consuming service listens to.
SUBSCRIPTIONS: dict[str, tuple[str, ...]] = {
    "booking": ("lab.*", "resource.*", "outage.*", "qualification.*"),
    "notify": ("booking.*", "waitlist.*", "lab.*", "resource.*", "outage.*"),
}

DEAD_EXCHANGE = "labshare.dead"
RETRY_HEADER = "x-labshare-retries"

EventHandler = Callable[[Session, dict[str, Any]], None]


def connect(settings: Settings) -> Connection:
    """A kombu connection: publisher confirms on RabbitMQ, fast polling in-process."""
    if settings.broker_is_memory:
        return Connection(settings.broker_url, transport_options={"polling_interval": 0.02})
    return Connection(
        settings.broker_url,
        heartbeat=30,
        connect_timeout=5,
        transport_options={"confirm_publish": True},
    )


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
    relays can run side by side; on SQLite the write lock serialises them.
    """

    def __init__(self, settings: Settings, db: Database, outbox) -> None:
        self.settings = settings
        self.db = db
        self.outbox = outbox
        self.wake = threading.Event()
        self.connected = False
        self.published = 0

    def publish_batch(self, producer: Producer) -> int:
        """Publish one batch of unsent events; returns how many were sent."""
        t = self.outbox
        stmt = select(t.c.id, t.c.type, t.c.payload).where(t.c.published_at.is_(None)).order_by(t.c.id)
        stmt = stmt.limit(self.settings.relay_batch)
        if not self.db.is_sqlite:
            stmt = stmt.with_for_update(skip_locked=True)
        exchange = events_exchange(self.settings)
        with self.db.begin() as session:
            rows = session.execute(stmt).all()
            for row in rows:
                producer.publish(
                    row.payload,
                    exchange=exchange,
                    routing_key=row.type,
                    content_type=CONTENT_TYPE,
                    content_encoding="utf-8",
                    delivery_mode=2,
                    retry=False,
                )
            if rows:
                session.execute(
                    update(t).where(t.c.id.in_([r.id for r in rows])).values(published_at=now())
                )
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
                with connect(self.settings) as conn:
                    conn.ensure_connection(max_retries=1)
                    channel = conn.channel()
                    declare_topology(self.settings, channel)
                    producer = Producer(channel)
                    self.connected = True
                    delay = 0.5
                    while not stop.is_set():
                        if self.publish_batch(producer) >= self.settings.relay_batch:
                            continue
                        self.wake.wait(self.settings.relay_interval)
                        self.wake.clear()
            except Exception as exc:  # broker or database away: back off, then retry
                self.connected = False
                log.warning("relay: %s; retrying in %.1fs", exc, delay)
                stop.wait(delay + random.random() * delay / 2)
                delay = min(delay * 2, 15.0)
        self.connected = False


class EventConsumer:
    """Consumes one service's queue: inbox check, handler and commit, then ack.

    A handler that raises is retried a few times; then the message is parked in
    the service's dead-letter queue and the ones behind it go on.
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
            if not isinstance(event, dict) or "id" not in event:
                raise ValueError("not a CloudEvent")
            self.handle(event)
            self.processed += 1
            message.ack()
        except Exception as exc:
            self._retry_or_park(message, exc)

    def _retry_or_park(self, message: Message, exc: Exception) -> None:
        retries = int((message.headers or {}).get(RETRY_HEADER, 0))
        queue = f"{self.settings.queue_prefix}.{self.service}"
        assert self._producer is not None
        if retries < self.settings.consumer_max_retries:
            log.warning("%s: event failed (%s), retry %d", self.service, exc, retries + 1)
            time.sleep(min(0.05 * 2**retries, 2.0))
            self._producer.publish(
                message.body,
                exchange="",
                routing_key=queue,
                headers={**(message.headers or {}), RETRY_HEADER: retries + 1},
                content_type=message.content_type,
                content_encoding=message.content_encoding,
                delivery_mode=2,
            )
        else:
            log.error("%s: event parked in the dead-letter queue after %d tries: %s", self.service, retries, exc)
            self._producer.publish(
                message.body,
                exchange=dead_exchange(),
                routing_key=queue,
                headers={**(message.headers or {}), "x-labshare-error": str(exc)[:500]},
                content_type=message.content_type,
                content_encoding=message.content_encoding,
                delivery_mode=2,
            )
        message.ack()

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
                        self.connected = True
                        delay = 0.5
                        while not stop.is_set():
                            try:
                                conn.drain_events(timeout=0.5)
                            except TimeoutError:
                                if not self.settings.broker_is_memory:
                                    conn.heartbeat_check()
            except Exception as exc:
                self.connected = False
                log.warning("%s consumer: %s; retrying in %.1fs", self.service, exc, delay)
                stop.wait(delay + random.random() * delay / 2)
                delay = min(delay * 2, 15.0)
        self.connected = False


__all__ = [
    "EventConsumer",
    "Relay",
    "SUBSCRIPTIONS",
    "connect",
    "declare_topology",
]
