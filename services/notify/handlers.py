"""Notify use cases: one transaction each.

A delivery is written in the transaction of whatever causes it (an event, a due
reminder, a disabled webhook) under a unique key; the delivery workers send it
after commit and record the outcome here, with ``notification.sent`` or
``notification.failed`` in the same transaction.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import uuid
from email import policy
from email.utils import parseaddr
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from services.notify import domain, mail, store
from services.notify.domain import BookingFacts, Person
from services.notify.store import BookingState, Delivery, DeliveryAttempt, Preference, Webhook
from services.notify.transports import Outcome
from shared.auth import Principal
from shared.calendar import booking_uid
from shared.errors import Forbidden, InvalidState, NotFound, ValidationFailed
from shared.timeutil import iso, now

log = logging.getLogger("labshare.notify")

if TYPE_CHECKING:
    from services.notify.app import NotifyRuntime


# -- composing deliveries ---------------------------------------------------------------------------


def _domain(rt: NotifyRuntime) -> str:
    return domain.mail_domain(urlsplit(rt.settings.public_url).hostname)


def sender(rt: NotifyRuntime) -> str:
    """The ``From`` of notify's e-mail."""
    return mail.sender_address(rt.settings.mail_from, _domain(rt))


def sender_addr(rt: NotifyRuntime) -> str:
    """The bare address of notify's sender (envelope, ``SENT-BY``)."""
    return parseaddr(sender(rt))[1]


def booking_url(rt: NotifyRuntime, booking_id: str) -> str:
    """Where the booking's owner finds it."""
    return f"{rt.settings.public_url.rstrip('/')}/api/v1/bookings/{booking_id}"


def organizer(rt: NotifyRuntime, b: BookingFacts) -> Person:
    """The lab as the invitation's organizer: its name, and its first manager's address (else ours)."""
    first = next((m for m in b.managers if m.email), None)
    return Person(first.sub if first else "", b.lab_name, first.email if first else sender_addr(rt))


def queue_mail(
    rt: NotifyRuntime,
    session: Session,
    *,
    key: str,
    kind: str,
    letter: mail.Letter,
    stamp: dt.datetime,
    event: dict[str, Any] | None = None,
    booking_id: str | None = None,
) -> bool:
    """Render an e-mail and queue it under ``key`` (once: a second call with the key does nothing)."""
    if not letter.to.email:
        return False
    delivery_id = str(uuid.uuid4())
    message = mail.render(letter, sender(rt), mail.message_id(delivery_id, _domain(rt)), stamp)
    message["X-Labshare-Delivery"] = delivery_id
    return store.add_delivery(session, {
        "id": delivery_id,
        "key": key,
        "channel": "email",
        "kind": kind,
        "event_id": event["id"] if event else None,
        "event_type": event["type"] if event else None,
        "booking_id": booking_id,
        "webhook_id": None,
        "recipient_sub": letter.to.sub or None,
        "recipient": letter.to.email,
        "subject": letter.subject[:500],
        "payload": message.as_string(policy=policy.SMTP),
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": stamp,
        "created_at": stamp,
    })


def queue_webhooks(session: Session, event: dict[str, Any], stamp: dt.datetime) -> int:
    """Queue the event for every enabled webhook whose patterns and scope match; returns how many."""
    hooks = [h for h in store.live_webhooks(session) if domain.matches(list(h.events), str(event.get("type", "")))]
    if not hooks:
        return 0
    data = event.get("data") or {}
    resource_labs = store.lab_of_resource(session, str(data["resource_id"])) if data.get("resource_id") else {}
    lab_id = domain.event_lab(event, resource_labs)
    managers = store.lab_managers(session, lab_id)
    body = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    booking_id = data.get("id") if str(event.get("type", "")).startswith("booking.") else None
    queued = 0
    for hook in hooks:
        scope = domain.WebhookScope(hook.lab_id, hook.owner_sub, hook.owner_is_admin)
        if not domain.in_scope(scope, lab_id, managers):
            continue
        queued += store.add_delivery(session, {
            "id": str(uuid.uuid4()),
            "key": f"{event['id']}:webhook:{hook.id}",
            "channel": "webhook",
            "kind": "event",
            "event_id": event["id"],
            "event_type": event.get("type"),
            "booking_id": booking_id,
            "webhook_id": hook.id,
            "recipient_sub": None,
            "recipient": hook.url,
            "subject": str(event.get("type", "")),
            "payload": body,
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": stamp,
            "created_at": stamp,
        })
    return queued


# -- booking events ---------------------------------------------------------------------------------

REQUEST_KINDS = ("booked", "approved", "changed", "pending_again")


def on_booking_event(rt: NotifyRuntime, session: Session, event: dict[str, Any]) -> None:
    """Mail the people a booking event concerns and keep the owner's reminder in step.

    The owner gets an iMIP REQUEST when the booking is confirmed or changed and a
    CANCEL when it is cancelled, declined or released as a no-show; the lab's
    managers are asked to approve a pending one. A stale event (lower
    ``sequence``) mails nobody.
    """
    b = BookingFacts.from_snapshot(event["data"])
    stamp = now()
    for person in (b.owner, *b.managers):
        store.remember_person(session, person, stamp)
    state = session.get(BookingState, b.id, with_for_update=True)
    seen = domain.Seen(state.sequence, state.status, state.invited) if state else None
    plan = domain.plan_for(event["type"], b, seen)
    if plan.stale:
        return
    invited = state.invited if state else False
    if plan.owner_mail is not None:
        method = "REQUEST" if plan.owner_mail in REQUEST_KINDS else "CANCEL"
        org = organizer(rt, b)
        calendar = mail.calendar(b, method, booking_uid(b.id, rt.settings), org, sender_addr(rt), stamp)
        letter = mail.owner_letter(plan.owner_mail, b, calendar, method, booking_url(rt, b.id), org)
        queue_mail(rt, session, key=f"{event['id']}:email:{b.owner.email.lower()}",
                   kind="invitation" if method == "REQUEST" else "cancellation",
                   letter=letter, stamp=stamp, event=event, booking_id=b.id)
        invited = method == "REQUEST"
    for manager in plan.approvers:
        queue_mail(rt, session, key=f"{event['id']}:email:{manager.email.lower()}", kind="approval_request",
                   letter=mail.approval_letter(b, manager, rt.settings.public_url), stamp=stamp, event=event,
                   booking_id=b.id)
    _keep_reminder(rt, session, b, plan.remind, stamp)
    if state is None:
        state = BookingState(id=b.id)
        session.add(state)
    state.owner_sub, state.sequence, state.status = b.owner.sub, b.sequence, b.status
    state.invited, state.start_at, state.snapshot, state.updated_at = invited, b.start, event["data"], stamp


def on_waitlist_event(rt: NotifyRuntime, session: Session, event: dict[str, Any]) -> None:
    """Tell a waiter what became of their wait (``domain.WAITLIST_MAILS``): once per event, like every mail."""
    data = event["data"]
    w = BookingFacts.from_snapshot(data)
    stamp = now()
    store.remember_person(session, w.owner, stamp)
    reasons = [str(v["message"]) for v in data.get("violations") or [] if v.get("message")]
    booking_id = data.get("booking_id")
    url = booking_url(rt, booking_id) if booking_id else f"{rt.settings.public_url.rstrip('/')}/api/v1/waitlist/{w.id}"
    queue_mail(rt, session, key=f"{event['id']}:email:{w.owner.email.lower()}", kind="waitlist",
               letter=mail.waitlist_letter(event["type"], w, reasons, url), stamp=stamp, event=event,
               booking_id=booking_id)


def _keep_reminder(rt: NotifyRuntime, session: Session, b: BookingFacts, remind: bool, stamp: dt.datetime) -> None:
    minutes = store.reminder_minutes(session, b.owner.sub, rt.settings.reminder_minutes) if remind else None
    due = domain.reminder_due(b.start, minutes)
    if due is None or b.start <= stamp or not b.owner.email:
        store.drop_reminder(session, b.id)
    else:
        store.schedule_reminder(session, b.id, b.owner.sub, b.start, due)


# -- reminders --------------------------------------------------------------------------------------


def queue_due_reminders(rt: NotifyRuntime, limit: int = 200) -> int:
    """Claim the reminders that are due and queue their e-mails; returns how many were claimed.

    A reminder whose booking is still ahead is sent even if its due time passed
    while notify was down; one whose booking has started is skipped.
    """
    t = now()
    with rt.db.read() as session:
        if not store.has_due_reminders(session, t):
            return 0
    with rt.db.begin() as session:
        claimed = store.claim_due_reminders(session, t, limit)
        for reminder in claimed:
            state = session.get(BookingState, reminder.booking_id)
            action = domain.reminder_action(reminder.start_at, reminder.due_at, t)
            if action != "send" or state is None or state.status != "confirmed":
                reminder.outcome = "skipped"
                continue
            b = BookingFacts.from_snapshot(state.snapshot)
            known = session.get(store.Recipient, reminder.owner_sub)
            to = Person(reminder.owner_sub, known.name, known.email) if known and known.email else b.owner
            queue_mail(rt, session, key=f"reminder:{b.id}:{iso(reminder.start_at)}", kind="reminder",
                       letter=mail.reminder_letter(b, to, booking_url(rt, b.id)), stamp=t, booking_id=b.id)
            reminder.outcome = "sent"
    if claimed:
        rt.wake()
    return len(claimed)


# -- delivering -------------------------------------------------------------------------------------


def claim_deliveries(rt: NotifyRuntime, channel: str, limit: int, lease: dt.timedelta, token: str) -> list[Delivery]:
    """Claim due deliveries of a channel for this worker (none when nothing is due)."""
    t = now()
    with rt.db.read() as session:
        if not store.has_due_deliveries(session, channel, t):
            return []
    with rt.db.begin() as session:
        return store.claim_deliveries(session, channel, t, lease, token, limit)


PURGE_BATCH = 500


def purge_old_deliveries(rt: NotifyRuntime, at: dt.datetime | None = None, batch: int = PURGE_BATCH) -> int:
    """Forget finished deliveries older than the retention (``LABSHARE_DELIVERY_RETENTION_DAYS``), a batch
    per transaction; returns how many went."""
    days = rt.settings.delivery_retention_days
    if days <= 0:
        return 0
    before = (at or now()) - dt.timedelta(days=days)
    total = 0
    while True:
        with rt.db.begin() as session:
            purged = store.purge_deliveries(session, before, batch)
        total += purged
        if purged:
            log.info("notify: purged %d deliveries finished before %s (%d so far)", purged, iso(before), total)
        if purged < batch:
            return total


def idle_wait(rt: NotifyRuntime, channel: str) -> float:
    """Seconds a worker may sleep: until the next retry falls due, at most the poll interval."""
    with rt.db.read() as session:
        due = store.next_due_at(session, channel)
    interval = rt.settings.notify_interval
    if due is None:
        return interval
    return min(interval, max(0.01, (due - now()).total_seconds()))


def webhook_targets(rt: NotifyRuntime, ids: set[str]) -> dict[str, Webhook]:
    """The webhooks some deliveries go to (deleted ones included, to tell them apart)."""
    if not ids:
        return {}
    with rt.db.read() as session:
        return {h.id: h for h in session.scalars(select(Webhook).where(Webhook.id.in_(ids)))}


def record_outcomes(rt: NotifyRuntime, token: str, results: list[tuple[Delivery, Outcome | None]]) -> None:
    """Record each try: sent, retried later with backoff, or dead after the last retry.

    ``None`` means the delivery was not tried because its webhook is gone
    (cancelled) or disabled (dead, to be replayed once it is enabled again).
    """
    t = now()
    schedule = rt.settings.retry_seconds
    notices = False
    with rt.db.begin() as session:
        for claimed, outcome in results:
            row = session.get(Delivery, claimed.id, with_for_update=True)
            if row is None or row.claim_token != token or row.status != "sending":
                continue  # our lease ran out and another worker took it over
            row.claim_token, row.claimed_until = None, None
            hook = session.get(Webhook, row.webhook_id, with_for_update=True) if row.webhook_id else None
            if outcome is None:
                if hook is None or hook.deleted_at is not None:
                    row.status = "cancelled"
                else:
                    row.status, row.last_error = "dead", "the webhook is disabled"
                    _emit(rt, session, "notification.failed", row)
                continue
            row.attempts += 1
            session.add(DeliveryAttempt(delivery_id=row.id, number=row.attempts, started_at=outcome.started_at or t,
                                        duration_ms=outcome.duration_ms, ok=outcome.ok,
                                        status_code=outcome.status_code, error=outcome.error))
            row.last_status_code, row.last_error = outcome.status_code, outcome.error
            if outcome.ok:
                row.status, row.sent_at = "sent", t
                if hook is not None:
                    hook.consecutive_failures = 0
                _emit(rt, session, "notification.sent", row)
                continue
            if hook is not None:
                hook.consecutive_failures += 1
            delay = None if outcome.permanent else domain.retry_delay(row.attempts, schedule, random.random())
            if delay is not None:
                row.status, row.next_attempt_at = "pending", t + dt.timedelta(seconds=delay)
                continue
            row.status = "dead"
            _emit(rt, session, "notification.failed", row)
            if hook is not None and hook.enabled:
                reason = (f"delivery {row.id} failed {row.attempts} times over the whole retry schedule "
                          f"(last: {outcome.error})")
                notices |= disable_webhook(rt, session, hook, reason, t)
    rt.events.committed()
    if notices:
        rt.wake()


def _emit(rt: NotifyRuntime, session: Session, type_: str, row: Delivery) -> None:
    rt.events.emit(session, type_, row.snapshot(), subject=row.id)


def disable_webhook(rt: NotifyRuntime, session: Session, hook: Webhook, reason: str, stamp: dt.datetime) -> bool:
    """Stop calling a failing webhook: its waiting deliveries become dead (replayable), its owner gets a notice."""
    hook.enabled, hook.disabled_at, hook.disabled_reason, hook.updated_at = False, stamp, reason, stamp
    waiting = session.scalars(
        select(Delivery).where(Delivery.webhook_id == hook.id, Delivery.status == "pending").with_for_update()
    )
    for row in waiting:
        row.status, row.last_error = "dead", "the webhook was disabled"
        _emit(rt, session, "notification.failed", row)
    owner = Person(hook.owner_sub, hook.owner_name, hook.owner_email)
    letter = mail.webhook_disabled_letter(owner, hook.id, hook.url, reason, rt.settings.public_url)
    return queue_mail(rt, session, key=f"webhook-disabled:{hook.id}:{iso(stamp)}", kind="notice", letter=letter,
                      stamp=stamp)


def status(rt: NotifyRuntime) -> dict[str, Any]:
    """How far notify has got: events consumed since start, deliveries waiting and dead."""
    with rt.db.read() as session:
        counts = dict(
            session.execute(
                select(Delivery.status, func.count())
                .where(Delivery.status.in_(("pending", "sending", "dead")))
                .group_by(Delivery.status)
            ).all()
        )
    return {
        "events_processed": rt.consumer.processed if rt.consumer else 0,
        "deliveries_waiting": int(counts.get("pending", 0) + counts.get("sending", 0)),
        "deliveries_dead": int(counts.get("dead", 0)),
    }


# -- preferences ------------------------------------------------------------------------------------


def get_preferences(rt: NotifyRuntime, user: Principal) -> dict[str, Any]:
    """The caller's notification preferences (the defaults until they set any)."""
    with rt.db.read() as session:
        pref = session.get(Preference, user.sub)
    return _preferences(rt, user, pref)


def _preferences(rt: NotifyRuntime, user: Principal, pref: Preference | None) -> dict[str, Any]:
    return {
        "sub": user.sub,
        "reminder_minutes": rt.settings.reminder_minutes if pref is None else pref.reminder_minutes,
        "default": pref is None,
        "updated_at": iso(pref.updated_at) if pref else None,
    }


def set_preferences(rt: NotifyRuntime, user: Principal, reminder_minutes: int | None) -> dict[str, Any]:
    """Set the caller's reminder lead time (None: no reminders); their coming bookings follow at once."""
    stamp = now()
    with rt.db.begin() as session:
        pref = session.get(Preference, user.sub, with_for_update=True)
        if pref is None:
            pref = Preference(sub=user.sub)
            session.add(pref)
        pref.reminder_minutes, pref.updated_at = reminder_minutes, stamp
        session.flush()
        coming = session.scalars(
            select(BookingState).where(BookingState.owner_sub == user.sub, BookingState.status == "confirmed",
                                       BookingState.start_at > stamp)
        )
        for state in coming:
            _keep_reminder(rt, session, BookingFacts.from_snapshot(state.snapshot), True, stamp)
        result = _preferences(rt, user, pref)
    return result


# -- webhooks ---------------------------------------------------------------------------------------


def create_webhook(rt: NotifyRuntime, user: Principal, data: dict[str, Any]) -> dict[str, Any]:
    """Register a webhook: managers for the labs they manage, admins for any lab or all events."""
    if not user.is_manager:
        raise Forbidden("Only lab managers and admins may add webhooks.")
    url_problems = domain.url_problems(data["url"], rt.settings.private_webhook_targets)
    errors = [{"field": "url", "message": m} for m in url_problems]
    errors += [{"field": "events", "message": m} for m in domain.pattern_problems(data["events"])]
    if errors:
        raise ValidationFailed(errors)
    lab_id = data.get("lab_id")
    stamp = now()
    with rt.db.begin() as session:
        if lab_id and not user.is_admin:
            if session.get(store.LabView, lab_id) is None:
                raise ValidationFailed([{"field": "lab_id", "message": f"no lab with id {lab_id}"}])
            if user.sub not in store.lab_managers(session, lab_id):
                raise Forbidden("Only a manager of that lab may add webhooks for it.")
        hook = Webhook(
            id=str(uuid.uuid4()), url=data["url"], events=list(dict.fromkeys(data["events"])),
            secret=data["secret"], lab_id=lab_id, owner_sub=user.sub, owner_name=user.name,
            owner_email=user.email, owner_is_admin=user.is_admin, enabled=True, consecutive_failures=0,
            created_at=stamp, updated_at=stamp,
        )
        session.add(hook)
        session.flush()
        return hook.snapshot()


def _visible_webhook(session: Session, user: Principal, webhook_id: str, lock: bool = False) -> Webhook:
    hook = session.get(Webhook, webhook_id, with_for_update=lock)
    if hook is None or hook.deleted_at is not None:
        raise NotFound(f"No webhook with id {webhook_id}.")
    if user.is_admin or hook.owner_sub == user.sub:
        return hook
    if hook.lab_id and "manager" in user.roles and user.sub in store.lab_managers(session, hook.lab_id):
        return hook
    raise NotFound(f"No webhook with id {webhook_id}.")


def list_webhooks(rt: NotifyRuntime, user: Principal, limit: int, after: list | None) -> list[dict[str, Any]]:
    """The caller's webhooks (an admin's: everyone's)."""
    with rt.db.read() as session:
        rows = store.list_webhooks(session, None if user.is_admin else user.sub, limit, after)
        return [h.snapshot() for h in rows]


def get_webhook(rt: NotifyRuntime, user: Principal, webhook_id: str) -> dict[str, Any]:
    """One webhook the caller may see."""
    with rt.db.read() as session:
        return _visible_webhook(session, user, webhook_id).snapshot()


def delete_webhook(rt: NotifyRuntime, user: Principal, webhook_id: str) -> None:
    """Remove a webhook; deliveries still waiting for it are withdrawn, its log is kept."""
    with rt.db.begin() as session:
        hook = _visible_webhook(session, user, webhook_id, lock=True)
        hook.deleted_at = hook.updated_at = now()
        hook.enabled = False
        store.cancel_pending(session, hook.id)


def enable_webhook(rt: NotifyRuntime, user: Principal, webhook_id: str) -> dict[str, Any]:
    """Turn a disabled webhook back on (its dead deliveries may then be replayed)."""
    with rt.db.begin() as session:
        hook = _visible_webhook(session, user, webhook_id, lock=True)
        hook.enabled, hook.consecutive_failures = True, 0
        hook.disabled_at, hook.disabled_reason, hook.updated_at = None, None, now()
        return hook.snapshot()


def _with_attempts(session: Session, rows: list[Delivery]) -> list[dict[str, Any]]:
    attempts = store.attempts_of(session, [r.id for r in rows])
    return [{**r.snapshot(), "log": [a.snapshot() for a in attempts[r.id]]} for r in rows]


def webhook_deliveries(rt: NotifyRuntime, user: Principal, webhook_id: str, status: str | None, limit: int,
                       after: list | None) -> list[dict[str, Any]]:
    """A webhook's deliveries, newest first, each with its attempts."""
    with rt.db.read() as session:
        _visible_webhook(session, user, webhook_id)
        rows = store.list_deliveries(session, webhook_id=webhook_id, status=status, limit=limit, after=after)
        return _with_attempts(session, rows)


# -- notifications ----------------------------------------------------------------------------------


def list_notifications(rt: NotifyRuntime, user: Principal, *, mine: bool, channel: str | None, status: str | None,
                       booking_id: str | None, limit: int, after: list | None) -> list[dict[str, Any]]:
    """What was sent to the caller (``mine``, and always for non-admins); admins may list everything."""
    everyone = user.is_admin and not mine
    with rt.db.read() as session:
        rows = store.list_deliveries(session, recipient_sub=None if everyone else user.sub, channel=channel,
                                     status=status, booking_id=booking_id, limit=limit, after=after)
        return [r.snapshot() for r in rows]


def _visible_delivery(session: Session, user: Principal, delivery_id: str, lock: bool = False) -> Delivery:
    row = session.get(Delivery, delivery_id, with_for_update=lock)
    if row is None:
        raise NotFound(f"No notification with id {delivery_id}.")
    if user.is_admin or (row.recipient_sub is not None and row.recipient_sub == user.sub):
        return row
    if row.webhook_id:
        hook = session.get(Webhook, row.webhook_id)
        if hook is not None and hook.owner_sub == user.sub:
            return row
    raise NotFound(f"No notification with id {delivery_id}.")


def get_notification(rt: NotifyRuntime, user: Principal, delivery_id: str) -> dict[str, Any]:
    """One delivery with its attempts: for its recipient, its webhook's owner and admins."""
    with rt.db.read() as session:
        return _with_attempts(session, [_visible_delivery(session, user, delivery_id)])[0]


def replay(rt: NotifyRuntime, user: Principal, delivery_id: str, webhook_id: str | None = None) -> dict[str, Any]:
    """Send a dead delivery again, with a fresh retry schedule (admins; a webhook's owner for its own)."""
    with rt.db.begin() as session:
        row = _visible_delivery(session, user, delivery_id, lock=True)
        if webhook_id is not None and row.webhook_id != webhook_id:
            raise NotFound(f"No delivery {delivery_id} of webhook {webhook_id}.")
        if row.recipient_sub == user.sub and not user.is_admin and not row.webhook_id:
            raise Forbidden("Only admins may replay e-mails.")
        if row.status != "dead":
            raise InvalidState(f"Only dead deliveries can be replayed; this one is {row.status}.")
        if row.webhook_id:
            hook = session.get(Webhook, row.webhook_id)
            if hook is None or hook.deleted_at is not None:
                raise InvalidState("The webhook of this delivery was deleted.")
            if not hook.enabled:
                raise InvalidState(
                    f"The webhook is disabled; enable it first (POST /api/v1/webhooks/{hook.id}/enable).")
        session.execute(
            update(Delivery).where(Delivery.id == row.id)
            .values(status="pending", attempts=0, next_attempt_at=now(), last_error=None)
        )
        session.flush()
        session.refresh(row)
        result = row.snapshot()
    rt.wake()
    return result


def dead_notifications(rt: NotifyRuntime, user: Principal, limit: int, after: list | None) -> list[dict[str, Any]]:
    """Deliveries that failed for good (admins)."""
    if not user.is_admin:
        raise Forbidden("Only admins may list dead deliveries.")
    with rt.db.read() as session:
        rows = store.list_deliveries(session, status="dead", limit=limit, after=after)
        return _with_attempts(session, rows)
