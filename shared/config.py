"""Settings read once from ``LABSHARE_*`` environment variables, with embedded defaults."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

SERVICES = ("inventory", "booking", "notify")


def _bool(value: str | None, default: bool = False) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    """Everything a labshare process needs to know about its surroundings.

    ``database_url`` is shared by all services (each then keeps its tables in a
    schema named after itself); ``service_database_urls`` overrides it per service.
    Without either, each service gets its own SQLite file under ``data_dir``.
    """

    data_dir: str = "./var"
    database_url: str | None = None
    service_database_urls: Mapping[str, str] = dataclasses.field(default_factory=dict)
    broker_url: str = "memory://"
    smtp_url: str | None = None
    port: int = 8080
    public_url: str = "http://127.0.0.1:8080"
    dev_mode: bool = False
    dev_secret: str = "labshare-development-only-secret-do-not-use-in-production"
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    exchange: str = "labshare.events"
    queue_prefix: str = "labshare"
    #: Seconds between a relay's outbox polls while the last one found nothing (an idle relay)...
    relay_interval: float = 0.05
    #: ... and after one that published something: under load a relay publishes one batch per this
    #: interval, and small frequent batches keep the broker's bursts, and so the APIs' p99, small.
    relay_busy_interval: float = 0.02
    relay_batch: int = 200
    #: Unacknowledged messages RabbitMQ may hand one consumer at a time (see shared/messaging.py for why 20).
    consumer_prefetch: int = 20
    consumer_max_retries: int = 5
    #: AMQP heartbeat: a silent (half-dead) connection is given up after about twice this many seconds.
    broker_heartbeat: int = 10
    #: Seconds a publish may wait for the broker's confirm (or a blocked socket) before the relay gives up.
    publish_timeout: float = 10.0
    #: /healthz says "degraded" when the oldest unpublished event is older than this many seconds.
    health_outbox_age: float = 30.0
    #: An API process checks that the broker accepts connections at most this often (seconds).
    health_broker_interval: float = 5.0
    max_body_bytes: int = 1024 * 1024
    log_level: str = "INFO"
    #: Sender of notify's e-mail; default ``labshare <noreply@<public host>>``.
    mail_from: str | None = None
    #: Default minutes before a booking's start that its owner is reminded (users may choose their own).
    reminder_minutes: int = 60
    #: Pauses (seconds) before each retry of a failed e-mail or webhook delivery; then it is dead.
    retry_seconds: tuple[float, ...] = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 3600)
    #: Seconds between notify's polls for due reminders and deliveries (they are also woken by new work).
    notify_interval: float = 1.0
    #: Timeout in seconds of one SMTP conversation or webhook call.
    delivery_timeout: float = 10.0
    #: Days notify keeps a finished delivery (sent, dead or cancelled: the message, its recipient, its
    #: log) after its last try; 0 keeps them for ever.
    delivery_retention_days: float = 90.0
    #: Seconds between booking's passes over no-shows and expired waitlist entries.
    housekeeping_interval: float = 30.0
    #: Whether webhooks may be sent to loopback, private, link-local and other non-public addresses
    #: (None: only in dev mode, where receivers on the same machine are the norm).
    webhook_private_targets: bool | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Read ``LABSHARE_*`` variables from ``env`` (default: the process environment)."""
        env = os.environ if env is None else env
        per_service = {
            name: env[f"LABSHARE_{name.upper()}_DATABASE_URL"]
            for name in SERVICES
            if env.get(f"LABSHARE_{name.upper()}_DATABASE_URL")
        }
        port = int(env.get("LABSHARE_PORT", "8080"))
        values: dict[str, object] = {
            "data_dir": env.get("LABSHARE_DATA_DIR", "./var"),
            "database_url": env.get("LABSHARE_DATABASE_URL") or None,
            "service_database_urls": per_service,
            "broker_url": env.get("LABSHARE_BROKER_URL") or "memory://",
            "smtp_url": env.get("LABSHARE_SMTP_URL") or None,
            "port": port,
            "public_url": env.get("LABSHARE_PUBLIC_URL") or f"http://127.0.0.1:{port}",
            "dev_mode": _bool(env.get("LABSHARE_DEV_MODE")),
            "oidc_issuer": env.get("LABSHARE_OIDC_ISSUER") or None,
            "oidc_audience": env.get("LABSHARE_OIDC_AUDIENCE") or None,
            "exchange": env.get("LABSHARE_EXCHANGE", "labshare.events"),
            "queue_prefix": env.get("LABSHARE_QUEUE_PREFIX", "labshare"),
            "relay_interval": float(env.get("LABSHARE_RELAY_INTERVAL", "0.05")),
            "relay_busy_interval": float(env.get("LABSHARE_RELAY_BUSY_INTERVAL", "0.02")),
            "broker_heartbeat": int(env.get("LABSHARE_BROKER_HEARTBEAT", "10")),
            "health_outbox_age": float(env.get("LABSHARE_HEALTH_OUTBOX_AGE", "30")),
            "log_level": env.get("LABSHARE_LOG_LEVEL", "INFO"),
            "mail_from": env.get("LABSHARE_MAIL_FROM") or None,
        }
        if env.get("LABSHARE_REMINDER_MINUTES"):
            values["reminder_minutes"] = int(env["LABSHARE_REMINDER_MINUTES"])
        if env.get("LABSHARE_RETRY_SECONDS"):
            values["retry_seconds"] = tuple(float(x) for x in env["LABSHARE_RETRY_SECONDS"].split(",") if x.strip())
        if env.get("LABSHARE_NOTIFY_INTERVAL"):
            values["notify_interval"] = float(env["LABSHARE_NOTIFY_INTERVAL"])
        if env.get("LABSHARE_DELIVERY_TIMEOUT"):
            values["delivery_timeout"] = float(env["LABSHARE_DELIVERY_TIMEOUT"])
        if env.get("LABSHARE_DELIVERY_RETENTION_DAYS"):
            values["delivery_retention_days"] = float(env["LABSHARE_DELIVERY_RETENTION_DAYS"])
        if env.get("LABSHARE_HOUSEKEEPING_INTERVAL"):
            values["housekeeping_interval"] = float(env["LABSHARE_HOUSEKEEPING_INTERVAL"])
        if env.get("LABSHARE_WEBHOOK_PRIVATE_TARGETS"):
            values["webhook_private_targets"] = _bool(env["LABSHARE_WEBHOOK_PRIVATE_TARGETS"])
        if env.get("LABSHARE_DEV_SECRET"):
            values["dev_secret"] = env["LABSHARE_DEV_SECRET"]
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]

    def replace(self, **changes: object) -> Settings:
        """A copy with some values changed (tests use it)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def database_url_for(self, service: str) -> str:
        """The database URL a service uses."""
        if service in self.service_database_urls:
            return self.service_database_urls[service]
        if self.database_url:
            return self.database_url
        Path(self.data_dir).mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{Path(self.data_dir).resolve() / f'{service}.db'}"

    def schema_for(self, service: str) -> str | None:
        """The PostgreSQL schema a service's tables live in (None on SQLite)."""
        url = self.database_url_for(service)
        return service if url.startswith("postgresql") else None

    @property
    def private_webhook_targets(self) -> bool:
        """True when webhooks may go to non-public addresses (see ``webhook_private_targets``)."""
        return self.dev_mode if self.webhook_private_targets is None else self.webhook_private_targets

    @property
    def broker_is_memory(self) -> bool:
        """True for the in-process broker of ``make run``."""
        return self.broker_url.startswith("memory")
