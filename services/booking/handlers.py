"""Booking use cases: one transaction each, the change and its events together.

The database has the last word on overlaps (an exclusion constraint on
PostgreSQL, triggers under a serialised write lock on SQLite); the checks in
here only make the refusal explain itself.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.booking import domain, store
from services.booking.domain import LIVE, Place
from services.booking.store import Booking
from shared.auth import Principal
from shared.errors import Conflict, Forbidden, InvalidState, NotFound, PolicyViolation, ValidationFailed
from shared.service import Runtime
from shared.timeutil import iso, now

OVERLAP_MARKERS = ("bookings_no_overlap", "booking_overlap")


def is_overlap(exc: IntegrityError) -> bool:
    """Whether the database refused a write because two live bookings would overlap."""
    return any(marker in str(exc.orig) for marker in OVERLAP_MARKERS)


def can_manage(user: Principal, place: Place) -> bool:
    """Admins manage every lab; managers the labs that list them."""
    return user.is_admin or ("manager" in user.roles and user.sub in place.managers)


def _place(session: Session, resource_id: str) -> Place:
    place = store.load_place(session, resource_id)
    if place is None:
        raise NotFound(f"No resource with id {resource_id}.")
    return place


def _booking(session: Session, booking_id: str, lock: bool = False) -> Booking:
    """A booking; with ``lock``, its resource's write lock is taken first, then the row's."""
    if lock:
        resource_id = session.scalar(select(Booking.resource_id).where(Booking.id == booking_id))
        if resource_id is None:
            raise NotFound(f"No booking with id {booking_id}.")
        store.lock_resource(session, resource_id)
    booking = session.get(Booking, booking_id, with_for_update=lock)
    if booking is None:
        raise NotFound(f"No booking with id {booking_id}.")
    return booking


def _check_times(start: dt.datetime, end: dt.datetime) -> None:
    if end <= start:
        raise ValidationFailed([{"field": "end", "message": "must be after start"}])


def _violations(
    session: Session,
    place: Place,
    user: Principal,
    occurrences: list[domain.Interval],
    exclude: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """Every rule the occurrences break; a series tags each with its occurrence."""
    t = now()
    exempt = can_manage(user, place)
    first, last = occurrences[0][0], occurrences[-1][1]
    outages = store.outages_between(session, place.resource_id, first, last)
    qualified = exempt or not place.policy.requires_qualification or store.is_qualified(
        session, place.resource_id, user.sub, last
    )
    out: list[dict[str, Any]] = []
    series = len(occurrences) > 1
    for start, end in occurrences:
        for v in domain.check_rules(place, start, end, now=t, outages=outages, qualified=qualified, exempt=exempt):
            if series:
                v["occurrence"] = {"start": iso(start), "end": iso(end)}
            if not series or v["rule"] not in {x["rule"] for x in out if x.get("occurrence") is None}:
                out.append(v)
    if place.policy.max_hours_per_week is not None and not exempt:
        week = dt.timedelta(days=8)
        existing = store.user_hours(session, place.resource_id, user.sub, first - week, last + week, exclude)
        quota = domain.quota_violation(place, occurrences, existing)
        if quota:
            out.append(quota)
    return out


def _conflicts(
    session: Session, place: Place, occurrences: list[domain.Interval], exclude: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    """Busy times clashing with the occurrences (each with the occurrence when a series)."""
    buffer = place.policy.buffer
    out: list[dict[str, Any]] = []
    for start, end in occurrences:
        for other in store.live_bookings(session, place.resource_id, start, end + buffer, exclude):
            item: dict[str, Any] = {"start": iso(other.start_at), "end": iso(other.end_at)}
            if len(occurrences) > 1:
                item["occurrence"] = {"start": iso(start), "end": iso(end)}
            out.append(item)
    return out


def _conflict_after_refusal(
    rt: Runtime, resource_id: str, occurrences: list[domain.Interval], exclude=()
) -> Conflict | None:
    """The 409 for a write the database refused; None when the clash has gone meanwhile (try again)."""
    with rt.db.read() as session:
        place = _place(session, resource_id)
        conflicts = _conflicts(session, place, occurrences, tuple(exclude))
    return Conflict("That time is already booked.", conflicts=conflicts) if conflicts else None


ATTEMPTS = 3


class _Refused(Exception):
    """The database refused the write as an overlap."""

    def __init__(self, occurrences: list[domain.Interval]) -> None:
        super().__init__("overlap")
        self.occurrences = occurrences


def create_booking(rt: Runtime, user: Principal, data: dict[str, Any]) -> dict[str, Any]:
    """Book a resource (or a series of it) for the caller; all or nothing."""
    _check_times(data["start"], data["end"])
    attempt = 1
    while True:
        try:
            result = _create_once(rt, user, data)
        except _Refused as refused:
            conflict = _conflict_after_refusal(rt, data["resource_id"], refused.occurrences)
            if conflict is None and attempt < ATTEMPTS:
                attempt += 1  # the booking in the way was cancelled meanwhile: try again
                continue
            raise conflict or Conflict("That time is already booked.", conflicts=[]) from refused
        rt.events.committed()
        return result


def _create_once(rt: Runtime, user: Principal, data: dict[str, Any]) -> dict[str, Any]:
    start, end = data["start"], data["end"]
    resource_id = data["resource_id"]
    occurrences = [(start, end)]
    stamp = now()
    series_id = str(uuid.uuid4()) if data.get("rrule") else None
    try:
        with rt.db.begin() as session:
            store.lock_resource(session, resource_id)
            place = _place(session, resource_id)
            if data.get("rrule"):
                try:
                    occurrences = domain.expand_series(data["rrule"], start, end, place.tz)
                except domain.RRuleError as exc:
                    raise PolicyViolation([domain.violation("rrule", str(exc))]) from exc
            violations = _violations(session, place, user, occurrences)
            if violations:
                raise PolicyViolation(violations)
            if len(occurrences) > 1:
                conflicts = _conflicts(session, place, occurrences)
                if conflicts:
                    raise Conflict(
                        f"{len({c['occurrence']['start'] for c in conflicts})} occurrence(s) clash with "
                        "existing bookings; nothing was booked.",
                        conflicts=conflicts,
                    )
            status = "pending" if place.policy.requires_approval and not can_manage(user, place) else "confirmed"
            rows = [
                Booking(
                    id=str(uuid.uuid4()),
                    resource_id=resource_id,
                    lab_id=place.lab_id,
                    series_id=series_id,
                    rrule=data.get("rrule"),
                    user_sub=user.sub,
                    user_name=user.name,
                    user_email=user.email,
                    user_org=user.org,
                    title=data.get("title") or "",
                    project=data.get("project") or "",
                    start_at=o_start,
                    end_at=o_end,
                    hold_until=o_end + place.policy.buffer,
                    status=status,
                    sequence=0,
                    created_at=stamp,
                    updated_at=stamp,
                )
                for o_start, o_end in occurrences
            ]
            session.add_all(rows)
            session.flush()
            events = []
            for row in rows:
                snap = row.snapshot(place)
                events.append(("booking.created", snap, row.id))
                if status == "confirmed":
                    events.append(("booking.confirmed", snap, row.id))
            rt.events.emit_all(session, events)
            store.bump_feeds_for(session, rows)
            result = rows[0].snapshot(place)
            if series_id:
                result["occurrences"] = [r.id for r in rows]
    except IntegrityError as exc:
        if not is_overlap(exc):
            raise
        raise _Refused(occurrences) from exc
    return result


def get_booking(rt: Runtime, user: Principal, booking_id: str) -> dict[str, Any]:
    """A booking in full for its owner and the lab's managers; busy time for everyone else."""
    with rt.db.read() as session:
        booking = _booking(session, booking_id)
        place = store.load_place(session, booking.resource_id)
        if booking.user_sub == user.sub or (place is not None and can_manage(user, place)) or user.is_admin:
            body = booking.snapshot(place)
            if booking.series_id:
                body["occurrences"] = list(
                    session.scalars(
                        select(Booking.id).where(Booking.series_id == booking.series_id).order_by(Booking.start_at)
                    )
                )
            return body
        return booking.busy()


def _owned_or_managed(session: Session, user: Principal, booking: Booking) -> Place:
    place = _place(session, booking.resource_id)
    if booking.user_sub != user.sub and not can_manage(user, place):
        raise Forbidden("Only the booking's owner or a manager of its lab may change it.")
    return place


def update_booking(rt: Runtime, user: Principal, booking_id: str, changes: dict[str, Any]) -> dict[str, Any]:
    """Move or retitle a live booking; a move is checked like a new booking."""
    try:
        with rt.db.begin() as session:
            booking = _booking(session, booking_id, lock=True)
            resource_id = booking.resource_id
            place = _owned_or_managed(session, user, booking)
            if booking.status not in LIVE:
                raise InvalidState(f"A {booking.status} booking cannot be changed.")
            start = changes.get("start") or booking.start_at
            end = changes.get("end") or booking.end_at
            _check_times(start, end)
            moved = start != booking.start_at or end != booking.end_at
            if moved:
                violations = _violations(session, place, user, [(start, end)], exclude=(booking.id,))
                if violations:
                    raise PolicyViolation(violations)
                booking.start_at, booking.end_at = start, end
                booking.hold_until = end + place.policy.buffer
                if place.policy.requires_approval and not can_manage(user, place) and booking.status == "confirmed":
                    booking.status = "pending"
            for key in ("title", "project"):
                if changes.get(key) is not None:
                    setattr(booking, key, changes[key])
            booking.sequence += 1
            booking.updated_at = now()
            session.flush()
            snap = booking.snapshot(place)
            rt.events.emit(session, "booking.updated", snap, subject=booking.id)
            store.bump_feeds_for(session, [booking])
    except IntegrityError as exc:
        if not is_overlap(exc):
            raise
        conflict = _conflict_after_refusal(rt, resource_id, [(start, end)], exclude=(booking_id,))
        raise conflict or Conflict("That time was taken; please try again.", conflicts=[]) from exc
    rt.events.committed()
    return snap


def _transition(
    rt: Runtime,
    user: Principal,
    booking_id: str,
    *,
    allowed_from: tuple[str, ...],
    to: str,
    event: str,
    manager_only: bool,
    reason: str | None = None,
) -> dict[str, Any]:
    with rt.db.begin() as session:
        booking = _booking(session, booking_id, lock=True)
        if manager_only:
            place = _place(session, booking.resource_id)
            if not can_manage(user, place):
                raise Forbidden("Only a manager of this lab may decide on bookings.")
        else:
            place = _owned_or_managed(session, user, booking)
        if booking.status not in allowed_from:
            raise InvalidState(f"The booking is {booking.status}; this needs {' or '.join(allowed_from)}.")
        booking.status = to
        if to == "cancelled":
            booking.cancel_reason = reason or ("cancelled by owner" if booking.user_sub == user.sub else
                                               "cancelled by manager")
        elif to == "declined":
            booking.cancel_reason = reason or "declined"
        if manager_only:
            booking.decided_by = user.sub
        booking.sequence += 1
        booking.updated_at = now()
        session.flush()
        snap = booking.snapshot(place)
        rt.events.emit(session, event, snap, subject=booking.id)
        store.bump_feeds_for(session, [booking])
    rt.events.committed()
    return snap


def cancel_booking(rt: Runtime, user: Principal, booking_id: str, reason: str | None) -> dict[str, Any]:
    """Cancel a live booking; its time is free at once."""
    return _transition(rt, user, booking_id, allowed_from=LIVE, to="cancelled", event="booking.cancelled",
                       manager_only=False, reason=reason)


def approve_booking(rt: Runtime, user: Principal, booking_id: str) -> dict[str, Any]:
    """A lab manager confirms a pending booking."""
    return _transition(rt, user, booking_id, allowed_from=("pending",), to="confirmed", event="booking.confirmed",
                       manager_only=True)


def decline_booking(rt: Runtime, user: Principal, booking_id: str, reason: str | None) -> dict[str, Any]:
    """A lab manager declines a pending booking; its time is free at once."""
    return _transition(rt, user, booking_id, allowed_from=("pending",), to="declined", event="booking.declined",
                       manager_only=True, reason=reason)


def check_in(rt: Runtime, user: Principal, booking_id: str) -> dict[str, Any]:
    """The owner checks in, from 15 minutes before the start until the grace period ends."""
    with rt.db.begin() as session:
        booking = _booking(session, booking_id, lock=True)
        place = _place(session, booking.resource_id)
        if booking.user_sub != user.sub:
            raise Forbidden("Only the booking's owner may check in.")
        if booking.status != "confirmed":
            raise InvalidState(f"A {booking.status} booking cannot be checked in.")
        t = now()
        opens = booking.start_at - dt.timedelta(minutes=15)
        closes = booking.start_at + dt.timedelta(minutes=place.policy.checkin_grace_minutes)
        if not opens <= t <= closes:
            raise InvalidState(f"Check-in is open from {iso(opens)} to {iso(closes)}.")
        if booking.checked_in_at is None:
            booking.checked_in_at = t
            booking.sequence += 1
            booking.updated_at = t
            session.flush()
            rt.events.emit(session, "booking.checked_in", booking.snapshot(place), subject=booking.id)
            store.bump_feeds_for(session, [booking])
        snap = booking.snapshot(place)
    rt.events.committed()
    return snap


def availability(
    rt: Runtime, resource_id: str, start: dt.datetime, end: dt.datetime
) -> dict[str, Any]:
    """Busy blocks and bookable free time of a resource in ``[start, end)``."""
    with rt.db.read() as session:
        place = _place(session, resource_id)
        buffer = place.policy.buffer
        bookings = store.live_bookings(session, resource_id, start - buffer, end + buffer)
        outages = store.outages_between(session, resource_id, start, end)
    busy = [
        {"start": iso(b.start_at), "end": iso(b.end_at)}
        for b in bookings
        if b.start_at < end and b.end_at > start
    ]
    free = domain.free_intervals(place, start, end, outages, [(b.start_at, b.hold_until) for b in bookings])
    return {
        "resource_id": resource_id,
        "timezone": place.timezone,
        "busy": busy,
        "free": [{"start": iso(lo), "end": iso(hi)} for lo, hi in free],
        "outages": [{"start": iso(lo), "end": iso(hi)} for lo, hi in outages],
    }


def find_slots(
    rt: Runtime, user: Principal, category: str, minutes: int, start: dt.datetime, end: dt.datetime, limit: int
) -> list[dict[str, Any]]:
    """The earliest free slots of ``minutes`` on any active resource of a category the caller may book."""
    t = now()
    found: list[tuple[dt.datetime, str, dt.datetime]] = []
    with rt.db.read() as session:
        places = store.places_in_category(session, category)
        for place in places:
            p = place.policy
            if not p.min_minutes <= minutes <= p.max_minutes or minutes % p.slot_minutes:
                continue
            exempt = can_manage(user, place)
            if p.requires_qualification and not exempt and not store.is_qualified(session, place.resource_id,
                                                                                  user.sub, t):
                continue
            lo = max(start, t + dt.timedelta(minutes=p.lead_minutes))
            hi = min(end, t + dt.timedelta(days=p.horizon_days))
            if lo >= hi:
                continue
            bookings = store.live_bookings(session, place.resource_id, lo - p.buffer, hi + p.buffer)
            outages = store.outages_between(session, place.resource_id, lo, hi)
            free = domain.free_intervals(place, lo, hi, outages, [(b.start_at, b.hold_until) for b in bookings])
            per_resource = 0
            for interval in free:
                for s in domain.slot_starts(place, interval, minutes, lo):
                    found.append((s, place.resource_id, s + dt.timedelta(minutes=minutes)))
                    per_resource += 1
                    if per_resource >= limit:
                        break
                if per_resource >= limit:
                    break
    found.sort()
    return [{"resource_id": rid, "start": iso(s), "end": iso(e)} for s, rid, e in found[:limit]]
