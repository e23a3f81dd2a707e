"""Booking tables and queries. Functions take a session and never commit.

Besides its own bookings, the service keeps a read model of inventory
(labs, resources, outages, qualifications) fed by inventory's events.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    and_,
    or_,
    select,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from services.booking.domain import LIVE, Interval, Place, Policy
from shared.db import UTCDateTime
from shared.outbox import define_outbox
from shared.timeutil import iso, parse_rfc3339


class Base(DeclarativeBase):
    """Booking's own metadata."""

    metadata = MetaData()


OUTBOX, INBOX = define_outbox(Base.metadata)


class LabView(Base):
    """Inventory's lab, as its events describe it."""

    __tablename__ = "lab_views"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    org: Mapped[str] = mapped_column(String(100))
    timezone: Mapped[str] = mapped_column(String(64))
    managers: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    show_titles: Mapped[bool] = mapped_column(Boolean, default=False)
    version: Mapped[int] = mapped_column(Integer)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)


class ResourceView(Base):
    """Inventory's resource, as its events describe it."""

    __tablename__ = "resource_views"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    lab_id: Mapped[str] = mapped_column(String(36), index=True)
    name: Mapped[str] = mapped_column(String(200))
    category: Mapped[str] = mapped_column(String(200), index=True)
    status: Mapped[str] = mapped_column(String(20))
    policy: Mapped[dict[str, Any]] = mapped_column(JSON)
    rates: Mapped[dict[str, Any]] = mapped_column(JSON)
    version: Mapped[int] = mapped_column(Integer)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)


class OutageView(Base):
    """An outage of a resource (deleted ones are removed)."""

    __tablename__ = "outage_views"
    __table_args__ = (Index("ix_outage_views_resource", "resource_id", "start_at"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    resource_id: Mapped[str] = mapped_column(String(36))
    start_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    end_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    reason: Mapped[str] = mapped_column(Text, default="")


class QualificationView(Base):
    """A user qualified on a resource."""

    __tablename__ = "qualification_views"
    resource_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    sub: Mapped[str] = mapped_column(String(200), primary_key=True)
    expires: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Booking(Base):
    """One reserved block of one resource; a series is several bookings sharing ``series_id``.

    ``hold_until`` is the end plus the resource's buffer: the database refuses
    two live bookings of one resource whose ``[start_at, hold_until)`` overlap.
    """

    __tablename__ = "bookings"
    __table_args__ = (
        Index("ix_bookings_resource_start", "resource_id", "start_at"),
        Index("ix_bookings_user_start", "user_sub", "start_at"),
        Index("ix_bookings_lab_start", "lab_id", "start_at"),
        Index("ix_bookings_series", "series_id"),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    resource_id: Mapped[str] = mapped_column(String(36))
    lab_id: Mapped[str] = mapped_column(String(36))
    series_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    rrule: Mapped[str | None] = mapped_column(String(500), nullable=True)
    user_sub: Mapped[str] = mapped_column(String(200))
    user_name: Mapped[str] = mapped_column(String(200), default="")
    user_email: Mapped[str] = mapped_column(String(320), default="")
    user_org: Mapped[str] = mapped_column(String(100), default="")
    title: Mapped[str] = mapped_column(String(500), default="")
    project: Mapped[str] = mapped_column(String(200), default="")
    start_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    end_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    hold_until: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(20))
    cancel_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    decided_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    sequence: Mapped[int] = mapped_column(Integer, default=0)
    checked_in_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)

    def snapshot(self, place: Place | None = None) -> dict[str, Any]:
        """The full booking, as its owner, its lab's managers and the events see it."""
        body: dict[str, Any] = {
            "id": self.id,
            "resource_id": self.resource_id,
            "lab_id": self.lab_id,
            "start": iso(self.start_at),
            "end": iso(self.end_at),
            "title": self.title,
            "project": self.project,
            "status": self.status,
            "user": {"sub": self.user_sub, "name": self.user_name, "org": self.user_org, "email": self.user_email},
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "sequence": self.sequence,
            "cancel_reason": self.cancel_reason,
            "checked_in_at": iso(self.checked_in_at),
            "series_id": self.series_id,
        }
        if self.rrule:
            body["rrule"] = self.rrule
        if place is not None:
            body["resource_name"] = place.resource_name
            body["lab"] = {
                "id": place.lab_id,
                "name": place.lab_name,
                "org": place.lab_org,
                "timezone": place.timezone,
                "managers": list(place.manager_contacts),
            }
        return body

    def busy(self) -> dict[str, Any]:
        """What anyone may see of someone else's booking."""
        return {"resource_id": self.resource_id, "start": iso(self.start_at), "end": iso(self.end_at),
                "status": self.status}


def lock_resource(session: Session, resource_id: str) -> None:
    """Serialise the writes to one resource's bookings for the rest of the transaction.

    On PostgreSQL two transactions inserting clashing rows at once can each wait
    on the other's exclusion check and deadlock; a transaction-scoped advisory
    lock per resource makes the second one wait and then see the first one's
    row, so the constraint refuses it cleanly. SQLite writers already hold the
    database lock.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
                        {"key": f"booking:{resource_id}"})


def place_of(lab: LabView | None, res: ResourceView) -> Place:
    """Combine the read-model rows into the domain's view of a bookable place."""
    return Place(
        resource_id=res.id,
        resource_name=res.name,
        category=res.category,
        status=res.status,
        policy=Policy.from_dict(res.policy),
        rates=res.rates,
        lab_id=res.lab_id,
        lab_name=lab.name if lab else "",
        lab_org=lab.org if lab else "",
        timezone=lab.timezone if lab else "UTC",
        managers=frozenset(m["sub"] for m in (lab.managers if lab else [])),
        manager_contacts=tuple(lab.managers if lab else ()),
        show_titles=bool(lab.show_titles) if lab else False,
    )


def load_place(session: Session, resource_id: str) -> Place | None:
    """The resource and its lab in one query, or None when booking has not heard of it."""
    row = session.execute(
        select(ResourceView, LabView).outerjoin(LabView, LabView.id == ResourceView.lab_id)
        .where(ResourceView.id == resource_id)
    ).first()
    if row is None:
        return None
    return place_of(row[1], row[0])


def places_in_category(session: Session, category: str) -> list[Place]:
    """Every active resource of a category (or its sub-categories) with its lab."""
    rows = session.execute(
        select(ResourceView, LabView)
        .outerjoin(LabView, LabView.id == ResourceView.lab_id)
        .where(
            ResourceView.status == "active",
            or_(ResourceView.category == category, ResourceView.category.startswith(category + "/", autoescape=True)),
        )
        .order_by(ResourceView.name)
    ).all()
    return [place_of(lab, res) for res, lab in rows]


def outages_between(session: Session, resource_id: str, start: dt.datetime, end: dt.datetime) -> list[Interval]:
    """Outages overlapping ``[start, end)``."""
    rows = session.execute(
        select(OutageView.start_at, OutageView.end_at).where(
            OutageView.resource_id == resource_id, OutageView.start_at < end, OutageView.end_at > start
        ).order_by(OutageView.start_at)
    ).all()
    return [(r[0], r[1]) for r in rows]


def is_qualified(session: Session, resource_id: str, sub: str, at: dt.datetime) -> bool:
    """Whether ``sub`` holds a qualification on the resource that is valid at ``at``."""
    row = session.get(QualificationView, (resource_id, sub))
    return row is not None and (row.expires is None or row.expires > at)


def live_bookings(
    session: Session, resource_id: str, start: dt.datetime, end: dt.datetime, exclude: Sequence[str] = ()
) -> list[Booking]:
    """Confirmed or pending bookings whose hold overlaps ``[start, end)``."""
    stmt = select(Booking).where(
        Booking.resource_id == resource_id,
        Booking.status.in_(LIVE),
        Booking.start_at < end,
        Booking.hold_until > start,
    ).order_by(Booking.start_at)
    if exclude:
        stmt = stmt.where(Booking.id.not_in(list(exclude)))
    return list(session.scalars(stmt))


def user_hours(
    session: Session, resource_id: str, sub: str, start: dt.datetime, end: dt.datetime, exclude: Sequence[str] = ()
) -> list[Interval]:
    """A user's live bookings on a resource within ``[start, end)`` (for quotas)."""
    stmt = select(Booking.start_at, Booking.end_at).where(
        Booking.resource_id == resource_id,
        Booking.user_sub == sub,
        Booking.status.in_(LIVE),
        Booking.start_at < end,
        Booking.end_at > start,
    )
    if exclude:
        stmt = stmt.where(Booking.id.not_in(list(exclude)))
    return [(r[0], r[1]) for r in session.execute(stmt).all()]


def list_bookings(
    session: Session,
    *,
    resource_id: str | None,
    lab_id: str | None,
    user_sub: str | None,
    start: dt.datetime | None,
    end: dt.datetime | None,
    status: str | None,
    limit: int,
    after: list | None,
) -> list[Booking]:
    """Bookings by start time, then id."""
    stmt = select(Booking).order_by(Booking.start_at, Booking.id).limit(limit + 1)
    if resource_id:
        stmt = stmt.where(Booking.resource_id == resource_id)
    if lab_id:
        stmt = stmt.where(Booking.lab_id == lab_id)
    if user_sub:
        stmt = stmt.where(Booking.user_sub == user_sub)
    if start is not None:
        stmt = stmt.where(Booking.end_at > start)
    if end is not None:
        stmt = stmt.where(Booking.start_at < end)
    if status:
        stmt = stmt.where(Booking.status == status)
    if after:
        at = parse_rfc3339(after[0])
        stmt = stmt.where(or_(Booking.start_at > at, and_(Booking.start_at == at, Booking.id > after[1])))
    return list(session.scalars(stmt))


def managed_lab_ids(session: Session, sub: str) -> set[str]:
    """Labs whose manager list names ``sub``."""
    rows = session.execute(select(LabView.id, LabView.managers)).all()
    return {lab_id for lab_id, managers in rows if any(m.get("sub") == sub for m in managers or [])}
