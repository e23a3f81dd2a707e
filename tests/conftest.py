"""Fixtures: a stack on embedded defaults (SQLite, in-process broker) and one on PostgreSQL + RabbitMQ."""

from __future__ import annotations

import uuid

import pytest
from kombu import Connection

from shared.config import Settings
from tests import infra
from tests.harness import Stack


def sqlite_settings(tmp_path) -> Settings:
    """Embedded defaults in a temporary data directory."""
    return Settings(data_dir=str(tmp_path / "var"), dev_mode=True, broker_url="memory://",
                    exchange=f"labshare.events.{uuid.uuid4().hex[:8]}", queue_prefix=f"t{uuid.uuid4().hex[:8]}",
                    relay_interval=0.05)


@pytest.fixture(scope="session")
def rabbit_vhost():
    """One RabbitMQ vhost for the whole run (each test still gets its own queue names)."""
    vhost, url = infra.create_vhost()
    yield url
    infra.delete_vhost(vhost)


@pytest.fixture
def pg_url():
    """A fresh, empty PostgreSQL database for one test."""
    url = infra.fresh_database()
    yield url
    infra.drop_database(url)


def postgres_settings(pg_url: str, amqp_url: str, data_dir: str = "./var") -> Settings:
    """PostgreSQL (one schema per service) and RabbitMQ, with queue names of this test's own."""
    return Settings(database_url=pg_url, broker_url=amqp_url, dev_mode=True, data_dir=data_dir,
                    exchange=f"labshare.events.{uuid.uuid4().hex[:8]}", queue_prefix=f"t{uuid.uuid4().hex[:8]}",
                    relay_interval=0.05)


def _drop_queues(settings: Settings) -> None:
    from shared.messaging import SUBSCRIPTIONS, dead_queue, events_exchange, service_queue

    with Connection(settings.broker_url) as conn:
        channel = conn.channel()
        for service in SUBSCRIPTIONS:
            service_queue(settings, service)(channel).delete()
            dead_queue(settings, service)(channel).delete()
        events_exchange(settings)(channel).delete()


@pytest.fixture(params=["sqlite", "postgres"])
def stack(request, tmp_path):
    """The whole system in-process, once on embedded defaults and once on PostgreSQL + RabbitMQ."""
    if request.param == "sqlite":
        settings = sqlite_settings(tmp_path)
        s = Stack(settings)
        yield s
        s.close()
        return
    amqp = request.getfixturevalue("rabbit_vhost")
    db = request.getfixturevalue("pg_url")
    settings = postgres_settings(db, amqp, str(tmp_path / "var"))
    s = Stack(settings)
    yield s
    s.close()
    _drop_queues(settings)


@pytest.fixture(params=["sqlite", "postgres"])
def make_stack(request, tmp_path):
    """Like ``stack``, with settings of the test's own: ``make_stack(smtp_url=..., retry_seconds=...)``."""
    if request.param == "sqlite":
        base = sqlite_settings(tmp_path)
    else:
        base = postgres_settings(request.getfixturevalue("pg_url"), request.getfixturevalue("rabbit_vhost"),
                                 str(tmp_path / "var"))
    made: list[Stack] = []

    def make(**overrides) -> Stack:
        made.append(Stack(base.replace(**overrides)))
        return made[-1]

    yield make
    for s in made:
        s.close()
        if request.param == "postgres":
            _drop_queues(s.settings)


@pytest.fixture
def sqlite_stack(tmp_path):
    """The whole system in-process on embedded defaults only."""
    s = Stack(sqlite_settings(tmp_path))
    yield s
    s.close()
