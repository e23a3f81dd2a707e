"""Booking use cases: one transaction each, the change and its events together.

The database has the last word on overlaps (an exclusion constraint on
PostgreSQL, triggers under a serialised write lock on SQLite); the checks in
here only make the refusal explain itself.

Every write to a resource's bookings takes that resource's lock first
(``store.lock_resource``). Time that a write frees (a cancellation, a decline,
a move, a no-show, a shortened series, a removed outage) is offered to the
waitlist in that same transaction (``promote_waiters``), so no moment exists in
which the time is free and a waiter for it is still waiting.
"""

from __future__ import annotations

import bisect
import datetime as dt
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.booking import domain, store
from services.booking.domain import LIVE, Interval, Place
from services.booking.store import Booking, WaitlistEntry
from shared.auth import Principal
from shared.db import inserts_together
from shared.errors import Conflict, Forbidden, InvalidState, NotFound, PolicyViolation, ValidationFailed
from shared.service import Runtime
from shared.timeutil import iso, now

OVERLAP_MARKERS = ("bookings_no_overlap", "booking_overlap")
SCOPES = ("this", "following", "all")

Event = tuple[str, dict[str, Any], str | None]


def is_overlap(exc: IntegrityError) -> bool:
    """Whether the database refused a write because two live bookings would overlap."""
    return any(marker in str(exc.orig) for marker in OVERLAP_MARKERS)


def can_manage(user: Principal, place: Place) -> bool:
    """Admins manage every lab; managers the labs that list them."""
    return user.is_admin or ("manager" in user.roles and user.sub in place.managers)


def place_or_404(session: Session, resource_id: str) -> Place:
    """The resource and its lab, or a 404."""
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


def check_times(start: dt.datetime, end: dt.datetime) -> None:
    """422 unless ``end`` is after ``start``."""
    if end <= start:
        raise ValidationFailed([{"field": "end", "message": "must be after start"}])


def _when(start: dt.datetime, end: dt.datetime) -> dict[str, Any]:
    return {"start": iso(start), "end": iso(end)}


# -- rules and clashes ------------------------------------------------------------------------------


def _rule_violations(
    session: Session, place: Place, user: Principal, occurrences: list[Interval], facts: store.Facts | None = None
) -> list[list[dict[str, Any]]]:
    """The rules each occurrence breaks, the quota aside; a qualification must hold until each one's end.

    ``facts`` read with the place spare the queries for outages and qualification where they cover them.
    """
    t = now()
    exempt = can_manage(user, place)
    first, last = min(s for s, _ in occurrences), max(e for _, e in occurrences)
    outages = facts.outages_within(first, last) if facts is not None else None
    if outages is None:
        outages = store.outages_between(session, place.resource_id, first, last)
    qualified_until: dt.datetime | None = None
    has_qualification = False
    if place.policy.requires_qualification and not exempt:
        if facts is not None and facts.sub == user.sub:
            has_qualification, qualified_until = facts.qualified, facts.expires
        else:
            qualification = store.qualification_of(session, place.resource_id, user.sub)
            has_qualification = qualification is not None
            qualified_until = qualification.expires if qualification is not None else None
    out = []
    for start, end in occurrences:
        qualified = exempt or not place.policy.requires_qualification or (
            has_qualification and (qualified_until is None or qualified_until > end)
        )
        out.append(domain.check_rules(place, start, end, now=t, outages=outages, qualified=qualified, exempt=exempt))
    return out


def _existing_hours(
    session: Session, place: Place, user: Principal, occurrences: list[Interval], exclude: tuple[str, ...]
) -> list[Interval] | None:
    """The user's live hours on the resource around the occurrences; None when no quota applies to them."""
    if place.policy.max_hours_per_week is None or can_manage(user, place):
        return None
    week = dt.timedelta(days=8)
    first, last = min(s for s, _ in occurrences), max(e for _, e in occurrences)
    return store.user_hours(session, place.resource_id, user.sub, first - week, last + week, exclude)


def broken_rules(
    session: Session,
    place: Place,
    user: Principal,
    occurrences: list[Interval],
    exclude: tuple[str, ...] = (),
    tag: bool | None = None,
    facts: store.Facts | None = None,
) -> list[dict[str, Any]]:
    """Every rule the occurrences break, for all or nothing; a series tags each with its occurrence."""
    tag = len(occurrences) > 1 if tag is None else tag
    out: list[dict[str, Any]] = []
    found_all = _rule_violations(session, place, user, occurrences, facts)
    for (start, end), found in zip(occurrences, found_all, strict=True):
        for v in found:
            if tag:
                v["occurrence"] = _when(start, end)
            out.append(v)
    existing = _existing_hours(session, place, user, occurrences, exclude)
    if existing is not None:
        quota = domain.quota_violation(place, occurrences, existing)
        if quota:
            out.append(quota)
    return out


def busy_times(
    session: Session, place: Place, occurrences: list[Interval], exclude: tuple[str, ...] = ()
) -> list[list[dict[str, Any]]]:
    """For each occurrence, the busy times of other live bookings its hold clashes with: one query for all.

    Live holds of one resource never overlap, so sorted by start they are sorted by
    end too, and the clashes of each occurrence are one slice of them.
    """
    buffer = place.policy.buffer
    lo, hi = min(s for s, _ in occurrences), max(e for _, e in occurrences) + buffer
    others = store.live_bookings(session, place.resource_id, lo, hi, exclude)
    starts = [o.start_at for o in others]
    holds = [o.hold_until for o in others]
    out = []
    for start, end in occurrences:
        first = bisect.bisect_right(holds, start)
        last = bisect.bisect_left(starts, end + buffer)
        out.append([_when(o.start_at, o.end_at) for o in others[first:last]])
    return out


def _conflicts(
    session: Session, place: Place, occurrences: list[Interval], exclude: tuple[str, ...] = (),
    tag: bool | None = None,
) -> list[dict[str, Any]]:
    """Busy times clashing with the occurrences (each with the occurrence when a series)."""
    tag = len(occurrences) > 1 if tag is None else tag
    out = []
    for (start, end), busy in zip(occurrences, busy_times(session, place, occurrences, exclude), strict=True):
        for item in busy:
            if tag:
                item["occurrence"] = _when(start, end)
            out.append(item)
    return out


def _conflict_after_refusal(
    rt: Runtime, resource_id: str, occurrences: list[Interval], exclude=()
) -> Conflict | None:
    """The 409 for a write the database refused; None when the clash has gone meanwhile (try again)."""
    with rt.db.read() as session:
        place = place_or_404(session, resource_id)
        conflicts = _conflicts(session, place, occurrences, tuple(exclude))
    return Conflict("That time is already booked.", conflicts=conflicts) if conflicts else None


def _fit(
    session: Session,
    place: Place,
    user: Principal,
    occurrences: list[Interval],
    exclude: tuple[str, ...] = (),
    allow_none: bool = False,
    facts: store.Facts | None = None,
) -> tuple[list[Interval], list[dict[str, Any]]]:
    """Split a series into the occurrences that can be booked and the skipped ones, each with why.

    Rules and clashes are per occurrence; the weekly quota is then filled in time
    order. When nothing is left (and ``allow_none`` is false) the refusal is the one
    all-or-nothing would have given.
    """
    rules = _rule_violations(session, place, user, occurrences, facts)
    busy = busy_times(session, place, occurrences, exclude)
    fits = [i for i in range(len(occurrences)) if not rules[i] and not busy[i]]
    existing = _existing_hours(session, place, user, occurrences, exclude)
    if existing is not None:
        for i, quota in zip(fits, domain.quota_fit(place, [occurrences[i] for i in fits], existing), strict=True):
            if quota:
                rules[i] = [quota]
    kept: list[Interval] = []
    skipped: list[dict[str, Any]] = []
    for i, (start, end) in enumerate(occurrences):
        if not rules[i] and not busy[i]:
            kept.append((start, end))
            continue
        item: dict[str, Any] = {**_when(start, end), "reason": rules[i][0]["rule"] if rules[i] else "conflict"}
        if rules[i]:
            item["violations"] = rules[i]
        if busy[i]:
            item["conflicts"] = busy[i]
        skipped.append(item)
    if not kept and not allow_none:
        at = [{"start": s["start"], "end": s["end"]} for s in skipped]
        violations = [{**v, "occurrence": w} for s, w in zip(skipped, at, strict=True) for v in s.get("violations", [])]
        if violations:
            raise PolicyViolation(violations, "No occurrence of the series can be booked.")
        conflicts = [{**c, "occurrence": w} for s, w in zip(skipped, at, strict=True) for c in s.get("conflicts", [])]
        raise Conflict("Every occurrence of the series clashes with existing bookings; nothing was booked.",
                       conflicts=conflicts)
    return kept, skipped


def _refuse_clashes(conflicts: list[dict[str, Any]], what: str) -> None:
    if conflicts:
        clashing = len({c["occurrence"]["start"] for c in conflicts})
        raise Conflict(f"{clashing} occurrence(s) clash with existing bookings; nothing was {what}.",
                       conflicts=conflicts)


def _expand(rule: str, start: dt.datetime, end: dt.datetime, place: Place) -> list[Interval]:
    try:
        return domain.expand_series(rule, start, end, place.tz)
    except domain.RRuleError as exc:
        raise PolicyViolation([domain.violation("rrule", str(exc))]) from exc


# -- new bookings -----------------------------------------------------------------------------------


def _status_for(place: Place, user: Principal) -> str:
    return "pending" if place.policy.requires_approval and not can_manage(user, place) else "confirmed"


def _new_row(
    place: Place,
    owner: Principal,
    start: dt.datetime,
    end: dt.datetime,
    *,
    status: str,
    stamp: dt.datetime,
    title: str | None = "",
    project: str | None = "",
    series_id: str | None = None,
    rrule: str | None = None,
) -> Booking:
    return Booking(
        id=str(uuid.uuid4()),
        resource_id=place.resource_id,
        lab_id=place.lab_id,
        series_id=series_id,
        rrule=rrule,
        recurrence_id=start if series_id else None,
        user_sub=owner.sub,
        user_name=owner.name,
        user_email=owner.email,
        user_org=owner.org,
        title=title or "",
        project=project or "",
        start_at=start,
        end_at=end,
        hold_until=end + place.policy.buffer,
        status=status,
        sequence=0,
        created_at=stamp,
        updated_at=stamp,
        checkin_due=domain.checkin_due(place.policy, start),
    )


def _created(rows: list[Booking], place: Place) -> list[Event]:
    events: list[Event] = []
    for row in rows:
        snap = row.snapshot(place)
        events.append(("booking.created", snap, row.id))
        if row.status == "confirmed":
            events.append(("booking.confirmed", snap, row.id))
    return events


ATTEMPTS = 3


class _Refused(Exception):
    """The database refused the write as an overlap."""

    def __init__(self, occurrences: list[Interval]) -> None:
        super().__init__("overlap")
        self.occurrences = occurrences


def create_booking(rt: Runtime, user: Principal, data: dict[str, Any]) -> dict[str, Any]:
    """Book a resource (or a series of it) for the caller.

    A series is all or nothing, unless ``on_conflict`` is ``skip``: then the
    occurrences that clash or break a rule are left out and listed in ``skipped``.
    """
    check_times(data["start"], data["end"])
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
    skipped: list[dict[str, Any]] | None = None
    try:
        with rt.db.begin() as session:
            version = store.lock_for_booking(session, resource_id)
            found = store.place_and_facts(session, resource_id, (start, end), user.sub, version=version,
                                          cache=store.facts_cache(rt.db.url))
            if found is None:
                raise NotFound(f"No resource with id {resource_id}.")
            place, facts = found
            if data.get("rrule"):
                occurrences = _expand(data["rrule"], start, end, place)
            if data.get("on_conflict") == "skip" and len(occurrences) > 1:
                occurrences, skipped = _fit(session, place, user, occurrences, facts=facts)
            else:
                violations = broken_rules(session, place, user, occurrences, facts=facts)
                if violations:
                    raise PolicyViolation(violations)
                if len(occurrences) > 1:
                    _refuse_clashes(_conflicts(session, place, occurrences), "booked")
            status = _status_for(place, user)
            rows = [
                _new_row(place, user, o_start, o_end, status=status, stamp=stamp, title=data.get("title"),
                         project=data.get("project"), series_id=series_id, rrule=data.get("rrule"))
                for o_start, o_end in occurrences
            ]
            events = _created(rows, place)
            with inserts_together(session):
                store.insert_bookings(session, rows)
                rt.events.emit_all(session, events)
                store.bump_feeds_for(session, rows)
            result = dict(events[0][1])  # the first booking's snapshot, as its booking.created carries it
            if series_id:
                result["occurrences"] = [r.id for r in rows]
                if skipped is not None:
                    result["skipped"] = skipped
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
                body["occurrences"] = store.series_ids(session, booking.series_id)
            return body
        return booking.busy()


def _owned_or_managed(session: Session, user: Principal, booking: Booking) -> Place:
    place = place_or_404(session, booking.resource_id)
    if booking.user_sub != user.sub and not can_manage(user, place):
        raise Forbidden("Only the booking's owner or a manager of its lab may change it.")
    return place


def _owner(booking: Booking) -> Principal:
    return Principal(sub=booking.user_sub, name=booking.user_name, email=booking.user_email, org=booking.user_org)


# -- changes, scoped to one occurrence, the following ones or the whole series ---------------------


def _in_scope(session: Session, booking: Booking, scope: str, t: dt.datetime) -> list[Booking]:
    """``booking`` and, for ``following`` or ``all``, the live occurrences of its series that have not
    started (``following``: those after it), in time order, each row locked."""
    if scope == "this" or booking.series_id is None:
        return [booking]
    others = store.series_occurrences(session, booking.series_id, live=True, after=t, lock=True)
    if scope == "following":
        others = [b for b in others if b.start_at > booking.start_at]
    rows = {b.id: b for b in others}
    rows[booking.id] = booking
    return sorted(rows.values(), key=lambda b: (b.start_at, b.id))


def _move(
    session: Session,
    place: Place,
    user: Principal,
    rows: list[Booking],
    plan: dict[str, Interval],
    slot_shift: dt.timedelta | None,
) -> None:
    """Give each row its planned time. Several rows first all let go of theirs (a status no rule counts),
    so that occurrences may move onto each other's old places; the database then checks each new hold."""
    statuses = {b.id: b.status for b in rows}
    if len(rows) > 1:
        for b in rows:
            b.status = "moving"
        session.flush()
    to_pending = place.policy.requires_approval and not can_manage(user, place)
    for b in rows:
        start, end = plan[b.id]
        b.start_at, b.end_at, b.hold_until = start, end, end + place.policy.buffer
        if b.checked_in_at is None:
            b.checkin_due = domain.checkin_due(place.policy, start)
        if slot_shift is not None and b.recurrence_id is not None:
            b.recurrence_id = domain.shift_wall(b.recurrence_id, slot_shift, place.tz)
        b.status = "pending" if to_pending and statuses[b.id] == "confirmed" else statuses[b.id]


def update_booking(rt: Runtime, user: Principal, booking_id: str, changes: dict[str, Any]) -> dict[str, Any]:
    """Move or retitle a live booking; a move is checked like a new booking.

    With ``scope`` ``following`` or ``all`` the change applies to this and the later
    occurrences of its series, or to all that have not started: a new time moves each
    by the same wall-clock amount in the lab's zone (start and end each by their own),
    checked all or nothing. The time they leave is offered to the waitlist.
    """
    scope = changes.get("scope") or "this"
    start = end = None
    intervals: list[Interval] = []
    ids: tuple[str, ...] = (booking_id,)
    try:
        with rt.db.begin() as session:
            booking = _booking(session, booking_id, lock=True)
            resource_id = booking.resource_id
            place = _owned_or_managed(session, user, booking)
            if booking.status not in LIVE:
                raise InvalidState(f"A {booking.status} booking cannot be changed.")
            start = changes.get("start") or booking.start_at
            end = changes.get("end") or booking.end_at
            check_times(start, end)
            t = now()
            rows = _in_scope(session, booking, scope, t)
            ids = tuple(b.id for b in rows)
            freed: list[Interval] = []
            if start != booking.start_at or end != booking.end_at:
                tz = place.tz
                by_start = domain.wall_delta(booking.start_at, start, tz)
                by_end = domain.wall_delta(booking.end_at, end, tz)
                plan = {
                    b.id: (start, end) if b is booking else
                    (domain.shift_wall(b.start_at, by_start, tz), domain.shift_wall(b.end_at, by_end, tz))
                    for b in rows
                }
                intervals = [plan[b.id] for b in rows]
                violations = broken_rules(session, place, user, intervals, exclude=ids)
                if violations:
                    raise PolicyViolation(violations)
                if len(rows) > 1:
                    among = [{**_when(*a), "occurrence": _when(*b)}
                             for a, b in domain.self_clashes(intervals, place.policy.buffer)]
                    _refuse_clashes(_conflicts(session, place, intervals, exclude=ids) + among, "changed")
                freed = [(b.start_at, b.hold_until) for b in rows]
                _move(session, place, user, rows, plan, by_start if scope != "this" else None)
            for b in rows:
                for key in ("title", "project"):
                    if changes.get(key) is not None:
                        setattr(b, key, changes[key])
                b.sequence += 1
                b.updated_at = t
            session.flush()
            rt.events.emit_all(session, [("booking.updated", b.snapshot(place), b.id) for b in rows])
            promoted = promote_waiters(rt, session, place, freed)
            store.bump_feeds_for(session, [*rows, *promoted])
            snap = booking.snapshot(place)
            if scope != "this":
                snap["updated"] = list(ids)
    except IntegrityError as exc:
        if not is_overlap(exc):
            raise
        conflict = _conflict_after_refusal(rt, resource_id, intervals or [(start, end)], exclude=ids)
        raise conflict or Conflict("That time was taken; please try again.", conflicts=[]) from exc
    rt.events.committed()
    return snap


def _finish(rows: list[Booking], to: str, reason: str, t: dt.datetime, decided_by: str | None = None) -> None:
    for b in rows:
        b.status = to
        if to not in LIVE:
            b.cancel_reason = reason
            b.checkin_due = None
        if decided_by:
            b.decided_by = decided_by
        b.sequence += 1
        b.updated_at = t


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
    scope: str = "this",
) -> dict[str, Any]:
    with rt.db.begin() as session:
        booking = _booking(session, booking_id, lock=True)
        if manager_only:
            place = place_or_404(session, booking.resource_id)
            if not can_manage(user, place):
                raise Forbidden("Only a manager of this lab may decide on bookings.")
        else:
            place = _owned_or_managed(session, user, booking)
        t = now()
        if scope == "this" or booking.series_id is None:
            if booking.status not in allowed_from:
                raise InvalidState(f"The booking is {booking.status}; this needs {' or '.join(allowed_from)}.")
            rows = [booking]
        else:
            rows = [b for b in _in_scope(session, booking, scope, t) if b.status in allowed_from]
            if not rows:
                raise InvalidState(f"No {' or '.join(allowed_from)} occurrence of this series is left for this.")
        freed = [(b.start_at, b.hold_until) for b in rows if to not in LIVE]
        if to == "cancelled":
            why = reason or ("cancelled by owner" if booking.user_sub == user.sub else "cancelled by manager")
        else:
            why = reason or to
        _finish(rows, to, why, t, user.sub if manager_only else None)
        session.flush()
        rt.events.emit_all(session, [(event, b.snapshot(place), b.id) for b in rows])
        promoted = promote_waiters(rt, session, place, freed)
        store.bump_feeds_for(session, [*rows, *promoted])
        snap = booking.snapshot(place)
        if scope != "this":
            snap[to] = [b.id for b in rows]
    rt.events.committed()
    return snap


def cancel_booking(
    rt: Runtime, user: Principal, booking_id: str, reason: str | None, scope: str = "this"
) -> dict[str, Any]:
    """Cancel a live booking (with ``scope``: and the following, or all upcoming, occurrences of its series);
    its time is free at once, and offered to the waitlist."""
    return _transition(rt, user, booking_id, allowed_from=LIVE, to="cancelled", event="booking.cancelled",
                       manager_only=False, reason=reason, scope=scope)


def approve_booking(rt: Runtime, user: Principal, booking_id: str) -> dict[str, Any]:
    """A lab manager confirms a pending booking."""
    return _transition(rt, user, booking_id, allowed_from=("pending",), to="confirmed", event="booking.confirmed",
                       manager_only=True)


def decline_booking(rt: Runtime, user: Principal, booking_id: str, reason: str | None) -> dict[str, Any]:
    """A lab manager declines a pending booking; its time is free at once, and offered to the waitlist."""
    return _transition(rt, user, booking_id, allowed_from=("pending",), to="declined", event="booking.declined",
                       manager_only=True, reason=reason)


def replan_series(
    rt: Runtime, user: Principal, booking_id: str, rule: str, on_conflict: str = "fail"
) -> dict[str, Any]:
    """Give a series a new rule from this occurrence on: extend it, shorten it, or change its pattern.

    The rule is expanded from this occurrence's slot, with its wall-clock length.
    Upcoming occurrences the new rule still has are kept (moved ones stay where
    they were moved), the others are cancelled, and the slots no occurrence has yet
    are booked: all or nothing, or with ``on_conflict: skip`` leaving out those that
    clash or break a rule. Occurrences that have started, and those before this one,
    are left alone; a cancelled occurrence is not booked again.
    """
    stamp = now()
    added: list[Interval] = []
    dropping: list[Booking] = []
    try:
        with rt.db.begin() as session:
            booking = _booking(session, booking_id, lock=True)
            resource_id = booking.resource_id
            place = _owned_or_managed(session, user, booking)
            if booking.series_id is None:
                raise InvalidState("This booking is not part of a series; create one with an rrule.")
            if booking.status not in LIVE:
                raise InvalidState(f"A {booking.status} occurrence cannot change its series.")
            tz = place.tz
            anchor = booking.recurrence_id or booking.start_at
            length = domain.wall_delta(booking.start_at, booking.end_at, tz)
            slots = _expand(rule, anchor, domain.shift_wall(anchor, length, tz), place)
            later = [b for b in store.series_occurrences(session, booking.series_id, lock=True)
                     if (b.recurrence_id or b.start_at) >= anchor]
            plan = domain.replan_series(
                slots, [domain.Occurrence(b.id, b.recurrence_id or b.start_at, b.start_at, b.status in LIVE)
                        for b in later], stamp)
            dropping = [b for b in later if b.id in set(plan.cancel)]
            exclude = tuple(b.id for b in dropping)
            added, skipped = plan.add, None
            if added and on_conflict == "skip":
                added, skipped = _fit(session, place, user, added, exclude, allow_none=True)
            elif added:
                violations = broken_rules(session, place, user, added, exclude, tag=True)
                if violations:
                    raise PolicyViolation(violations)
                _refuse_clashes(_conflicts(session, place, added, exclude, tag=True), "changed")
            _finish(dropping, "cancelled", "series changed", stamp)
            session.flush()
            status = _status_for(place, user)
            rows = [_new_row(place, _owner(booking), s, e, status=status, stamp=stamp, title=booking.title,
                             project=booking.project, series_id=booking.series_id, rrule=rule) for s, e in added]
            session.add_all(rows)
            session.flush()
            events = [("booking.cancelled", b.snapshot(place), b.id) for b in dropping] + _created(rows, place)
            rt.events.emit_all(session, events)
            promoted = promote_waiters(rt, session, place, [(b.start_at, b.hold_until) for b in dropping])
            store.bump_feeds_for(session, [*dropping, *rows, *promoted])
            live = store.series_occurrences(session, booking.series_id, live=True)
            result: dict[str, Any] = {
                "series_id": booking.series_id,
                "rrule": rule,
                "occurrences": [b.id for b in live],
                "booked": [r.id for r in rows],
                "cancelled": [b.id for b in dropping],
            }
            if skipped is not None:
                result["skipped"] = skipped
    except IntegrityError as exc:
        if not is_overlap(exc):
            raise
        conflict = _conflict_after_refusal(rt, resource_id, added, exclude=tuple(b.id for b in dropping))
        raise conflict or Conflict("That time was taken; please try again.", conflicts=[]) from exc
    rt.events.committed()
    return result


# -- check-in and no-shows ---------------------------------------------------------------------------


def check_in(rt: Runtime, user: Principal, booking_id: str) -> dict[str, Any]:
    """The owner checks in, from 15 minutes before the start until the grace period ends."""
    with rt.db.begin() as session:
        booking = _booking(session, booking_id, lock=True)
        place = place_or_404(session, booking.resource_id)
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
            booking.checkin_due = None
            booking.sequence += 1
            booking.updated_at = t
            session.flush()
            rt.events.emit(session, "booking.checked_in", booking.snapshot(place), subject=booking.id)
            store.bump_feeds_for(session, [booking])
        snap = booking.snapshot(place)
    rt.events.committed()
    return snap


#: Resources looked at per pass, and bookings settled per resource and transaction.
NO_SHOW_RESOURCES = 50
NO_SHOW_BATCH = 500


def mark_no_shows(rt: Runtime) -> int:
    """Turn confirmed bookings nobody checked in to by the end of their grace period into ``no_show``,
    free the rest of their time and offer it to the waitlist; returns how many.

    Works through every booking whose deadline has passed, however long ago, so a
    run after a downtime catches up. One resource per transaction, under that
    resource's lock, its due rows claimed with ``SKIP LOCKED``: any number of
    replicas may run it at once, and each booking is settled once.
    """
    t = now()
    total = 0
    while True:
        with rt.db.read() as session:
            resources = store.due_checkin_resources(session, t, NO_SHOW_RESOURCES)
        settled = 0
        for resource_id in resources:
            marked, seen = _settle_checkins(rt, resource_id, t)
            total += marked
            settled += seen
        if settled == 0:
            return total


def _settle_checkins(rt: Runtime, resource_id: str, t: dt.datetime) -> tuple[int, int]:
    """One resource's bookings past their check-in deadline: (no-shows made, rows settled)."""
    with rt.db.begin() as session:
        store.lock_resource(session, resource_id)
        rows = store.claim_due_checkins(session, resource_id, t, NO_SHOW_BATCH)
        if not rows:
            return 0, 0
        place = store.load_place(session, resource_id)
        stamp = now()
        missed: list[Booking] = []
        freed: list[Interval] = []
        for b in rows:
            due, b.checkin_due = b.checkin_due, None
            if b.status != "confirmed" or b.checked_in_at is not None or due is None:
                continue  # nothing to settle any more: approved late, decided, checked in
            freed.append((due, b.hold_until))
            b.status = "no_show"
            b.hold_until = max(b.start_at, min(b.hold_until, due))  # the hold ends when they failed to come
            b.sequence += 1
            b.updated_at = stamp
            missed.append(b)
        session.flush()
        if missed:
            rt.events.emit_all(session, [("booking.no_show", b.snapshot(place), b.id) for b in missed])
            promoted = promote_waiters(rt, session, place, freed) if place is not None else []
            store.bump_feeds_for(session, [*missed, *promoted])
    if missed:
        rt.events.committed()
    return len(missed), len(rows)


# -- the waitlist gets freed time ---------------------------------------------------------------------


def waiter(entry: WaitlistEntry) -> Principal:
    """The person on a waitlist entry, with the roles they had when they joined."""
    return Principal(sub=entry.user_sub, name=entry.user_name, email=entry.user_email, org=entry.user_org,
                     roles=tuple(entry.user_roles or ()))


def promote_waiters(rt: Runtime, session: Session, place: Place, freed: list[Interval]) -> list[Booking]:
    """Offer time just freed to the waitlist, inside the transaction that freed it (holding the resource's lock).

    Waiters whose window touches the freed time are taken first come, first served.
    One whose whole window is now free and who may still book it (every rule is
    checked again, for them, now) gets the booking: confirmed (``waitlist.booked``),
    or pending where the resource needs approval (``waitlist.offered``), with the
    usual ``booking.created``/``booking.confirmed``. One the rules now refuse (no longer
    qualified, over the quota, too late) is skipped and told (``waitlist.skipped``).
    One whose window is still partly taken or out of service keeps waiting. Returns
    the bookings made; the caller bumps the feeds.
    """
    freed = [(lo, hi) for lo, hi in freed if hi > lo]
    if not freed:
        return []
    t = now()
    buffer = place.policy.buffer
    lo, hi = min(a for a, _ in freed) - buffer, max(b for _, b in freed) + buffer
    made: list[Booking] = []
    events: list[Event] = []
    for entry in store.waiting_entries(session, place.resource_id, lo, hi, after=t, lock=True):
        window = [(entry.start_at, entry.end_at)]
        if busy_times(session, place, window)[0]:
            continue
        owner = waiter(entry)
        found = broken_rules(session, place, owner, window)
        if any(v["rule"] in domain.STILL_TAKEN for v in found):
            continue
        if found:
            entry.status, entry.violations, entry.updated_at = "skipped", found, t
            events.append(("waitlist.skipped", entry.snapshot(place), entry.id))
            continue
        row = _new_row(place, owner, entry.start_at, entry.end_at, status=_status_for(place, owner), stamp=t,
                       title=entry.title, project=entry.project)
        try:
            with session.begin_nested():
                session.add(row)
        except IntegrityError as exc:
            if not is_overlap(exc):
                raise
            continue  # not free after all: this waiter keeps waiting
        entry.status = "booked" if row.status == "confirmed" else "offered"
        entry.booking_id, entry.updated_at = row.id, t
        made.append(row)
        events += _created([row], place)
        events.append((f"waitlist.{entry.status}", entry.snapshot(place), entry.id))
    if events:
        session.flush()
        rt.events.emit_all(session, events)
    return made


# -- reads --------------------------------------------------------------------------------------------


def availability(
    rt: Runtime, resource_id: str, start: dt.datetime, end: dt.datetime
) -> dict[str, Any]:
    """Busy blocks and bookable free time of a resource in ``[start, end)``."""
    with rt.db.read() as session:
        place = place_or_404(session, resource_id)
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
