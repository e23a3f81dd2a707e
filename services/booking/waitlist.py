"""The waitlist: wait for a taken window, see your place in the queue, leave; entries expire at their start.

Freed time reaches the waiters where it is freed, in the same transaction
(``handlers.promote_waiters``); this module only keeps the queue.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.orm import Session

from services.booking import domain, handlers, store
from services.booking.store import WaitlistEntry
from shared.auth import Principal
from shared.errors import DomainError, InvalidState, NotFound, PolicyViolation
from shared.service import Runtime
from shared.timeutil import now

#: Entries expired per transaction.
EXPIRE_BATCH = 500


class TimeIsFree(DomainError):
    """Nothing stands in the way of that time: book it instead of waiting for it."""

    status, title, slug = 409, "The time is free", "time-is-free"


def _positions(session: Session, entries: list[WaitlistEntry]) -> dict[str, int]:
    """The place in the queue of each waiting entry among ``entries``."""
    waiting = [e for e in entries if e.status == "waiting"]
    if not waiting:
        return {}
    t = now()
    lo, hi = min(e.start_at for e in waiting), max(e.end_at for e in waiting)
    queue: dict[str, list[domain.Waiter]] = {}
    for e in store.waiters_of(session, {e.resource_id for e in waiting}, lo, hi, after=t):
        queue.setdefault(e.resource_id, []).append(domain.Waiter(e.id, e.start_at, e.end_at, e.created_at))
    positions: dict[str, int] = {}
    for waiters in queue.values():
        positions.update(domain.waitlist_positions(waiters))
    return positions


def _visible(session: Session, user: Principal, entry: WaitlistEntry | None, entry_id: str):
    """The entry's resource and lab when the caller may see it (owner, lab manager, admin), else 404."""
    place = store.load_place(session, entry.resource_id) if entry is not None else None
    if entry is None or not (
        entry.user_sub == user.sub or user.is_admin or (place is not None and handlers.can_manage(user, place))
    ):
        raise NotFound(f"No waitlist entry with id {entry_id}.")
    return place


def join(rt: Runtime, user: Principal, data: dict[str, Any]) -> dict[str, Any]:
    """Wait for a window of a resource that is taken (booked, or out of service).

    The window must pass every rule a booking would (422 otherwise); a window that
    is free is a 409 ``time-is-free``: book it. The entry's ``position`` counts the
    people who joined earlier for overlapping time.
    """
    start, end, resource_id = data["start"], data["end"], data["resource_id"]
    handlers.check_times(start, end)
    with rt.db.begin() as session:
        # Under the resource's lock: a cancellation cannot free the time between our look and our entry.
        store.lock_resource(session, resource_id)
        place = handlers.place_or_404(session, resource_id)
        found = handlers.broken_rules(session, place, user, [(start, end)])
        refused = [v for v in found if v["rule"] not in domain.STILL_TAKEN]
        if refused:
            raise PolicyViolation(refused)
        out_of_service = bool(found)
        busy = handlers.busy_times(session, place, [(start, end)])[0]
        if not busy and not out_of_service:
            raise TimeIsFree("That time is free: book it (POST /api/v1/bookings) instead of waiting for it.")
        mine = store.waiting_for(session, resource_id, user.sub, start, end)
        if mine is not None:
            raise InvalidState("You are already waiting for this time.", waitlist_id=mine.id)
        stamp = now()
        entry = WaitlistEntry(
            id=str(uuid.uuid4()), resource_id=resource_id, lab_id=place.lab_id, user_sub=user.sub,
            user_name=user.name, user_email=user.email, user_org=user.org, user_roles=list(user.roles),
            title=data.get("title") or "", project=data.get("project") or "", start_at=start, end_at=end,
            status="waiting", created_at=stamp, updated_at=stamp,
        )
        session.add(entry)
        session.flush()
        snap = entry.snapshot(place, _positions(session, [entry]).get(entry.id))
        rt.events.emit(session, "waitlist.joined", snap, subject=entry.id)
    rt.events.committed()
    return {**snap, "conflicts": busy}


def get(rt: Runtime, user: Principal, entry_id: str) -> dict[str, Any]:
    """One entry, for its owner and the lab's managers."""
    with rt.db.read() as session:
        entry = session.get(WaitlistEntry, entry_id)
        place = _visible(session, user, entry, entry_id)
        return entry.snapshot(place, _positions(session, [entry]).get(entry.id))


def entries(
    rt: Runtime,
    user: Principal,
    *,
    mine: bool,
    resource_id: str | None,
    lab_id: str | None,
    status: str | None,
    limit: int,
    after: list | None,
) -> list[dict[str, Any]]:
    """The caller's entries and, for a lab's managers, that lab's; by start time."""
    with rt.db.read() as session:
        managed = None if user.is_admin else (
            store.managed_lab_ids(session, user.sub) if "manager" in user.roles else set())
        rows = store.list_waitlist(session, own=user.sub, managed=managed, mine=mine, resource_id=resource_id,
                                   lab_id=lab_id, status=status, limit=limit, after=after)
        positions = _positions(session, rows)
        places = store.places_by_id(session, {r.resource_id for r in rows})
        return [r.snapshot(places.get(r.resource_id), positions.get(r.id)) for r in rows]


def leave(rt: Runtime, user: Principal, entry_id: str) -> None:
    """Stop waiting (the owner, or a manager of the lab). An entry that already ended stays as it was;
    one that got its booking is a 409: cancel the booking instead."""
    with rt.db.begin() as session:
        entry = session.get(WaitlistEntry, entry_id, with_for_update=True)
        place = _visible(session, user, entry, entry_id)
        if entry.status in ("booked", "offered"):
            raise InvalidState(f"This entry got its booking ({entry.booking_id}); cancel the booking instead.",
                               booking_id=entry.booking_id)
        if entry.status != "waiting":
            return
        entry.status, entry.updated_at = "left", now()
        session.flush()
        rt.events.emit(session, "waitlist.left", entry.snapshot(place), subject=entry.id)
    rt.events.committed()


def expire_entries(rt: Runtime) -> int:
    """End every waiting entry whose start has passed (``waitlist.expired``); returns how many.

    Claims with ``SKIP LOCKED``, so several replicas may run it; catches up on
    whatever fell due while nothing ran.
    """
    t = now()
    total = 0
    while True:
        with rt.db.begin() as session:
            rows = store.claim_expired_waiters(session, t, EXPIRE_BATCH)
            if not rows:
                return total
            places = store.places_by_id(session, {r.resource_id for r in rows})
            stamp = now()
            for row in rows:
                row.status, row.updated_at = "expired", stamp
            session.flush()
            rt.events.emit_all(session, [("waitlist.expired", r.snapshot(places.get(r.resource_id)), r.id)
                                         for r in rows])
        rt.events.committed()
        total += len(rows)
