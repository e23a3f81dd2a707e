"""Booking HTTP API: parse → handler → serialize."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from flask import Blueprint, Response, request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from services.booking import handlers, reports, store, waitlist
from shared.auth import current_user
from shared.errors import ValidationFailed
from shared.http import (
    Timestamp,
    json_response,
    page,
    page_params,
    parse_body,
    query_bool,
    query_choice,
    query_int,
    query_time,
)
from shared.openapi import ApiDoc
from shared.service import runtime_of
from shared.timeutil import iso, now

STATUSES = ("confirmed", "pending", "cancelled", "declined", "no_show")
WAITLIST_STATUSES = ("waiting", "booked", "offered", "skipped", "expired", "left")
MAX_WINDOW = dt.timedelta(days=366)

doc = ApiDoc("labshare booking", "Bookings and series, approvals, check-in and no-shows, waitlists, availability, "
             "free-slot search, usage and utilisation.")
bp = Blueprint("booking", __name__)


@bp.before_request
def _authenticate() -> None:
    """Every route here needs a valid bearer token, checked before the body is read."""
    current_user()

Id = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


Rule = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]
OnConflict = Literal["fail", "skip"]
Scope = Literal["this", "following", "all"]

ON_CONFLICT = (
    "For a series: `fail` (the default) books all occurrences or none (409 listing every clash, 422 every "
    "broken rule); `skip` books those that can be and lists the others in `skipped`: "
    '`[{"start", "end", "reason": "conflict" or the rule, "conflicts"?, "violations"?}]`.'
)
SCOPE = (
    "`this` (the default): this booking only. `following`: this occurrence and the later ones of its series. "
    "`all`: every occurrence of the series that has not started. Occurrences already cancelled are left alone. "
    "A new time moves each occurrence by the same wall-clock amount in the lab's zone (start and end each by "
    "their own), all or nothing."
)


class BookingIn(Strict):
    """A new booking, or a series when ``rrule`` is given."""

    resource_id: Id
    start: Timestamp
    end: Timestamp
    title: str = Field(default="", max_length=500)
    project: str = Field(default="", max_length=200)
    rrule: Rule | None = Field(default=None, description=(
        "RFC 5545 RRULE (COUNT or UNTIL required, at most 366 occurrences); occurrences keep the first one's "
        "wall-clock time in the lab's zone."))
    on_conflict: OnConflict = Field(default="fail", description=ON_CONFLICT)


class BookingPatch(Strict):
    """Changes to a booking; a move is checked like a new booking."""

    start: Timestamp | None = None
    end: Timestamp | None = None
    title: str | None = Field(default=None, max_length=500)
    project: str | None = Field(default=None, max_length=200)
    scope: Scope = Field(default="this", description=SCOPE)


class ReasonIn(Strict):
    """An optional reason, shown to the booking's owner."""

    reason: str | None = Field(default=None, max_length=2000)


class CancelIn(ReasonIn):
    """An optional reason, and which occurrences of a series to cancel."""

    scope: Scope = Field(default="this", description=SCOPE)


class SeriesIn(Strict):
    """A new rule for a series, from this occurrence on."""

    rrule: Rule = Field(description=(
        "The rule from this occurrence on, expanded from its slot with its wall-clock length, e.g. "
        "FREQ=WEEKLY;COUNT=12 to extend an 8-week series from its first occurrence, or COUNT=4 to shorten it."))
    on_conflict: OnConflict = Field(default="fail", description=ON_CONFLICT)


class WaitlistIn(Strict):
    """A window of a resource to wait for."""

    resource_id: Id
    start: Timestamp
    end: Timestamp
    title: str = Field(default="", max_length=500, description="The title of the booking, when it comes.")
    project: str = Field(default="", max_length=200)


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    return value.astimezone(dt.UTC) if value is not None else None


@doc.op("post", "/api/v1/bookings", "Book a resource (or a series)", body=BookingIn, status=201)
@bp.post("/api/v1/bookings")
def create_booking() -> Response:
    """409 with ``conflicts`` when the time is taken; 422 with ``violations`` naming each broken rule."""
    body = parse_body(BookingIn)
    data = body.model_dump()
    data["start"], data["end"] = _utc(body.start), _utc(body.end)
    booking = handlers.create_booking(runtime_of(), current_user(), data)
    return json_response(booking, 201, {"Location": f"/api/v1/bookings/{booking['id']}"})


@doc.op("get", "/api/v1/bookings", "List bookings",
        query=("resource_id", "lab_id", "mine", "from", "to", "status", "limit", "cursor"))
@bp.get("/api/v1/bookings")
def list_bookings() -> Response:
    """Others' bookings appear as busy time only, unless the caller manages their lab."""
    user = current_user()
    limit, cursor = page_params()
    status = query_choice("status", STATUSES)
    with runtime_of().db.read() as session:
        rows = store.list_bookings(
            session,
            resource_id=request.args.get("resource_id"),
            lab_id=request.args.get("lab_id"),
            user_sub=user.sub if query_bool("mine") else None,
            start=query_time("from"),
            end=query_time("to"),
            status=status,
            limit=limit,
            after=cursor,
        )
        managed = set() if user.is_admin else store.managed_lab_ids(session, user.sub)
        items = [
            r.snapshot() if (r.user_sub == user.sub or user.is_admin or r.lab_id in managed) else r.busy()
            for r in rows
        ]
    return json_response(page(items, limit, lambda x: [x["start"], x.get("id", "")]))


@doc.op("get", "/api/v1/bookings/{booking_id}", "Get a booking")
@bp.get("/api/v1/bookings/<booking_id>")
def get_booking(booking_id: str) -> Response:
    """Full details for the owner and the lab's managers; busy time for others."""
    return json_response(handlers.get_booking(runtime_of(), current_user(), booking_id))


@doc.op("patch", "/api/v1/bookings/{booking_id}", "Change a booking (or occurrences of its series)",
        body=BookingPatch)
@bp.patch("/api/v1/bookings/<booking_id>")
def patch_booking(booking_id: str) -> Response:
    """Move or retitle; the same rules as creation apply and each changed booking's ``sequence`` increases
    (one ``booking.updated`` each). With ``scope`` ``following`` or ``all`` the answer is this booking with
    ``updated``: the ids of every occurrence changed. Time left behind is offered to the waitlist."""
    body = parse_body(BookingPatch)
    changes = body.model_dump(exclude_unset=True)
    for key in ("start", "end"):
        if key in changes:
            if changes[key] is None:
                raise ValidationFailed([{"field": key, "message": "cannot be null"}])
            changes[key] = _utc(changes[key])
    return json_response(handlers.update_booking(runtime_of(), current_user(), booking_id, changes))


@doc.op("post", "/api/v1/bookings/{booking_id}/cancel", "Cancel a booking (or occurrences of its series)",
        body=CancelIn)
@bp.post("/api/v1/bookings/<booking_id>/cancel")
def cancel_booking(booking_id: str) -> Response:
    """The owner or a lab manager cancels; the time is free at once and offered to the waitlist. With
    ``scope`` ``following`` or ``all``, the answer is this booking with ``cancelled``: the ids cancelled
    (one ``booking.cancelled`` each)."""
    body = parse_body(CancelIn)
    return json_response(handlers.cancel_booking(runtime_of(), current_user(), booking_id, body.reason,
                                                 body.scope))


@doc.op("post", "/api/v1/bookings/{booking_id}/series", "Extend, shorten or re-pattern a series", body=SeriesIn)
@bp.post("/api/v1/bookings/<booking_id>/series")
def replan_series(booking_id: str) -> Response:
    """Give the series a new rule from this occurrence on. Upcoming occurrences the new rule still has are
    kept (one moved on its own stays where it is), the others are cancelled, and slots no occurrence has
    yet are booked, all or nothing unless ``on_conflict`` is ``skip``. Occurrences before this one, those
    that have started and cancelled ones are left alone. Answers ``{"series_id", "rrule", "occurrences"
    (live, in time order), "booked", "cancelled", "skipped"?}``."""
    body = parse_body(SeriesIn)
    return json_response(handlers.replan_series(runtime_of(), current_user(), booking_id, body.rrule,
                                                body.on_conflict))


@doc.op("post", "/api/v1/bookings/{booking_id}/approve", "Approve a pending booking")
@bp.post("/api/v1/bookings/<booking_id>/approve")
def approve_booking(booking_id: str) -> Response:
    """A lab manager confirms a pending booking."""
    return json_response(handlers.approve_booking(runtime_of(), current_user(), booking_id))


@doc.op("post", "/api/v1/bookings/{booking_id}/decline", "Decline a pending booking", body=ReasonIn)
@bp.post("/api/v1/bookings/<booking_id>/decline")
def decline_booking(booking_id: str) -> Response:
    """A lab manager declines a pending booking."""
    body = parse_body(ReasonIn)
    return json_response(handlers.decline_booking(runtime_of(), current_user(), booking_id, body.reason))


@doc.op("post", "/api/v1/bookings/{booking_id}/check-in", "Check in")
@bp.post("/api/v1/bookings/<booking_id>/check-in")
def check_in(booking_id: str) -> Response:
    """The owner checks in, from 15 minutes before the start until the grace period ends. Where the
    resource requires check-in, a confirmed booking nobody checked in to by then becomes ``no_show``
    (event ``booking.no_show``); the rest of its time is freed and offered to the waitlist."""
    return json_response(handlers.check_in(runtime_of(), current_user(), booking_id))


def _window(default_days: int) -> tuple[dt.datetime, dt.datetime]:
    start = query_time("from") or now().replace(microsecond=0)
    end = query_time("to") or start + dt.timedelta(days=default_days)
    if end <= start:
        raise ValidationFailed([{"field": "to", "message": "must be after from"}])
    if end - start > MAX_WINDOW:
        raise ValidationFailed([{"field": "to", "message": "the window may span at most 366 days"}])
    return start, end


def _required(name: str) -> str:
    value = request.args.get(name)
    if not value:
        raise ValidationFailed([{"field": name, "message": "is required"}])
    return value


@doc.op("get", "/api/v1/availability", "Busy and free time of a resource", query=("resource_id", "from", "to"))
@bp.get("/api/v1/availability")
def availability() -> Response:
    """Free time honours opening hours, outages and buffers (default window: the next 7 days)."""
    resource_id = _required("resource_id")
    start, end = _window(7)
    return json_response(handlers.availability(runtime_of(), resource_id, start, end))


@doc.op("get", "/api/v1/slots", "Earliest free slots across a category",
        query=("category", "duration_minutes", "from", "to", "limit"))
@bp.get("/api/v1/slots")
def slots() -> Response:
    """The earliest free slots of a length on any active resource of the category."""
    user = current_user()
    category = _required("category")
    minutes = query_int("duration_minutes", None, 1, 10080)
    if minutes is None:
        raise ValidationFailed([{"field": "duration_minutes", "message": "is required"}])
    start, end = _window(14)
    limit = query_int("limit", 10, 1, 500) or 10
    items = handlers.find_slots(runtime_of(), user, category, minutes, start, end, limit)
    return json_response({"items": items, "next": None})


# -- waitlist ---------------------------------------------------------------------------------------


@doc.op("post", "/api/v1/waitlist", "Wait for a taken time", body=WaitlistIn, status=201)
@bp.post("/api/v1/waitlist")
def join_waitlist() -> Response:
    """201 ``{"id", "position", "status": "waiting", ..., "conflicts"}`` when the time is taken (booked, or out
    of service); 409 ``time-is-free`` when nothing is in the way (book it); 422 when a booking of it would
    break a rule. When the whole window frees (cancel, decline, move, no-show, outage removed), the earliest
    waiter whom the rules still allow gets the booking: confirmed (``waitlist.booked``) or pending where
    approval is needed (``waitlist.offered``); one they no longer allow is ``skipped`` (``waitlist.skipped``,
    with ``violations``). Entries whose start passes expire (``waitlist.expired``)."""
    body = parse_body(WaitlistIn)
    data = body.model_dump()
    data["start"], data["end"] = _utc(body.start), _utc(body.end)
    entry = waitlist.join(runtime_of(), current_user(), data)
    return json_response(entry, 201, {"Location": f"/api/v1/waitlist/{entry['id']}"})


@doc.op("get", "/api/v1/waitlist", "List waitlist entries",
        query=("mine", "resource_id", "lab_id", "status", "limit", "cursor"))
@bp.get("/api/v1/waitlist")
def list_waitlist() -> Response:
    """Your entries and, for a lab's managers, the lab's (``mine=true``: yours only); by start time.
    ``position`` is your place in the queue for that time while ``status`` is ``waiting``."""
    user = current_user()
    limit, cursor = page_params()
    items = waitlist.entries(
        runtime_of(), user, mine=query_bool("mine"), resource_id=request.args.get("resource_id"),
        lab_id=request.args.get("lab_id"), status=query_choice("status", WAITLIST_STATUSES), limit=limit,
        after=cursor,
    )
    return json_response(page(items, limit, lambda x: [x["start"], x["id"]]))


@doc.op("get", "/api/v1/waitlist/{entry_id}", "Get a waitlist entry")
@bp.get("/api/v1/waitlist/<entry_id>")
def get_waitlist_entry(entry_id: str) -> Response:
    """For its owner and the lab's managers; with ``booking_id`` once it got its booking."""
    return json_response(waitlist.get(runtime_of(), current_user(), entry_id))


@doc.op("delete", "/api/v1/waitlist/{entry_id}", "Leave the waitlist", status=204)
@bp.delete("/api/v1/waitlist/<entry_id>")
def leave_waitlist(entry_id: str) -> Response:
    """The owner or a lab manager; 409 once the entry got its booking (cancel that instead)."""
    waitlist.leave(runtime_of(), current_user(), entry_id)
    return Response(status=204)


# -- reports ----------------------------------------------------------------------------------------


def _report_window() -> tuple[dt.datetime, dt.datetime]:
    start, end = query_time("from"), query_time("to")
    missing = [{"field": name, "message": "is required"} for name, v in (("from", start), ("to", end)) if v is None]
    if missing:
        raise ValidationFailed(missing)
    if end <= start:
        raise ValidationFailed([{"field": "to", "message": "must be after from"}])
    if end - start > MAX_WINDOW:
        raise ValidationFailed([{"field": "to", "message": "the window may span at most 366 days"}])
    return start, end


@doc.op("get", "/api/v1/usage", "Usage and cost per resource, organisation and project",
        query=("lab_id", "resource_id", "org", "from", "to", "format"))
@bp.get("/api/v1/usage")
def usage() -> Response:
    """For a lab's managers (admins: every lab): one row per resource × org × project with ``resource_id``,
    ``resource_name``, ``org``, ``project``, ``bookings``, ``hours`` (confirmed bookings, no-shows included,
    clipped to ``[from, to)``), ``rate``, ``amount`` and ``currency`` (the internal rate when the booking's org
    is the lab's, the external one otherwise). ``format=csv`` answers ``text/csv`` with that header."""
    start, end = _report_window()
    fmt = query_choice("format", ("json", "csv")) or "json"
    lines = reports.usage(runtime_of(), current_user(), lab_id=request.args.get("lab_id") or None,
                          resource_id=request.args.get("resource_id") or None,
                          org=request.args.get("org") or None, start=start, end=end)
    if fmt == "csv":
        return Response(reports.usage_csv(lines), 200, {"Content-Disposition": 'attachment; filename="usage.csv"'},
                        mimetype="text/csv")
    return json_response({"items": lines, "next": None, "from": iso(start), "to": iso(end)})


@doc.op("get", "/api/v1/utilisation", "Booked share of open time per resource of a lab",
        query=("lab_id", "from", "to"))
@bp.get("/api/v1/utilisation")
def utilisation() -> Response:
    """For the lab's managers: per resource ``open_hours`` (opening hours minus outages; always open counts
    24 h a day), ``booked_hours`` (confirmed and no-show bookings, clipped), ``no_show_hours`` and
    ``utilisation`` (booked ÷ open, null when never open)."""
    lab_id = _required("lab_id")
    start, end = _report_window()
    return json_response(reports.utilisation(runtime_of(), current_user(), lab_id, start, end))
