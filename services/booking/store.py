"""Booking tables and queries. Functions take a session and never commit.

Besides its own bookings, the service keeps a read model of inventory
(labs, resources, outages, qualifications) fed by inventory's events.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Index,
    Integer,
    MetaData,
    Row,
    String,
    Text,
    and_,
    bindparam,
    delete,
    extract,
    func,
    literal,
    or_,
    select,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from services.booking.domain import BILLED, LIVE, Interval, Place, Policy
from shared.db import UTCDateTime, advisory_lock, execute_direct, insert_rows, upsert_insert
from shared.outbox import define_outbox
from shared.timeutil import iso, parse_rfc3339
from shared.timeutil import now as utcnow


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
        # Only bookings still waiting for their check-in deadline are in it: the no-show job's queue.
        Index("ix_bookings_checkin_due", "checkin_due", postgresql_where=text("checkin_due IS NOT NULL"),
              sqlite_where=text("checkin_due IS NOT NULL")),
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
    #: When this booking becomes a no-show unless checked in (only where the resource requires check-in);
    #: cleared once that is settled (checked in, no-show, or no longer live).
    checkin_due: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: A series occurrence's slot: the start its rule gave it (RFC 5545 RECURRENCE-ID). Moving this
    #: occurrence alone keeps it; moving this and the following ones moves the slots too.
    recurrence_id: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)

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
        if self.series_id and self.recurrence_id is not None:
            body["recurrence_id"] = iso(self.recurrence_id)
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
        advisory_lock(session, _lock_key(resource_id))


def _lock_key(resource_id: str) -> str:
    return f"booking:{resource_id}"


def insert_bookings(session: Session, rows: Sequence[Booking]) -> None:
    """Insert new bookings in one executemany, without the ORM's unit of work (the write path's cost).

    The rows stay transient: nothing later in the transaction should expect them in the session.
    """
    columns = Booking.__table__.columns
    insert_rows(session, Booking.__table__, [{c.key: getattr(row, c.key) for c in columns} for row in rows])


def place_of(lab: Any, res: Any) -> Place:
    """Combine the read-model rows (a ``LabView`` or None, a ``ResourceView``, or rows with their
    columns) into the domain's view of a bookable place."""
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


@dataclass(frozen=True)
class Facts:
    """What the rules need besides the place, read with it: outages within ``window``, and ``sub``'s
    qualification (``qualified`` false when there is none; ``expires`` None when it never expires)."""

    window: Interval
    outages: tuple[Interval, ...]
    sub: str
    qualified: bool
    expires: dt.datetime | None

    def outages_within(self, start: dt.datetime, end: dt.datetime) -> list[Interval] | None:
        """The outages overlapping ``[start, end)``; None when that reaches beyond what was read."""
        if start < self.window[0] or end > self.window[1]:
            return None
        return [(s, e) for s, e in self.outages if s < end and e > start]


_R, _L = ResourceView.__table__, LabView.__table__
_O, _Q = OutageView.__table__, QualificationView.__table__
#: The place, the outages of a window and a user's qualification in one statement, built once so its
#: compiled form is cached (one row per outage; the outage columns are NULL when there is none).
_PLACE_AND_FACTS = (
    select(
        _R.c.id, _R.c.lab_id, _R.c.name, _R.c.category, _R.c.status, _R.c.policy, _R.c.rates,
        _L.c.id.label("lab_known"), _L.c.name.label("lab_name"), _L.c.org, _L.c.timezone, _L.c.managers,
        _L.c.show_titles, _O.c.start_at, _O.c.end_at, _Q.c.sub.label("qualified"), _Q.c.expires,
    )
    .select_from(
        _R.outerjoin(_L, _L.c.id == _R.c.lab_id)
        .outerjoin(_O, and_(_O.c.resource_id == _R.c.id, _O.c.start_at < bindparam("w_end"),
                            _O.c.end_at > bindparam("w_start")))
        .outerjoin(_Q, and_(_Q.c.resource_id == _R.c.id, _Q.c.sub == bindparam("sub")))
    )
    .where(_R.c.id == bindparam("resource_id"))
    .order_by(_O.c.start_at)
)


#: The read model's version, read right after the resource's lock (the row is there from migration 0004).
_READ_MODEL_VERSION = "SELECT version FROM read_model_version WHERE id = 1"
_BUMP_READ_MODEL = text("UPDATE read_model_version SET version = version + 1 WHERE id = 1")
#: The outages a cached place-and-facts holds reach this far (all of the resource's future ones).
_FOREVER = dt.datetime(9999, 1, 1, tzinfo=dt.UTC)


def read_model_changed(session: Session) -> None:
    """Count a change to the read model, in the transaction that made it (every cache of it goes stale)."""
    execute_direct(session, _BUMP_READ_MODEL, {})


def lock_for_booking(session: Session, resource_id: str) -> int | None:
    """``lock_resource``, and then the read model's version as of after the lock (on PostgreSQL BEGIN,
    the lock and the version in one round trip); None when the version row is missing."""
    if session.get_bind().dialect.name == "postgresql":
        rows = advisory_lock(session, _lock_key(resource_id), then=_READ_MODEL_VERSION)
    else:
        rows = list(session.connection().exec_driver_sql(_READ_MODEL_VERSION))
    return int(rows[0][0]) if rows else None


class FactsCache:
    """Recently used place-and-facts by (resource, user), each with the read-model version it was read at;
    an entry counts only while that version is current. Least recently used entries go first."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[str, str], tuple[int, Place, Facts]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, resource_id: str, sub: str, version: int) -> tuple[Place, Facts] | None:
        with self._lock:
            entry = self._entries.get((resource_id, sub))
            if entry is None or entry[0] != version:
                return None
            self._entries.move_to_end((resource_id, sub))
            return entry[1], entry[2]

    def put(self, resource_id: str, sub: str, version: int, place: Place, facts: Facts) -> None:
        with self._lock:
            self._entries[(resource_id, sub)] = (version, place, facts)
            self._entries.move_to_end((resource_id, sub))
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)


#: One cache per database (a process may serve several, as the tests do).
_CACHES: dict[str, FactsCache] = {}


def facts_cache(url: str) -> FactsCache:
    """This process's cache of place-and-facts for the database at ``url``."""
    cache = _CACHES.get(url)
    if cache is None:
        cache = _CACHES.setdefault(url, FactsCache())
    return cache


def place_and_facts(
    session: Session, resource_id: str, window: Interval, sub: str,
    version: int | None = None, cache: FactsCache | None = None,
) -> tuple[Place, Facts] | None:
    """The place with the outages overlapping ``window`` and ``sub``'s qualification: one query.

    With the read model's ``version`` (from ``lock_for_booking``) and a ``cache``, an
    entry read at that version answers without a query; otherwise the query reads
    every outage from the window's start on and fills the cache. None when booking
    has not heard of the resource.
    """
    if version is not None and cache is not None:
        hit = cache.get(resource_id, sub, version)
        if hit is not None and hit[1].window[0] <= window[0]:
            return hit
        window = (min(window[0], utcnow()), _FOREVER)
    rows = execute_direct(
        session, _PLACE_AND_FACTS, {"resource_id": resource_id, "w_start": window[0], "w_end": window[1], "sub": sub}
    )
    if not rows:
        return None
    r = rows[0]
    lab = SimpleNamespace(name=r.lab_name, org=r.org, timezone=r.timezone, managers=r.managers,
                          show_titles=r.show_titles) if r.lab_known is not None else None
    place = place_of(lab, r)
    outages = tuple((row.start_at, row.end_at) for row in rows if row.start_at is not None)
    facts = Facts(window, outages, sub, r.qualified is not None, r.expires)
    if version is not None and cache is not None:
        cache.put(resource_id, sub, version, place, facts)
    return place, facts


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


def qualification_of(session: Session, resource_id: str, sub: str) -> QualificationView | None:
    """``sub``'s qualification on the resource (expired or not), or None."""
    return session.get(QualificationView, (resource_id, sub))


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


def series_occurrences(
    session: Session, series_id: str, *, live: bool = False, after: dt.datetime | None = None, lock: bool = False
) -> list[Booking]:
    """The occurrences of a series in time order: with ``live`` only confirmed or pending ones, with
    ``after`` only those starting after it, with ``lock`` each row locked."""
    stmt = select(Booking).where(Booking.series_id == series_id).order_by(Booking.start_at, Booking.id)
    if live:
        stmt = stmt.where(Booking.status.in_(LIVE))
    if after is not None:
        stmt = stmt.where(Booking.start_at > after)
    if lock:
        stmt = stmt.with_for_update()
    return list(session.scalars(stmt))


def series_ids(session: Session, series_id: str) -> list[str]:
    """The ids of a series' occurrences in time order."""
    return list(session.scalars(
        select(Booking.id).where(Booking.series_id == series_id).order_by(Booking.start_at, Booking.id)
    ))


def managed_lab_ids(session: Session, sub: str) -> set[str]:
    """Labs whose manager list names ``sub``."""
    rows = session.execute(select(LabView.id, LabView.managers)).all()
    return {lab_id for lab_id, managers in rows if any(m.get("sub") == sub for m in managers or [])}


# -- calendar feeds ---------------------------------------------------------------------------------


class ReadModelVersion(Base):
    """One row counting the changes to booking's read model (labs, resources, outages, qualifications).

    Every consumer transaction that applies an inventory event bumps it
    (``read_model_changed``), so what a process caches of the read model
    (``FactsCache``) is valid exactly while the number it was read with is still
    the row's.
    """

    __tablename__ = "read_model_version"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)


class FeedVersion(Base):
    """How often a feed's content has changed, bumped in the same transaction as each change it shows.

    ``scope`` is ``resource``, ``lab`` or ``user`` and ``key`` that entity's id (a
    user's ``sub``). A feed's ETag and Last-Modified come from this row, so a
    conditional request is answered without reading a single booking.
    """

    __tablename__ = "feed_versions"
    scope: Mapped[str] = mapped_column(String(16), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    changed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class FeedToken(Base):
    """The secret in a user's personal feed URL, kept only as its SHA-256; one per user."""

    __tablename__ = "feed_tokens"
    user_sub: Mapped[str] = mapped_column(String(200), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


#: The order feed rows are bumped in. Every writer takes their row locks in this one
#: order (scope, then key), so two transactions can wait on each other but never deadlock.
FEED_SCOPES = ("resource", "lab", "user")

#: The columns a feed shows of a booking, in ``feed_render.Entry`` order.
FEED_COLUMNS = (
    Booking.id,
    Booking.resource_id,
    Booking.title,
    Booking.project,
    Booking.start_at,
    Booking.end_at,
    Booking.status,
    Booking.sequence,
    Booking.updated_at,
)


#: A feed-version upsert: a new key starts at 1, a known one counts up.
_BUMP = (f"ON CONFLICT (scope, key) DO UPDATE SET version = {FeedVersion.__tablename__}.version + 1, "
         "changed_at = excluded.changed_at")


def bump_feeds(
    session: Session,
    *,
    resources: Iterable[str] = (),
    labs: Iterable[str] = (),
    users: Iterable[str] = (),
    at: dt.datetime | None = None,
) -> None:
    """Mark the feeds of these resources, labs and users changed: one upsert of every row.

    Call it last in the write transaction, so the rows stay locked only until the commit.
    """
    stamp = at or utcnow()
    keys = {"resource": resources, "lab": labs, "user": users}
    rows = [
        {"scope": scope, "key": key, "version": 1, "changed_at": stamp}
        for scope in FEED_SCOPES
        for key in sorted({k for k in keys[scope] if k})
    ]
    if rows:
        insert_rows(session, FeedVersion.__table__, rows, on_conflict=_BUMP)


def bump_feeds_for(session: Session, bookings: Iterable[Booking]) -> None:
    """Mark changed the feeds that show these bookings: their resources' (and so their labs') and owners'."""
    bookings = list(bookings)
    bump_feeds(session, resources=[b.resource_id for b in bookings], users=[b.user_sub for b in bookings])


def _feed_users(session: Session, since: dt.datetime, *conditions) -> list[str]:
    return list(session.scalars(select(Booking.user_sub).where(Booking.end_at > since, *conditions).distinct()))


def bump_feeds_of_resource(session: Session, resource_id: str, lab_id: str, since: dt.datetime) -> None:
    """After the read model's resource changed (name, status): its feed, its lab's and its users'."""
    users = _feed_users(session, since, Booking.resource_id == resource_id)
    bump_feeds(session, resources=[resource_id], labs=[lab_id], users=users)


def bump_feeds_of_lab(session: Session, lab_id: str, since: dt.datetime) -> None:
    """After the read model's lab changed (name, building, zone, titles): every feed showing it."""
    resources = session.scalars(select(ResourceView.id).where(ResourceView.lab_id == lab_id))
    users = _feed_users(session, since, Booking.lab_id == lab_id)
    bump_feeds(session, resources=resources, labs=[lab_id], users=users)


def _version_of(scope: str, key_column):
    return and_(FeedVersion.scope == scope, FeedVersion.key == key_column)


def resource_feed_state(session: Session, resource_id: str):
    """``(status, policy, lab_id, version, changed_at)`` of a resource's feed, or None."""
    return session.execute(
        select(ResourceView.status, ResourceView.policy, ResourceView.lab_id, FeedVersion.version,
               FeedVersion.changed_at)
        .outerjoin(FeedVersion, _version_of("resource", ResourceView.id))
        .where(ResourceView.id == resource_id)
    ).first()


def lab_feed_state(session: Session, lab_id: str) -> tuple[str, int, dt.datetime | None] | None:
    """``(name, version, changed_at)`` of a lab's feed, or None.

    A booking bumps only its resource's version, not a lab-wide row that every
    booking of the lab would have to lock; the lab feed's version is its own
    (lab-level changes) plus the sum of its resources'. Versions only grow, so
    any change makes the sum grow.
    """
    lab = session.execute(
        select(LabView.name, FeedVersion.version, FeedVersion.changed_at)
        .outerjoin(FeedVersion, _version_of("lab", LabView.id))
        .where(LabView.id == lab_id)
    ).first()
    if lab is None:
        return None
    total, latest = session.execute(
        select(func.coalesce(func.sum(FeedVersion.version), 0), func.max(FeedVersion.changed_at))
        .join(ResourceView, _version_of("resource", ResourceView.id))
        .where(ResourceView.lab_id == lab_id)
    ).one()
    changed = max((t for t in (lab.changed_at, latest) if t is not None), default=None)
    return lab.name, (lab.version or 0) + int(total), changed


def lab_policies(session: Session, lab_id: str) -> list[dict[str, Any]]:
    """The policies of a lab's resources (for the horizon of its feed)."""
    return list(session.scalars(select(ResourceView.policy).where(ResourceView.lab_id == lab_id)))


def user_feed_state(session: Session, token_hash: str):
    """``(user_sub, token_hash, version, changed_at)`` of the feed a token opens, or None."""
    return session.execute(
        select(FeedToken.user_sub, FeedToken.token_hash, FeedVersion.version, FeedVersion.changed_at)
        .outerjoin(FeedVersion, _version_of("user", FeedToken.user_sub))
        .where(FeedToken.token_hash == token_hash)
    ).first()


def set_feed_token(session: Session, user_sub: str, token_hash: str, at: dt.datetime) -> None:
    """Give a user a new feed token; the old one stops working with this transaction."""
    table = FeedToken.__table__
    stmt = upsert_insert(session, table).values(user_sub=user_sub, token_hash=token_hash, created_at=at)
    session.execute(stmt.on_conflict_do_update(
        index_elements=[table.c.user_sub],
        set_={"token_hash": stmt.excluded.token_hash, "created_at": stmt.excluded.created_at},
    ))


def drop_feed_token(session: Session, user_sub: str) -> bool:
    """Revoke a user's feed token; False when there was none."""
    return session.execute(delete(FeedToken).where(FeedToken.user_sub == user_sub)).rowcount > 0


def feed_bookings(
    session: Session,
    start: dt.datetime,
    end: dt.datetime,
    longest: dt.timedelta,
    *,
    resource_id: str | None = None,
    lab_id: str | None = None,
    user_sub: str | None = None,
) -> list[Row]:
    """``FEED_COLUMNS`` of the bookings overlapping ``[start, end)`` of one resource, lab or user.

    ``longest`` bounds how long before ``start`` a booking can begin and still
    overlap, so the (resource|lab|user, start_at) index reads only the window.
    """
    stmt = select(*FEED_COLUMNS).where(
        Booking.start_at < end, Booking.start_at > start - longest, Booking.end_at > start
    )
    if resource_id is not None:
        stmt = stmt.where(Booking.resource_id == resource_id)
    if lab_id is not None:
        stmt = stmt.where(Booking.lab_id == lab_id)
    if user_sub is not None:
        stmt = stmt.where(Booking.user_sub == user_sub)
    return list(session.execute(stmt.order_by(Booking.start_at, Booking.id)))


def feed_places(
    session: Session, *, resource_ids: Iterable[str] = (), lab_id: str | None = None
) -> list[Row]:
    """``(resource_id, resource_name, lab_id, lab_name, lab_data, timezone, show_titles)`` for feeds."""
    stmt = select(
        ResourceView.id, ResourceView.name, ResourceView.lab_id, LabView.name, LabView.data, LabView.timezone,
        LabView.show_titles,
    ).outerjoin(LabView, LabView.id == ResourceView.lab_id)
    if lab_id is not None:
        stmt = stmt.where(ResourceView.lab_id == lab_id)
    else:
        stmt = stmt.where(ResourceView.id.in_(sorted(set(resource_ids))))
    return list(session.execute(stmt))


# -- waitlist -----------------------------------------------------------------------------------------

_WAITING = text("status = 'waiting'")


class WaitlistEntry(Base):
    """Someone waiting for a taken window of a resource: given the booking once the whole window is free.

    ``status`` is ``waiting``, then ``booked`` (a confirmed booking, ``booking_id``),
    ``offered`` (a pending one, where the resource needs approval), ``skipped`` (the
    window freed but a rule refused it to this user: ``violations``), ``expired``
    (its start passed) or ``left``. The owner's roles are kept so the rules can be
    checked for them when the time frees, long after their request.
    """

    __tablename__ = "waitlist_entries"
    __table_args__ = (
        # The queue of one resource (promotion, positions) and the expiry job's: waiting entries only.
        Index("ix_waitlist_waiting", "resource_id", "start_at", postgresql_where=_WAITING, sqlite_where=_WAITING),
        Index("ix_waitlist_waiting_start", "start_at", postgresql_where=_WAITING, sqlite_where=_WAITING),
        Index("ix_waitlist_user_start", "user_sub", "start_at"),
        Index("ix_waitlist_lab_start", "lab_id", "start_at"),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    resource_id: Mapped[str] = mapped_column(String(36))
    lab_id: Mapped[str] = mapped_column(String(36))
    user_sub: Mapped[str] = mapped_column(String(200))
    user_name: Mapped[str] = mapped_column(String(200), default="")
    user_email: Mapped[str] = mapped_column(String(320), default="")
    user_org: Mapped[str] = mapped_column(String(100), default="")
    user_roles: Mapped[list[str]] = mapped_column(JSON)
    title: Mapped[str] = mapped_column(String(500), default="")
    project: Mapped[str] = mapped_column(String(200), default="")
    start_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    end_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(20))
    booking_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    violations: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)

    def snapshot(self, place: Place | None = None, position: int | None = None) -> dict[str, Any]:
        """The entry as its owner, its lab's managers and the ``waitlist.*`` events see it."""
        body: dict[str, Any] = {
            "id": self.id,
            "resource_id": self.resource_id,
            "lab_id": self.lab_id,
            "start": iso(self.start_at),
            "end": iso(self.end_at),
            "title": self.title,
            "project": self.project,
            "status": self.status,
            "position": position if self.status == "waiting" else None,
            "booking_id": self.booking_id,
            "user": {"sub": self.user_sub, "name": self.user_name, "org": self.user_org, "email": self.user_email},
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        }
        if self.violations:
            body["violations"] = self.violations
        if place is not None:
            body["resource_name"] = place.resource_name
            body["lab"] = {"id": place.lab_id, "name": place.lab_name, "timezone": place.timezone,
                           "managers": list(place.manager_contacts)}
        return body


def waiting_entries(
    session: Session, resource_id: str, start: dt.datetime, end: dt.datetime, *, after: dt.datetime,
    lock: bool = False,
) -> list[WaitlistEntry]:
    """Waiting entries of a resource whose window overlaps ``[start, end)`` and starts after ``after``,
    first come first (with ``lock``, each row locked for the rest of the transaction)."""
    stmt = select(WaitlistEntry).where(
        WaitlistEntry.resource_id == resource_id,
        WaitlistEntry.status == "waiting",
        WaitlistEntry.start_at < end,
        WaitlistEntry.end_at > start,
        WaitlistEntry.start_at > after,
    ).order_by(WaitlistEntry.created_at, WaitlistEntry.id)
    if lock:
        stmt = stmt.with_for_update()
    return list(session.scalars(stmt))


def waiting_for(
    session: Session, resource_id: str, sub: str, start: dt.datetime, end: dt.datetime
) -> WaitlistEntry | None:
    """``sub``'s waiting entry on the resource overlapping ``[start, end)``, if any."""
    return session.scalars(select(WaitlistEntry).where(
        WaitlistEntry.resource_id == resource_id,
        WaitlistEntry.user_sub == sub,
        WaitlistEntry.status == "waiting",
        WaitlistEntry.start_at < end,
        WaitlistEntry.end_at > start,
    ).limit(1)).first()


def waiters_of(session: Session, resource_ids: Iterable[str], start: dt.datetime, end: dt.datetime,
               after: dt.datetime) -> list[WaitlistEntry]:
    """Waiting entries of these resources overlapping ``[start, end)`` (to number the queue)."""
    ids = sorted(set(resource_ids))
    if not ids:
        return []
    return list(session.scalars(select(WaitlistEntry).where(
        WaitlistEntry.resource_id.in_(ids),
        WaitlistEntry.status == "waiting",
        WaitlistEntry.start_at < end,
        WaitlistEntry.end_at > start,
        WaitlistEntry.start_at > after,
    )))


def list_waitlist(
    session: Session,
    *,
    own: str,
    managed: set[str] | None,
    mine: bool,
    resource_id: str | None,
    lab_id: str | None,
    status: str | None,
    limit: int,
    after: list | None,
) -> list[WaitlistEntry]:
    """Entries the caller may see (their own, and with ``managed`` those of these labs; None: every lab),
    by start time, then id."""
    stmt = select(WaitlistEntry).order_by(WaitlistEntry.start_at, WaitlistEntry.id).limit(limit + 1)
    if mine:
        stmt = stmt.where(WaitlistEntry.user_sub == own)
    elif managed is not None:
        stmt = stmt.where(or_(WaitlistEntry.user_sub == own, WaitlistEntry.lab_id.in_(sorted(managed))))
    if resource_id:
        stmt = stmt.where(WaitlistEntry.resource_id == resource_id)
    if lab_id:
        stmt = stmt.where(WaitlistEntry.lab_id == lab_id)
    if status:
        stmt = stmt.where(WaitlistEntry.status == status)
    if after:
        at = parse_rfc3339(after[0])
        stmt = stmt.where(or_(WaitlistEntry.start_at > at,
                              and_(WaitlistEntry.start_at == at, WaitlistEntry.id > after[1])))
    return list(session.scalars(stmt))


def claim_expired_waiters(session: Session, at: dt.datetime, limit: int) -> list[WaitlistEntry]:
    """Waiting entries whose start has passed, locked (``SKIP LOCKED``: another replica's are left to it)."""
    return list(session.scalars(
        select(WaitlistEntry)
        .where(WaitlistEntry.status == "waiting", WaitlistEntry.start_at <= at)
        .order_by(WaitlistEntry.start_at, WaitlistEntry.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ))


# -- check-in deadlines -------------------------------------------------------------------------------


def due_checkin_resources(session: Session, at: dt.datetime, limit: int) -> list[str]:
    """Resources with bookings whose check-in deadline has passed and is not settled yet."""
    return list(session.scalars(
        select(Booking.resource_id)
        .where(Booking.checkin_due.is_not(None), Booking.checkin_due <= at)
        .distinct()
        .limit(limit)
    ))


def claim_due_checkins(session: Session, resource_id: str, at: dt.datetime, limit: int) -> list[Booking]:
    """One resource's bookings whose check-in deadline has passed, locked (``SKIP LOCKED``)."""
    return list(session.scalars(
        select(Booking)
        .where(Booking.resource_id == resource_id, Booking.checkin_due.is_not(None), Booking.checkin_due <= at)
        .order_by(Booking.checkin_due, Booking.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ))


def reschedule_checkins(session: Session, resource_id: str, due, after: dt.datetime) -> int:
    """After the resource's check-in rule changed: set the deadline (``due(start)``) of its live
    bookings that start after ``after`` and nobody checked in to yet; returns how many."""
    rows = session.scalars(select(Booking).where(
        Booking.resource_id == resource_id, Booking.status.in_(LIVE), Booking.start_at > after,
        Booking.checked_in_at.is_(None),
    ))
    count = 0
    for row in rows:
        row.checkin_due = due(row.start_at)
        count += 1
    return count


# -- usage and utilisation -------------------------------------------------------------------------------

def _clipped_seconds(session: Session, start: dt.datetime, end: dt.datetime):
    """SQL for the seconds of each booking inside ``[start, end)`` (the row filter keeps it positive)."""
    lo, hi = literal(start, UTCDateTime), literal(end, UTCDateTime)
    if session.get_bind().dialect.name == "postgresql":
        return extract("epoch", func.least(Booking.end_at, hi) - func.greatest(Booking.start_at, lo))
    # SQLite: fixed-format UTC text; the two-argument min/max are scalar, julianday counts days.
    return (func.julianday(func.min(Booking.end_at, hi)) - func.julianday(func.max(Booking.start_at, lo))) * 86400.0


def _in_window(start: dt.datetime, end: dt.datetime, longest: dt.timedelta):
    # The lower bound on start_at lets the (lab|resource, start_at) index read only the window.
    return and_(Booking.start_at < end, Booking.start_at > start - longest, Booking.end_at > start)


def usage_totals(
    session: Session,
    start: dt.datetime,
    end: dt.datetime,
    longest: dt.timedelta,
    *,
    lab_ids: Iterable[str] | None,
    resource_id: str | None,
    org: str | None,
) -> list[Row]:
    """``(resource_id, org, project, bookings, seconds)`` per resource × org × project: billed bookings
    overlapping ``[start, end)``, their time clipped to it. Summed by the database."""
    stmt = select(
        Booking.resource_id, Booking.user_org, Booking.project, func.count(),
        func.sum(_clipped_seconds(session, start, end)),
    ).where(Booking.status.in_(BILLED), _in_window(start, end, longest)).group_by(
        Booking.resource_id, Booking.user_org, Booking.project)
    if lab_ids is not None:
        stmt = stmt.where(Booking.lab_id.in_(sorted(set(lab_ids))))
    if resource_id:
        stmt = stmt.where(Booking.resource_id == resource_id)
    if org:
        stmt = stmt.where(Booking.user_org == org)
    return list(session.execute(stmt))


def booked_seconds(
    session: Session, lab_id: str, start: dt.datetime, end: dt.datetime, longest: dt.timedelta
) -> dict[tuple[str, str], float]:
    """Seconds of billed bookings inside ``[start, end)`` per (resource, status) of one lab."""
    rows = session.execute(
        select(Booking.resource_id, Booking.status, func.sum(_clipped_seconds(session, start, end)))
        .where(Booking.lab_id == lab_id, Booking.status.in_(BILLED), _in_window(start, end, longest))
        .group_by(Booking.resource_id, Booking.status)
    )
    return {(rid, status): float(secs or 0) for rid, status, secs in rows}


def places_by_id(session: Session, resource_ids: Iterable[str]) -> dict[str, Place]:
    """The resources (with their labs) of these ids."""
    ids = sorted(set(resource_ids))
    if not ids:
        return {}
    rows = session.execute(
        select(ResourceView, LabView).outerjoin(LabView, LabView.id == ResourceView.lab_id)
        .where(ResourceView.id.in_(ids))
    ).all()
    return {res.id: place_of(lab, res) for res, lab in rows}


def places_of_lab(session: Session, lab_id: str) -> list[Place]:
    """Every resource of a lab, by name."""
    rows = session.execute(
        select(ResourceView, LabView).outerjoin(LabView, LabView.id == ResourceView.lab_id)
        .where(ResourceView.lab_id == lab_id).order_by(ResourceView.name, ResourceView.id)
    ).all()
    return [place_of(lab, res) for res, lab in rows]


def outages_of_lab(session: Session, lab_id: str, start: dt.datetime, end: dt.datetime) -> dict[str, list[Interval]]:
    """Outages overlapping ``[start, end)`` of every resource of a lab, by resource."""
    rows = session.execute(
        select(OutageView.resource_id, OutageView.start_at, OutageView.end_at)
        .join(ResourceView, ResourceView.id == OutageView.resource_id)
        .where(ResourceView.lab_id == lab_id, OutageView.start_at < end, OutageView.end_at > start)
    )
    out: dict[str, list[Interval]] = {}
    for rid, lo, hi in rows:
        out.setdefault(rid, []).append((lo, hi))
    return out
