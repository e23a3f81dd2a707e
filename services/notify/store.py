"""Notify's tables and queries. Functions take a session and never commit.

Besides its own records (preferences, webhooks, deliveries and their attempts),
notify keeps what the events taught it: people and their addresses, labs and
their managers, which lab a resource belongs to, and the last state of each
booking it wrote about.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    and_,
    delete,
    exists,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from services.notify.domain import Person
from shared.db import UTCDateTime, upsert_insert
from shared.outbox import define_outbox
from shared.timeutil import iso, parse_rfc3339


class Base(DeclarativeBase):
    """Notify's own metadata."""

    metadata = MetaData()


OUTBOX, INBOX = define_outbox(Base.metadata)


class Recipient(Base):
    """A person notify has heard of (a booking's owner, a lab's manager) and their newest address."""

    __tablename__ = "recipients"
    sub: Mapped[str] = mapped_column(String(200), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    email: Mapped[str] = mapped_column(String(320), default="")
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class LabView(Base):
    """A lab as inventory's events describe it: who manages it decides who may add its webhooks."""

    __tablename__ = "lab_views"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    managers: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    version: Mapped[int] = mapped_column(Integer)


class ResourceView(Base):
    """Which lab a resource belongs to (outage events name only the resource)."""

    __tablename__ = "resource_views"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    lab_id: Mapped[str] = mapped_column(String(36))
    version: Mapped[int] = mapped_column(Integer)


class Preference(Base):
    """A user's notification choices; ``reminder_minutes`` None means no reminders."""

    __tablename__ = "preferences"
    sub: Mapped[str] = mapped_column(String(200), primary_key=True)
    reminder_minutes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class BookingState(Base):
    """The newest state of a booking that notify acted on, so late or repeated events change nothing."""

    __tablename__ = "booking_states"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner_sub: Mapped[str] = mapped_column(String(200), index=True)
    sequence: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20))
    #: An invitation (REQUEST) reached the owner's calendar, so a change or cancel must follow it.
    invited: Mapped[bool] = mapped_column(Boolean, default=False)
    start_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    snapshot: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class Reminder(Base):
    """The reminder of one confirmed booking; claimed once (``claimed_at``) by whichever worker gets it."""

    __tablename__ = "reminders"
    __table_args__ = (
        Index("ix_reminders_due", "due_at", postgresql_where=text("claimed_at IS NULL"),
              sqlite_where=text("claimed_at IS NULL")),
    )
    booking_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner_sub: Mapped[str] = mapped_column(String(200), index=True)
    start_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    due_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    claimed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: ``sent`` (a delivery was queued) or ``skipped`` (the booking had started when it was claimed).
    outcome: Mapped[str | None] = mapped_column(String(10), nullable=True)


class Webhook(Base):
    """An endpoint that receives matching events, signed with its secret."""

    __tablename__ = "webhooks"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    url: Mapped[str] = mapped_column(String(2000))
    events: Mapped[list[str]] = mapped_column(JSON)
    secret: Mapped[str] = mapped_column(String(500))
    lab_id: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    owner_sub: Mapped[str] = mapped_column(String(200), index=True)
    owner_name: Mapped[str] = mapped_column(String(200), default="")
    owner_email: Mapped[str] = mapped_column(String(320), default="")
    owner_is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    disabled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    disabled_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)

    def snapshot(self) -> dict[str, Any]:
        """The webhook as the API shows it (never the secret)."""
        return {
            "id": self.id,
            "url": self.url,
            "events": list(self.events),
            "lab_id": self.lab_id,
            "enabled": self.enabled,
            "owner": {"sub": self.owner_sub, "name": self.owner_name, "email": self.owner_email},
            "consecutive_failures": self.consecutive_failures,
            "disabled_at": iso(self.disabled_at),
            "disabled_reason": self.disabled_reason,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        }


class Delivery(Base):
    """One e-mail to one person or one event to one webhook: written with the event that causes it,
    sent after commit by a delivery worker, retried until sent or dead.

    ``key`` (event id + channel + recipient or webhook) is unique, so an event
    processed twice cannot queue a second copy.
    """

    __tablename__ = "deliveries"
    __table_args__ = (
        Index("ix_deliveries_due", "channel", "status", "next_attempt_at"),
        Index("ix_deliveries_recipient", "recipient_sub", "created_at"),
        Index("ix_deliveries_webhook", "webhook_id", "created_at"),
        Index("ix_deliveries_booking", "booking_id"),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    key: Mapped[str] = mapped_column(String(300), unique=True)
    #: ``email`` or ``webhook``.
    channel: Mapped[str] = mapped_column(String(10))
    #: ``invitation``, ``cancellation``, ``approval_request``, ``reminder``, ``notice`` or ``event``.
    kind: Mapped[str] = mapped_column(String(30))
    event_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    event_type: Mapped[str | None] = mapped_column(String(100), nullable=True)
    booking_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    webhook_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    recipient_sub: Mapped[str | None] = mapped_column(String(200), nullable=True)
    #: An e-mail address or a webhook URL.
    recipient: Mapped[str] = mapped_column(String(2000))
    subject: Mapped[str] = mapped_column(String(500), default="")
    #: The exact bytes to send: the MIME message, or the CloudEvent JSON.
    payload: Mapped[str] = mapped_column(Text)
    #: ``pending``, ``sending`` (claimed), ``sent``, ``dead`` or ``cancelled``.
    status: Mapped[str] = mapped_column(String(12))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    claimed_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    claim_token: Mapped[str | None] = mapped_column(String(36), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)

    def snapshot(self) -> dict[str, Any]:
        """The delivery as the API and ``notification.*`` events show it (not its payload)."""
        return {
            "id": self.id,
            "channel": self.channel,
            "kind": self.kind,
            "recipient": self.recipient,
            "recipient_sub": self.recipient_sub,
            "subject": self.subject,
            "event_type": self.event_type,
            "event_id": self.event_id,
            "booking_id": self.booking_id,
            "webhook_id": self.webhook_id,
            "status": self.status,
            "attempts": self.attempts,
            "created_at": iso(self.created_at),
            "sent_at": iso(self.sent_at),
            "next_attempt_at": iso(self.next_attempt_at) if self.status in ("pending", "sending") else None,
            "last_status_code": self.last_status_code,
            "last_error": self.last_error,
        }


class DeliveryAttempt(Base):
    """One try of a delivery: when, how long, and what came back."""

    __tablename__ = "delivery_attempts"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("deliveries.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    duration_ms: Mapped[float] = mapped_column(Float)
    ok: Mapped[bool] = mapped_column(Boolean)
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)

    def snapshot(self) -> dict[str, Any]:
        """One line of a delivery's log."""
        return {
            "attempt": self.number,
            "at": iso(self.started_at),
            "ok": self.ok,
            "status_code": self.status_code,
            "duration_ms": round(self.duration_ms, 1),
            "error": self.error,
        }


# -- what the events taught notify ------------------------------------------------------------------


def remember_person(session: Session, person: Person, at: dt.datetime) -> None:
    """Record a person's newest name and address."""
    if not person.sub:
        return
    values = {"sub": person.sub, "name": person.name, "email": person.email, "updated_at": at}
    stmt = upsert_insert(session, Recipient).values(**values)
    session.execute(stmt.on_conflict_do_update(index_elements=["sub"], set_=values))


def upsert_lab(session: Session, data: dict[str, Any]) -> None:
    """Keep the newest version of a lab."""
    row = session.get(LabView, data["id"])
    version = int(data.get("version") or 0)
    if row is not None and version < row.version:
        return
    if row is None:
        row = LabView(id=data["id"])
        session.add(row)
    row.name, row.managers, row.version = data.get("name") or "", data.get("managers") or [], version


def upsert_resource(session: Session, data: dict[str, Any]) -> None:
    """Keep which lab a resource belongs to."""
    row = session.get(ResourceView, data["id"])
    version = int(data.get("version") or 0)
    if row is not None and version < row.version:
        return
    if row is None:
        row = ResourceView(id=data["id"])
        session.add(row)
    row.lab_id, row.version = data["lab_id"], version


def lab_of_resource(session: Session, resource_id: str) -> dict[str, str]:
    """``{resource_id: lab_id}`` when notify knows the resource."""
    lab_id = session.scalar(select(ResourceView.lab_id).where(ResourceView.id == resource_id))
    return {resource_id: lab_id} if lab_id else {}


def lab_managers(session: Session, lab_id: str | None) -> frozenset[str]:
    """The subs that manage a lab, as notify last heard."""
    if not lab_id:
        return frozenset()
    managers = session.scalar(select(LabView.managers).where(LabView.id == lab_id))
    return frozenset(str(m.get("sub")) for m in managers or [] if m.get("sub"))


def reminder_minutes(session: Session, sub: str, default: int) -> int | None:
    """A user's reminder lead time, or the default when they chose none."""
    pref = session.get(Preference, sub)
    return default if pref is None else pref.reminder_minutes


# -- reminders --------------------------------------------------------------------------------------


def schedule_reminder(session: Session, booking_id: str, owner_sub: str, start: dt.datetime,
                      due: dt.datetime) -> None:
    """Set a booking's reminder; a new start or lead time makes it due again, otherwise a sent one stays sent."""
    row = session.get(Reminder, booking_id, with_for_update=True)
    if row is None:
        session.add(Reminder(booking_id=booking_id, owner_sub=owner_sub, start_at=start, due_at=due))
        return
    if row.start_at != start or row.due_at != due:
        row.start_at, row.due_at, row.claimed_at, row.outcome = start, due, None, None
    row.owner_sub = owner_sub


def drop_reminder(session: Session, booking_id: str) -> None:
    """No reminder for this booking (cancelled, declined, pending, or the user wants none)."""
    row = session.get(Reminder, booking_id)
    if row is not None:
        session.delete(row)
    session.execute(
        update(Delivery)
        .where(Delivery.booking_id == booking_id, Delivery.kind == "reminder", Delivery.status == "pending")
        .values(status="cancelled")
    )


def has_due_reminders(session: Session, now: dt.datetime) -> bool:
    """A cheap read before taking a write lock."""
    return bool(session.scalar(select(exists().where(Reminder.claimed_at.is_(None), Reminder.due_at <= now))))


def claim_due_reminders(session: Session, now: dt.datetime, limit: int) -> list[Reminder]:
    """Mark due, unclaimed reminders as claimed by this transaction and return them.

    Two workers never claim the same reminder: on PostgreSQL the candidate rows are
    locked with ``SKIP LOCKED`` (another worker's rows are passed over) and the
    ``claimed_at IS NULL`` test is re-checked on the locked row; on SQLite the
    write transaction holds the database lock.
    """
    due = (
        select(Reminder.booking_id)
        .where(Reminder.claimed_at.is_(None), Reminder.due_at <= now)
        .order_by(Reminder.due_at)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    stmt = (
        update(Reminder)
        .where(Reminder.booking_id.in_(due.scalar_subquery()), Reminder.claimed_at.is_(None))
        .values(claimed_at=now)
        .returning(Reminder)
    )
    return list(session.scalars(stmt, execution_options={"synchronize_session": False}))


# -- deliveries -------------------------------------------------------------------------------------


def add_delivery(session: Session, values: dict[str, Any]) -> bool:
    """Queue a delivery unless one with the same key exists; True when it was added."""
    stmt = upsert_insert(session, Delivery).values(**values).on_conflict_do_nothing(index_elements=["key"])
    return session.execute(stmt).rowcount == 1


def _due(channel: str, now: dt.datetime):
    return and_(
        Delivery.channel == channel,
        or_(
            and_(Delivery.status == "pending", Delivery.next_attempt_at <= now),
            # A worker that claimed it died before it recorded an outcome: try again.
            and_(Delivery.status == "sending", Delivery.claimed_until < now),
        ),
    )


def has_due_deliveries(session: Session, channel: str, now: dt.datetime) -> bool:
    """A cheap read before taking a write lock."""
    return bool(session.scalar(select(exists().where(_due(channel, now)))))


def next_due_at(session: Session, channel: str) -> dt.datetime | None:
    """When the earliest waiting delivery of a channel falls due."""
    return session.scalar(
        select(Delivery.next_attempt_at)
        .where(Delivery.channel == channel, Delivery.status == "pending")
        .order_by(Delivery.next_attempt_at)
        .limit(1)
    )


def claim_deliveries(session: Session, channel: str, now: dt.datetime, lease: dt.timedelta, token: str,
                     limit: int) -> list[Delivery]:
    """Claim due deliveries of a channel for one worker until ``now + lease``.

    As with reminders: ``SKIP LOCKED`` on PostgreSQL, the write lock on SQLite;
    the claim token lets the worker recognise its own claim when it records the outcome.
    """
    due = select(Delivery.id).where(_due(channel, now)).order_by(Delivery.next_attempt_at).limit(limit)
    if session.get_bind().dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    stmt = (
        update(Delivery)
        .where(Delivery.id.in_(due.scalar_subquery()), _due(channel, now))
        .values(status="sending", claimed_until=now + lease, claim_token=token)
        .returning(Delivery)
    )
    return list(session.scalars(stmt, execution_options={"synchronize_session": False}))


def list_deliveries(
    session: Session,
    *,
    recipient_sub: str | None = None,
    webhook_id: str | None = None,
    channel: str | None = None,
    status: str | None = None,
    booking_id: str | None = None,
    limit: int,
    after: list | None,
) -> list[Delivery]:
    """Deliveries, newest first."""
    stmt = select(Delivery).order_by(Delivery.created_at.desc(), Delivery.id.desc()).limit(limit + 1)
    if recipient_sub is not None:
        stmt = stmt.where(Delivery.recipient_sub == recipient_sub)
    if webhook_id is not None:
        stmt = stmt.where(Delivery.webhook_id == webhook_id)
    if channel:
        stmt = stmt.where(Delivery.channel == channel)
    if status:
        stmt = stmt.where(Delivery.status == status)
    if booking_id:
        stmt = stmt.where(Delivery.booking_id == booking_id)
    if after:
        at = parse_rfc3339(after[0])
        stmt = stmt.where(or_(Delivery.created_at < at, and_(Delivery.created_at == at, Delivery.id < after[1])))
    return list(session.scalars(stmt))


def attempts_of(session: Session, delivery_ids: list[str]) -> dict[str, list[DeliveryAttempt]]:
    """The attempts of some deliveries, in order."""
    out: dict[str, list[DeliveryAttempt]] = {d: [] for d in delivery_ids}
    if not delivery_ids:
        return out
    rows = session.scalars(
        select(DeliveryAttempt).where(DeliveryAttempt.delivery_id.in_(delivery_ids)).order_by(DeliveryAttempt.id)
    )
    for row in rows:
        out[row.delivery_id].append(row)
    return out


FINISHED = ("sent", "dead", "cancelled")


def purge_deliveries(session: Session, before: dt.datetime, limit: int) -> int:
    """Delete up to ``limit`` finished deliveries made before ``before`` and not tried since, with their
    attempts; returns how many."""
    tried_since = exists().where(DeliveryAttempt.delivery_id == Delivery.id, DeliveryAttempt.started_at >= before)
    ids = list(session.scalars(
        select(Delivery.id).where(Delivery.status.in_(FINISHED), Delivery.created_at < before, ~tried_since)
        .limit(limit)
    ))
    if ids:
        session.execute(delete(DeliveryAttempt).where(DeliveryAttempt.delivery_id.in_(ids)))
        session.execute(delete(Delivery).where(Delivery.id.in_(ids)))
    return len(ids)


def cancel_pending(session: Session, webhook_id: str) -> None:
    """Withdraw the deliveries still waiting for a deleted webhook."""
    session.execute(
        update(Delivery)
        .where(Delivery.webhook_id == webhook_id, Delivery.status.in_(("pending", "sending")))
        .values(status="cancelled")
    )


# -- webhooks ---------------------------------------------------------------------------------------


def live_webhooks(session: Session) -> list[Webhook]:
    """Enabled, not deleted webhooks."""
    return list(session.scalars(select(Webhook).where(Webhook.enabled.is_(True), Webhook.deleted_at.is_(None))))


def list_webhooks(session: Session, owner_sub: str | None, limit: int, after: list | None) -> list[Webhook]:
    """Webhooks by creation, oldest first; ``owner_sub`` None lists everyone's."""
    stmt = select(Webhook).where(Webhook.deleted_at.is_(None)).order_by(Webhook.created_at, Webhook.id)
    if owner_sub is not None:
        stmt = stmt.where(Webhook.owner_sub == owner_sub)
    if after:
        at = parse_rfc3339(after[0])
        stmt = stmt.where(or_(Webhook.created_at > at, and_(Webhook.created_at == at, Webhook.id > after[1])))
    return list(session.scalars(stmt.limit(limit + 1)))
