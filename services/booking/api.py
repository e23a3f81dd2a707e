"""Booking HTTP API: parse → handler → serialize."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from flask import Blueprint, Response, request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from services.booking import handlers, store
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
from shared.timeutil import now

STATUSES = ("confirmed", "pending", "cancelled", "declined", "no_show")
MAX_WINDOW = dt.timedelta(days=366)

doc = ApiDoc("labshare booking", "Bookings and series, approvals, availability and free-slot search.")
bp = Blueprint("booking", __name__)


@bp.before_request
def _authenticate() -> None:
    """Every route here needs a valid bearer token, checked before the body is read."""
    current_user()

Id = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BookingIn(Strict):
    """A new booking, or a series when ``rrule`` is given."""

    resource_id: Id
    start: Timestamp
    end: Timestamp
    title: str = Field(default="", max_length=500)
    project: str = Field(default="", max_length=200)
    rrule: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)] | None = None


class BookingPatch(Strict):
    """Changes to a booking; a move is checked like a new booking."""

    start: Timestamp | None = None
    end: Timestamp | None = None
    title: str | None = Field(default=None, max_length=500)
    project: str | None = Field(default=None, max_length=200)


class ReasonIn(Strict):
    """An optional reason, shown to the booking's owner."""

    reason: str | None = Field(default=None, max_length=2000)


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


@doc.op("patch", "/api/v1/bookings/{booking_id}", "Change a booking", body=BookingPatch)
@bp.patch("/api/v1/bookings/<booking_id>")
def patch_booking(booking_id: str) -> Response:
    """Move or retitle; the same rules as creation apply and ``sequence`` increases."""
    body = parse_body(BookingPatch)
    changes = body.model_dump(exclude_unset=True)
    for key in ("start", "end"):
        if key in changes:
            if changes[key] is None:
                raise ValidationFailed([{"field": key, "message": "cannot be null"}])
            changes[key] = _utc(changes[key])
    return json_response(handlers.update_booking(runtime_of(), current_user(), booking_id, changes))


@doc.op("post", "/api/v1/bookings/{booking_id}/cancel", "Cancel a booking", body=ReasonIn)
@bp.post("/api/v1/bookings/<booking_id>/cancel")
def cancel_booking(booking_id: str) -> Response:
    """The owner or a lab manager cancels; the time is free at once."""
    body = parse_body(ReasonIn)
    return json_response(handlers.cancel_booking(runtime_of(), current_user(), booking_id, body.reason))


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
    """The owner checks in, from 15 minutes before the start until the grace period ends."""
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

