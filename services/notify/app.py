"""Notify's Flask application factory and runtime wiring."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from flask import Flask

from services.notify.api import bp, doc
from services.notify.consumers import handlers
from services.notify.handlers import status
from services.notify.store import Base
from services.notify.transports import HttpWebhookClient, MailTransport, WebhookClient, mail_transport
from services.notify.workers import DeliveryRetention, DeliveryWorker, ReminderScheduler
from shared.config import Settings
from shared.service import Runtime, create_service_app

NAME = "notify"


@dataclass
class NotifyRuntime(Runtime):
    """The shared runtime plus notify's side effects and the events that wake its delivery workers."""

    mail: MailTransport | None = None
    http: WebhookClient | None = None
    wake_mail: threading.Event = field(default_factory=threading.Event)
    wake_webhooks: threading.Event = field(default_factory=threading.Event)

    def wake(self) -> None:
        """New deliveries were committed: let the workers look now rather than at their next poll."""
        self.wake_mail.set()
        self.wake_webhooks.set()


def build_runtime(
    settings: Settings | None = None, mail: MailTransport | None = None, http: WebhookClient | None = None
) -> NotifyRuntime:
    """Notify's database, relay, consumer, reminder scheduler and delivery workers, wired from ``settings``.

    The mail transport follows the settings (SMTP or the local Maildir) and the
    webhook client is ``requests``; tests may pass their own.
    """
    settings = settings or Settings.from_env()
    rt = NotifyRuntime.build(NAME, settings, Base.metadata, handlers)
    assert isinstance(rt, NotifyRuntime)
    rt.mail = mail or mail_transport(settings)
    rt.http = http or HttpWebhookClient(settings.delivery_timeout, settings.private_webhook_targets)
    rt.loops += [
        ReminderScheduler(rt).run,
        DeliveryRetention(rt).run,
        DeliveryWorker(rt, "email").run,
        DeliveryWorker(rt, "webhook").run,
    ]
    return rt


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> Flask:
    """The notify API (``gunicorn 'services.notify.app:create_app()'``)."""
    rt = runtime or build_runtime(settings)
    return create_service_app(rt, [bp], doc, extra_health=lambda: status(rt))
