"""Calendar feeds over HTTP: public busy calendars of resources and labs, personal feeds behind a token.

Every feed answers conditional requests from its row in ``feed_versions`` alone
(bumped in the transaction of each change the feed shows): the ETag is that
version plus the window, so a client whose copy is current gets a 304 without a
single booking being read. The rows of a feed are read only to build a 200.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable

from flask import Blueprint, Response, request
from sqlalchemy.orm import Session
from werkzeug.http import http_date, is_resource_modified

from services.booking import feed_render, store
from services.booking.api import doc
from services.booking.domain import LIVE, Policy
from services.booking.feed_render import Entry, FeedInfo, Where, Window
from shared.auth import current_user
from shared.calendar import booking_uid, feed_url, webcal_url
from shared.errors import DomainError, NotFound, ValidationFailed
from shared.http import json_response, query_time
from shared.service import Runtime, runtime_of
from shared.timeutil import iso, now

bp = Blueprint("feeds", __name__)

#: How long a client or a shared cache may keep a feed before asking again.
MAX_AGE = 300
#: 32 random bytes, URL-safe base64 without padding: 256 bits, 43 characters.
TOKEN_BYTES = 32
_TOKEN_SHAPE = re.compile(r"^[A-Za-z0-9_-]{43}$")
CALENDAR_TYPE = "text/calendar"


class Gone(DomainError):
    """The feed existed but its resource was retired."""

    status, title, slug = 410, "Gone", "gone"


# -- personal feed tokens -------------------------------------------------------------------------


def hash_token(token: str) -> str:
    """What is stored of a token: its SHA-256. The token has 256 random bits, so no salt or stretching is needed."""
    return hashlib.sha256(token.encode()).hexdigest()


def user_feed_path(token: str) -> str:
    """The path of the personal feed a token opens."""
    return f"/feeds/users/{token}.ics"


def rotate_token(rt: Runtime, sub: str) -> str:
    """A new feed token for ``sub``; the previous one (and its URL) stops working at once."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    with rt.db.begin() as session:
        store.set_feed_token(session, sub, hash_token(token), now())
    return token


def revoke_token(rt: Runtime, sub: str) -> bool:
    """Remove ``sub``'s feed token; False when there was none."""
    with rt.db.begin() as session:
        return store.drop_feed_token(session, sub)


@doc.op("post", "/api/v1/feeds/token", "Create or replace your personal calendar feed URL", status=201)
@bp.post("/api/v1/feeds/token")
def create_token() -> Response:
    """``{"url", "webcal_url"}`` of a feed of all your bookings; calling it again replaces the URL,
    and the old one answers 404."""
    rt = runtime_of()
    user = current_user()
    url = feed_url(rt.settings, user_feed_path(rotate_token(rt, user.sub)))
    return json_response({"url": url, "webcal_url": webcal_url(url)}, 201)


@doc.op("delete", "/api/v1/feeds/token", "Revoke your personal calendar feed URL", status=204)
@bp.delete("/api/v1/feeds/token")
def delete_token() -> Response:
    """The URL answers 404 from now on."""
    if not revoke_token(runtime_of(), current_user().sub):
        raise NotFound("You have no personal feed.")
    return Response(status=204)


# -- conditional GET ------------------------------------------------------------------------------


def _requested_range() -> tuple[dt.datetime | None, dt.datetime | None]:
    start, end = query_time("from"), query_time("to")
    if start is not None and end is not None and end <= start:
        raise ValidationFailed([{"field": "to", "message": "must be after from"}])
    return start, end


def _day_start(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(0), tzinfo=dt.UTC)


def _validators(
    kind: str, key: str, version: int | None, changed_at: dt.datetime | None, win: Window, public_url: str
) -> tuple[str, dt.datetime]:
    """The strong ETag and the Last-Modified of a feed as of ``win``.

    Both come from the feed's version row, the window and the day it was
    computed on (the window slides and past cancellations drop out daily), and
    the rendering's format: nothing is read or rendered to know them.
    """
    parts = (feed_render.FORMAT, kind, key, str(version or 0), iso(win.start), iso(win.end), win.day.isoformat(),
             public_url)
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:20]
    changed = max(changed_at or _day_start(win.day), _day_start(win.day))
    return f'"{version or 0}-{digest}"', changed.replace(microsecond=0)


def _answer(
    etag: str, changed: dt.datetime, at: dt.datetime, private: bool, build: Callable[[], bytes]
) -> Response:
    """304 when the client's copy is current (If-None-Match first, else If-Modified-Since), else the feed."""
    floor_now = at.replace(microsecond=0)
    # Last-Modified has whole seconds: a change later in this same second would carry the
    # same date, so within the second of a change we claim one second earlier. A client
    # asking If-Modified-Since with it then gets the feed once more, never a stale 304.
    sent_modified = changed if changed < floor_now else floor_now - dt.timedelta(seconds=1)
    headers = {
        "ETag": etag,
        "Last-Modified": http_date(sent_modified),
        "Cache-Control": f"{'private' if private else 'public'}, max-age={MAX_AGE}",
    }
    if not is_resource_modified(request.environ, etag=etag, last_modified=changed):
        return Response(status=304, headers=headers)
    return Response(build(), 200, headers, mimetype=CALENDAR_TYPE)


def _places(rows) -> dict[str, Where]:
    return {
        r[0]: Where(resource_id=r[0], resource_name=r[1], lab_id=r[2], lab_name=r[3] or "",
                    building=(r[4] or {}).get("building") or "", timezone=r[5] or "UTC",
                    show_titles=bool(r[6]))
        for r in rows
    }


def _entries(rows) -> list[Entry]:
    return [Entry(*row) for row in rows]


def _uid(rt: Runtime) -> Callable[[str], str]:
    return lambda booking_id: booking_uid(booking_id, rt.settings)


# -- the feeds --------------------------------------------------------------------------------------

FEED_QUERY = ("from", "to")


def _resource_feed_state(session: Session, resource_id: str) -> tuple[dt.timedelta, int | None, dt.datetime | None]:
    """A resource's horizon and its feed's version and last change; 404 when unknown, 410 when retired."""
    state = store.resource_feed_state(session, resource_id)
    if state is None:
        raise NotFound(f"No resource with id {resource_id}.")
    status, policy, _lab_id, version, changed_at = state
    if status == "retired":
        raise Gone(f"Resource {resource_id} was retired; its feed has ended.")
    return dt.timedelta(days=Policy.from_dict(policy).horizon_days), version, changed_at


@doc.op("get", "/feeds/resources/{resource_id}.ics", "A resource's busy calendar (iCalendar)",
        query=FEED_QUERY, auth=False, content=CALENDAR_TYPE)
@bp.get("/feeds/resources/<resource_id>.ics")
def resource_feed(resource_id: str) -> Response:
    """Busy blocks ("Booked", or titles where the lab shows them), no names; 90 days back to the horizon.
    Conditional requests (If-None-Match, If-Modified-Since) are answered 304; a retired resource is 410."""
    rt, at = runtime_of(), now()
    start, end = _requested_range()
    with rt.db.read() as session:
        horizon, version, changed_at = _resource_feed_state(session, resource_id)
        win = feed_render.window(at, horizon, start, end)
        path = f"/feeds/resources/{resource_id}.ics"
        etag, changed = _validators("resource", resource_id, version, changed_at, win, rt.settings.public_url)

        def build() -> bytes:
            places = _places(store.feed_places(session, resource_ids=[resource_id]))
            where = places.get(resource_id) or Where(resource_id)
            rows = store.feed_bookings(session, win.start, win.end, feed_render.LONGEST_BOOKING,
                                       resource_id=resource_id)
            info = FeedInfo(
                name=f"{where.resource_name} ({where.lab_name})" if where.lab_name else where.resource_name,
                description=f"When {where.resource_name or 'this resource'} is booked.",
                url=feed_url(rt.settings, path),
            )
            return feed_render.render_feed(info, _entries(rows), places, personal=False, uid=_uid(rt),
                                           base_url=rt.settings.public_url, now=at)

        return _answer(etag, changed, at, False, build)


@doc.op("get", "/feeds/resources/{resource_id}/freebusy.ics", "A resource's free/busy time (VFREEBUSY)",
        query=FEED_QUERY, auth=False, content=CALENDAR_TYPE)
@bp.get("/feeds/resources/<resource_id>/freebusy.ics")
def resource_freebusy(resource_id: str) -> Response:
    """BUSY, BUSY-TENTATIVE (pending) and BUSY-UNAVAILABLE (outages) from today to the horizon, in UTC."""
    rt, at = runtime_of(), now()
    start, end = _requested_range()
    with rt.db.read() as session:
        horizon, version, changed_at = _resource_feed_state(session, resource_id)
        today = _day_start(at.date())
        win = feed_render.window(at, horizon, max(start or today, today), end)
        path = f"/feeds/resources/{resource_id}/freebusy.ics"
        etag, changed = _validators("freebusy", resource_id, version, changed_at, win, rt.settings.public_url)

        def build() -> bytes:
            where = _places(store.feed_places(session, resource_ids=[resource_id])).get(resource_id)
            where = where or Where(resource_id)
            rows = store.feed_bookings(session, win.start, win.end, feed_render.LONGEST_BOOKING,
                                       resource_id=resource_id)
            busy = [(e.start, e.end, e.status) for e in _entries(rows) if e.status in LIVE]
            outages = store.outages_between(session, resource_id, win.start, win.end)
            info = FeedInfo(name=f"{where.resource_name}: free/busy",
                            description=f"When {where.resource_name or 'this resource'} is busy.",
                            url=feed_url(rt.settings, path))
            return feed_render.render_freebusy(info, where, busy, outages, win,
                                               uid=booking_uid(f"freebusy-{resource_id}", rt.settings),
                                               base_url=rt.settings.public_url, now=at)

        return _answer(etag, changed, at, False, build)


@doc.op("get", "/feeds/labs/{lab_id}.ics", "A lab's busy calendar (iCalendar)",
        query=FEED_QUERY, auth=False, content=CALENDAR_TYPE)
@bp.get("/feeds/labs/<lab_id>.ics")
def lab_feed(lab_id: str) -> Response:
    """The busy blocks of every resource of the lab (each names its resource in RESOURCES);
    ahead to the longest horizon of its resources."""
    rt, at = runtime_of(), now()
    start, end = _requested_range()
    with rt.db.read() as session:
        state = store.lab_feed_state(session, lab_id)
        if state is None:
            raise NotFound(f"No lab with id {lab_id}.")
        lab_name, version, changed_at = state
        policies = store.lab_policies(session, lab_id)
        horizon = max((Policy.from_dict(p).horizon_days for p in policies), default=Policy().horizon_days)
        win = feed_render.window(at, dt.timedelta(days=horizon), start, end)
        path = f"/feeds/labs/{lab_id}.ics"
        etag, changed = _validators("lab", lab_id, version, changed_at, win, rt.settings.public_url)

        def build() -> bytes:
            places = _places(store.feed_places(session, lab_id=lab_id))
            rows = store.feed_bookings(session, win.start, win.end, feed_render.LONGEST_BOOKING, lab_id=lab_id)
            info = FeedInfo(name=lab_name, description=f"When the resources of {lab_name} are booked.",
                            url=feed_url(rt.settings, path))
            return feed_render.render_feed(info, _entries(rows), places, personal=False, uid=_uid(rt),
                                           base_url=rt.settings.public_url, now=at)

        return _answer(etag, changed, at, False, build)


@doc.op("get", "/feeds/users/{token}.ics", "Your bookings with full details (iCalendar)",
        query=FEED_QUERY, auth=False, content=CALENDAR_TYPE)
@bp.get("/feeds/users/<token>.ics")
def user_feed(token: str) -> Response:
    """The token is the credential (from ``POST /api/v1/feeds/token``); a replaced or unknown one is 404.
    90 days back to 365 days ahead."""
    rt, at = runtime_of(), now()
    missing = NotFound("No such feed: the link was replaced or never existed.")
    if not _TOKEN_SHAPE.match(token):
        raise missing
    start, end = _requested_range()
    presented = hash_token(token)
    with rt.db.read() as session:
        state = store.user_feed_state(session, presented)
        # Looked up by its hash, then compared in constant time all the same.
        if state is None or not hmac.compare_digest(state[1], presented):
            raise missing
        sub, _hash, version, changed_at = state
        win = feed_render.window(at, feed_render.USER_AHEAD, start, end)
        etag, changed = _validators("user", sub, version, changed_at, win, rt.settings.public_url)

        def build() -> bytes:
            rows = store.feed_bookings(session, win.start, win.end, feed_render.LONGEST_BOOKING, user_sub=sub)
            entries = _entries(rows)
            places = _places(store.feed_places(session, resource_ids={e.resource_id for e in entries}))
            info = FeedInfo(name="My lab bookings", description="Your labshare bookings.",
                            url=feed_url(rt.settings, user_feed_path(token)))
            return feed_render.render_feed(info, entries, places, personal=True, uid=_uid(rt),
                                           base_url=rt.settings.public_url, now=at)

        return _answer(etag, changed, at, True, build)
