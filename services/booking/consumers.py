"""Events in: inventory's facts become booking's read model; outages cancel what they overlap.

Time an outage's cancellations leave outside it, and the time of a removed
outage, is offered to the waitlist in the consumer's transaction, under the
resource's lock, as a cancellation over HTTP would (``handlers.promote_waiters``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from services.booking.domain import LIVE, Policy, checkin_due
from services.booking.feed_render import PAST
from services.booking.handlers import promote_waiters
from services.booking.store import (
    Booking,
    LabView,
    OutageView,
    QualificationView,
    ResourceView,
    bump_feeds,
    bump_feeds_of_lab,
    bump_feeds_of_resource,
    load_place,
    lock_resource,
    read_model_changed,
    reschedule_checkins,
)
from shared.messaging import EventHandler
from shared.service import Runtime
from shared.timeutil import now, parse_rfc3339


def _newer(row, data: dict[str, Any]) -> bool:
    return row is None or int(data.get("version", 0)) >= row.version


def _lab_face(row: LabView | None) -> tuple | None:
    """What the calendar feeds show of a lab."""
    return row and (row.name, row.timezone, row.show_titles, (row.data or {}).get("building"))


def _resource_face(row: ResourceView | None) -> tuple | None:
    """What the calendar feeds show of a resource (a retired one's feed answers 410)."""
    return row and (row.name, row.status, row.lab_id)


def _checkin_rule(policy: dict[str, Any] | None) -> tuple[bool, int]:
    p = Policy.from_dict(policy)
    return p.checkin_required, p.checkin_grace_minutes


def _feeds_since() -> dt.datetime:
    """Bookings ending before this are in no feed's window (with a day to spare)."""
    return now() - PAST - dt.timedelta(days=1)


def upsert_lab(session: Session, event: dict[str, Any]) -> None:
    """``lab.created`` / ``lab.updated``: keep the newest version."""
    data = event["data"]
    row = session.get(LabView, data["id"])
    if not _newer(row, data):
        return
    before = _lab_face(row)
    if row is None:
        row = LabView(id=data["id"])
        session.add(row)
    row.name, row.org, row.timezone = data["name"], data["org"], data["timezone"]
    row.managers = data.get("managers") or []
    row.show_titles = bool(data.get("show_titles"))
    row.version = int(data.get("version", 0))
    row.data = data
    if _lab_face(row) != before:
        bump_feeds_of_lab(session, row.id, _feeds_since())


def upsert_resource(session: Session, event: dict[str, Any]) -> None:
    """``resource.created`` / ``resource.updated`` / ``resource.retired``: keep the newest version."""
    data = event["data"]
    row = session.get(ResourceView, data["id"])
    if not _newer(row, data):
        return
    before = _resource_face(row)
    rule_before = _checkin_rule(row.policy) if row is not None else None
    if row is None:
        row = ResourceView(id=data["id"])
        session.add(row)
    row.lab_id, row.name, row.category = data["lab_id"], data["name"], data["category"]
    row.status, row.policy, row.rates = data["status"], data["policy"], data.get("rates") or {}
    row.version = int(data.get("version", 0))
    row.data = data
    if rule_before is not None and _checkin_rule(row.policy) != rule_before:
        # Upcoming bookings follow the new check-in rule; those under way keep the one they started with.
        policy = Policy.from_dict(row.policy)
        reschedule_checkins(session, row.id, lambda start: checkin_due(policy, start), now())
    if _resource_face(row) != before:
        bump_feeds_of_resource(session, row.id, row.lab_id, _feeds_since())


def upsert_qualification(session: Session, event: dict[str, Any]) -> None:
    """``qualification.granted``: the user may book until ``expires``."""
    data = event["data"]
    row = session.get(QualificationView, (data["resource_id"], data["sub"]))
    if row is None:
        row = QualificationView(resource_id=data["resource_id"], sub=data["sub"])
        session.add(row)
    row.expires = parse_rfc3339(data["expires"]) if data.get("expires") else None


def drop_qualification(session: Session, event: dict[str, Any]) -> None:
    """``qualification.revoked``."""
    data = event["data"]
    session.execute(
        delete(QualificationView).where(
            QualificationView.resource_id == data["resource_id"], QualificationView.sub == data["sub"]
        )
    )


def handlers(rt: Runtime) -> dict[str, EventHandler]:
    """The event types booking acts on."""

    def outage_created(session: Session, event: dict[str, Any]) -> None:
        """Record the outage and cancel every live booking it overlaps (``cancel_reason: outage``)."""
        data = event["data"]
        start, end = parse_rfc3339(data["start"]), parse_rfc3339(data["end"])
        if session.get(OutageView, data["id"]) is None:
            session.add(
                OutageView(id=data["id"], resource_id=data["resource_id"], start_at=start, end_at=end,
                           reason=data.get("reason") or "")
            )
        lock_resource(session, data["resource_id"])
        place = load_place(session, data["resource_id"])
        clashing = session.scalars(
            select(Booking).where(
                Booking.resource_id == data["resource_id"],
                Booking.status.in_(LIVE),
                Booking.start_at < end,
                Booking.end_at > start,
            ).with_for_update()
        )
        stamp = now()
        clashing = list(clashing)
        freed = [(b.start_at, b.hold_until) for b in clashing]
        for booking in clashing:
            booking.status = "cancelled"
            booking.cancel_reason = "outage"
            booking.checkin_due = None
            booking.sequence += 1
            booking.updated_at = stamp
            session.flush()
            snap = booking.snapshot(place)
            snap["outage"] = {"id": data["id"], "reason": data.get("reason") or ""}
            rt.events.emit(session, "booking.cancelled", snap, subject=booking.id)
        # What the cancelled bookings held outside the outage is free for waiters.
        promoted = promote_waiters(rt, session, place, freed) if place is not None else []
        # The resource's feed even when nothing was cancelled: its free/busy shows outages.
        bump_feeds(session, resources=[data["resource_id"]], labs=[b.lab_id for b in clashing],
                   users=[b.user_sub for b in [*clashing, *promoted]])

    def outage_deleted(session: Session, event: dict[str, Any]) -> None:
        """``outage.deleted``: the time is bookable again, and first offered to the waitlist."""
        data = event["data"]
        lock_resource(session, data["resource_id"])
        row = session.get(OutageView, data["id"])
        session.execute(delete(OutageView).where(OutageView.id == data["id"]))
        place = load_place(session, data["resource_id"])
        promoted = promote_waiters(rt, session, place, [(row.start_at, row.end_at)]) if row and place else []
        # Its free/busy feed shows outages.
        bump_feeds(session, resources=[data["resource_id"]], users=[b.user_sub for b in promoted])

    def counted(handler: EventHandler) -> EventHandler:
        def apply(session: Session, event: dict[str, Any]) -> None:
            handler(session, event)
            read_model_changed(session)  # what workers cached of the read model is stale from this commit on

        apply.__doc__ = handler.__doc__
        return apply

    return {event_type: counted(handler) for event_type, handler in {
        "lab.created": upsert_lab,
        "lab.updated": upsert_lab,
        "resource.created": upsert_resource,
        "resource.updated": upsert_resource,
        "resource.retired": upsert_resource,
        "outage.created": outage_created,
        "outage.deleted": outage_deleted,
        "qualification.granted": upsert_qualification,
        "qualification.revoked": drop_qualification,
    }.items()}
