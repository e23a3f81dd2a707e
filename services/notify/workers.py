"""Notify's background loops: the reminder scheduler, the retention of old deliveries, and one
delivery worker per channel.

Any number of notify processes may run them side by side: reminders and
deliveries are claimed in the database (``SKIP LOCKED`` on PostgreSQL, the
write lock on SQLite), never in memory. A claim is a lease: a worker that dies
mid-send leaves its deliveries to be taken over when the lease runs out.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import math
import random
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from services.notify import handlers
from services.notify.store import Delivery
from services.notify.transports import Outcome, Outgoing
from shared.events import CONTENT_TYPE

if TYPE_CHECKING:
    from services.notify.app import NotifyRuntime

log = logging.getLogger("labshare.notify")

EMAIL_BATCH = 20
WEBHOOK_BATCH = 32
WEBHOOK_PARALLEL = 8


def signature(secret: str, body: bytes) -> str:
    """``X-Labshare-Signature``: ``sha256=`` and the hex HMAC-SHA256 of the exact body with the secret."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def _sleep(stop: threading.Event, wake: threading.Event, seconds: float) -> None:
    """Sleep until woken, stopped, or ``seconds`` have passed (stop is looked at every 50 ms)."""
    deadline = time.monotonic() + seconds
    while not stop.is_set():
        left = deadline - time.monotonic()
        if left <= 0 or wake.wait(min(left, 0.05)):
            break
    wake.clear()


def _every(stop: threading.Event, seconds: float, work: Callable[[], object], failure: str) -> None:
    """Run ``work`` now and then every ``seconds`` until ``stop``; a failure is logged and tried again."""
    while not stop.is_set():
        try:
            work()
        except Exception:
            log.exception(failure)
        stop.wait(seconds)


class ReminderScheduler:
    """Turns due reminders into e-mail deliveries, once each, however many notify workers run."""

    def __init__(self, rt: NotifyRuntime) -> None:
        self.rt = rt

    def run(self, stop: threading.Event) -> None:
        """Every poll interval, until ``stop``."""
        _every(stop, self.rt.settings.notify_interval, lambda: handlers.queue_due_reminders(self.rt),
               "reminders: could not queue due reminders; trying again")


class DeliveryRetention:
    """Forgets finished deliveries past the retention: at start, then every ``PURGE_EVERY`` seconds."""

    PURGE_EVERY = 3600.0

    def __init__(self, rt: NotifyRuntime) -> None:
        self.rt = rt

    def run(self, stop: threading.Event) -> None:
        _every(stop, self.PURGE_EVERY, lambda: handlers.purge_old_deliveries(self.rt),
               "retention: could not purge old deliveries; trying again later")


class DeliveryWorker:
    """Sends the due deliveries of one channel (``email`` or ``webhook``) and records each outcome."""

    def __init__(self, rt: NotifyRuntime, channel: str) -> None:
        self.rt = rt
        self.channel = channel
        self.wake = rt.wake_mail if channel == "email" else rt.wake_webhooks
        self.batch = EMAIL_BATCH if channel == "email" else WEBHOOK_BATCH
        rounds = self.batch if channel == "email" else math.ceil(self.batch / WEBHOOK_PARALLEL)
        self.lease = dt.timedelta(seconds=max(30.0, rt.settings.delivery_timeout * (rounds + 2)))
        self._pool: ThreadPoolExecutor | None = None

    def run(self, stop: threading.Event) -> None:
        """Deliver until ``stop``; woken early when new deliveries are committed."""
        if self.channel == "webhook":
            self._pool = ThreadPoolExecutor(WEBHOOK_PARALLEL, thread_name_prefix="notify-webhook")
        delay = 0.5
        try:
            while not stop.is_set():
                try:
                    sent = self.run_once()
                    delay = 0.5
                except Exception as exc:  # the database is away: back off, then retry
                    log.warning("%s deliveries: %s; retrying in %.1fs", self.channel, exc, delay)
                    stop.wait(delay + random.random() * delay / 2)
                    delay = min(delay * 2, 15.0)
                    continue
                if sent < self.batch:
                    _sleep(stop, self.wake, handlers.idle_wait(self.rt, self.channel))
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)

    def run_once(self) -> int:
        """Claim one batch, send it, record the outcomes; returns how many were claimed."""
        token = str(uuid.uuid4())
        claimed = handlers.claim_deliveries(self.rt, self.channel, self.batch, self.lease, token)
        if not claimed:
            return 0
        results = self._send_mail(claimed) if self.channel == "email" else self._send_webhooks(claimed)
        handlers.record_outcomes(self.rt, token, results)
        return len(claimed)

    def _send_mail(self, claimed: list[Delivery]) -> list[tuple[Delivery, Outcome | None]]:
        assert self.rt.mail is not None
        sender = handlers.sender_addr(self.rt)
        outgoing = [Outgoing(sender, d.recipient, d.payload.encode("utf-8")) for d in claimed]
        outcomes = self.rt.mail.send(outgoing)
        return list(zip(claimed, outcomes, strict=True))

    def _send_webhooks(self, claimed: list[Delivery]) -> list[tuple[Delivery, Outcome | None]]:
        hooks = handlers.webhook_targets(self.rt, {d.webhook_id for d in claimed if d.webhook_id})

        def one(d: Delivery) -> Outcome | None:
            hook = hooks.get(d.webhook_id or "")
            if hook is None or hook.deleted_at is not None or not hook.enabled:
                return None
            body = d.payload.encode("utf-8")
            headers = {
                "Content-Type": CONTENT_TYPE,
                "User-Agent": "labshare-webhooks/1",
                "X-Labshare-Signature": signature(hook.secret, body),
                "X-Labshare-Delivery": d.id,
                "X-Labshare-Event": d.event_type or "",
                "ce-id": d.event_id or "",
                "ce-type": d.event_type or "",
            }
            assert self.rt.http is not None
            return self.rt.http.post(d.recipient, body, headers)

        if self._pool is None:
            return [(d, one(d)) for d in claimed]
        return list(zip(claimed, self._pool.map(one, claimed), strict=True))
