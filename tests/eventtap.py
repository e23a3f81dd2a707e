"""An independent look at the broker for tests: pika (not kombu, which the services use).

``EventTap`` binds a queue of its own to the events exchange and keeps everything
published there; ``read_queue`` empties any queue (a dead-letter queue, say);
``publish`` puts raw messages on the exchange as another service would.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import pika
from pika.spec import BasicProperties


@dataclass
class Delivered:
    """One message as the broker delivered it."""

    routing_key: str
    exchange: str
    properties: BasicProperties
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)

    @property
    def headers(self) -> dict[str, Any]:
        return dict(self.properties.headers or {})


def connection(amqp_url: str) -> pika.BlockingConnection:
    """A pika connection straight to RabbitMQ (``amqp://user:pass@host:port/vhost``)."""
    return pika.BlockingConnection(pika.URLParameters(amqp_url))


def _declare_events_exchange(channel, exchange: str) -> None:
    # The same arguments the services use, so whichever declares first, both agree.
    channel.exchange_declare(exchange=exchange, exchange_type="topic", durable=True)


class EventTap:
    """A server-named, exclusive queue bound to every routing key of the events exchange."""

    def __init__(self, amqp_url: str, exchange: str, binding: str = "#") -> None:
        self.conn = connection(amqp_url)
        self.channel = self.conn.channel()
        _declare_events_exchange(self.channel, exchange)
        self.queue = self.channel.queue_declare(queue="", exclusive=True).method.queue
        self.channel.queue_bind(queue=self.queue, exchange=exchange, routing_key=binding)
        self.seen: list[Delivered] = []

    def drain(self) -> list[Delivered]:
        """Take whatever arrived since the last call; returns every message seen so far."""
        while True:
            method, properties, body = self.channel.basic_get(queue=self.queue, auto_ack=True)
            if method is None:
                return self.seen
            self.seen.append(Delivered(method.routing_key, method.exchange, properties, body))

    def ids(self) -> list[str]:
        """Event ids of everything seen, duplicates included."""
        return [json.loads(d.body)["id"] for d in self.drain()]

    def wait_for(self, check, timeout: float, what: str) -> list[Delivered]:
        """Drain until ``check(seen)`` is true."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self.drain()
            if check(seen):
                return seen
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; saw {len(seen)} messages")
            self.conn.sleep(0.05)

    def close(self) -> None:
        if self.conn.is_open:
            self.conn.close()


def read_queue(amqp_url: str, queue: str) -> list[Delivered]:
    """Take every message from ``queue`` (acknowledging them)."""
    conn = connection(amqp_url)
    try:
        channel = conn.channel()
        out = []
        while True:
            method, properties, body = channel.basic_get(queue=queue, auto_ack=True)
            if method is None:
                return out
            out.append(Delivered(method.routing_key, method.exchange, properties, body))
    finally:
        conn.close()


def queue_counts(amqp_url: str, queue: str) -> tuple[int, int]:
    """``(messages ready, consumers)`` of an existing queue."""
    conn = connection(amqp_url)
    try:
        ok = conn.channel().queue_declare(queue=queue, passive=True).method
        return ok.message_count, ok.consumer_count
    finally:
        conn.close()


def publish(amqp_url: str, exchange: str, messages: list[tuple[str, bytes]]) -> None:
    """Publish ``(routing key, body)`` pairs as the services do: persistent CloudEvents, confirmed."""
    conn = connection(amqp_url)
    try:
        channel = conn.channel()
        _declare_events_exchange(channel, exchange)
        channel.confirm_delivery()
        props = BasicProperties(content_type="application/cloudevents+json", content_encoding="utf-8",
                                delivery_mode=2)
        for routing_key, body in messages:
            channel.basic_publish(exchange=exchange, routing_key=routing_key, body=body, properties=props)
    finally:
        conn.close()
