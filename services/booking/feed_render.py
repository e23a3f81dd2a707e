"""Calendar feeds as iCalendar (RFC 5545 with RFC 7986's calendar properties). Pure: icalendar, no Flask, no SQL.

Which bookings a feed lists, over which window, and how each becomes a VEVENT.
icalendar renders every component, escaping text and folding lines. A VEVENT is
a pure function of its booking's revision and the place it is in, so its bytes
are memoised (``_vevent``) and a feed is the calendar's header with those bytes
spliced in: after a change, one event is rendered again, not the whole window.
"""

from __future__ import annotations

import datetime as dt
import functools
import zoneinfo
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from icalendar import Calendar, Event, FreeBusy, Timezone, vCalAddress, vDatetime, vDuration, vInt, vText, vUri

UTC = dt.UTC

#: Part of every ETag: change it whenever the rendering changes, so clients fetch anew.
FORMAT = "1"
PRODID = "-//labshare//Calendar feeds 1.0//EN"
#: How far back a feed reaches; ahead, resource feeds reach the resource's horizon.
PAST = dt.timedelta(days=90)
#: How far ahead a personal feed reaches.
USER_AHEAD = dt.timedelta(days=365)
#: Inventory caps ``max_minutes`` at 10080: no booking lasts longer, which bounds the window's index scan.
LONGEST_BOOKING = dt.timedelta(minutes=10080)
#: How often clients should poll (``REFRESH-INTERVAL``, ``X-PUBLISHED-TTL``).
REFRESH = dt.timedelta(minutes=15)

LIVE_STATUS = {"confirmed": "CONFIRMED", "pending": "TENTATIVE"}
#: Rendered in place of ``DTSTAMP`` in memoised events, replaced by the generation time in each feed.
_STAMP_PLACEHOLDER = dt.datetime(1970, 1, 1, tzinfo=UTC)
_END = b"END:VCALENDAR\r\n"


_CONTROLS = dict.fromkeys(c for c in range(32) if chr(c) not in "\t\n")
_CONTROLS[0x7F] = None


def _text(value: str) -> str:
    """Text as every parser reads it back: no control characters (RFC 5545 TEXT allows none but
    tab and, escaped, newline) and no blanks at the ends (libical drops them, icalendar and ical.js keep them)."""
    return value.translate(_CONTROLS).strip()


class Entry(NamedTuple):
    """One booking occurrence as a feed shows it (the columns ``store.FEED_COLUMNS`` selects)."""

    id: str
    resource_id: str
    title: str
    project: str
    start: dt.datetime
    end: dt.datetime
    status: str
    sequence: int
    modified: dt.datetime


@dataclass(frozen=True)
class Where:
    """The resource a booking is of and its lab, as the read model knows them."""

    resource_id: str
    resource_name: str = ""
    lab_id: str = ""
    lab_name: str = ""
    building: str = ""
    timezone: str = "UTC"
    show_titles: bool = False

    @property
    def location(self) -> str:
        """``LOCATION``: the lab's name and building."""
        return ", ".join(filter(None, (_text(self.lab_name), _text(self.building))))


@dataclass(frozen=True)
class Window:
    """The time a feed covers, and the day it was computed on (the window moves daily)."""

    start: dt.datetime
    end: dt.datetime
    day: dt.date


@dataclass(frozen=True)
class FeedInfo:
    """What a calendar says about itself."""

    name: str
    description: str
    url: str


def window(
    now: dt.datetime, ahead: dt.timedelta, start: dt.datetime | None = None, end: dt.datetime | None = None
) -> Window:
    """From 90 days before today to ``ahead`` after today (whole UTC days); ``start``/``end`` only narrow it."""
    today = now.astimezone(UTC).date()
    midnight = dt.datetime.combine(today, dt.time(0), tzinfo=UTC)
    lo, hi = midnight - PAST, midnight + dt.timedelta(days=1) + ahead
    if start is not None:
        lo = max(lo, start)
    if end is not None:
        hi = min(hi, end)
    return Window(lo, max(lo, hi), today)


def listed(entry: Entry, now: dt.datetime) -> bool:
    """Live bookings are listed; cancelled, declined and no-show ones only while their start is ahead.

    A subscribed client sees them as ``STATUS:CANCELLED`` and removes them; once
    past, they are left out.
    """
    return entry.status in LIVE_STATUS or entry.start > now


def ics_status(status: str) -> str:
    """``STATUS``: CONFIRMED, TENTATIVE (pending) or CANCELLED (cancelled, declined, no-show)."""
    return LIVE_STATUS.get(status, "CANCELLED")


#: Zone names written as UTC (``...Z``), which needs no VTIMEZONE.
UTC_NAMES = frozenset({"UTC", "Etc/UTC", "Etc/UCT", "UCT", "Etc/Universal", "Universal", "Etc/Zulu", "Zulu"})


@functools.lru_cache(maxsize=256)
def _zone(name: str) -> dt.tzinfo:
    if name in UTC_NAMES:
        return UTC
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return UTC


@functools.lru_cache(maxsize=64)
def _vtimezone(tzid: str, first: dt.date, last: dt.date) -> Timezone:
    return Timezone.from_tzid(tzid, first_date=first, last_date=last)


def _organizer(where: Where, base_url: str) -> vCalAddress:
    # RFC 5546 wants an ORGANIZER in a PUBLISH; the lab organises, named by its
    # address in the API, so a public feed carries no person and no e-mail.
    organizer = vCalAddress(f"{base_url}/api/v1/labs/{where.lab_id}")
    organizer.params["CN"] = vText(_text(where.lab_name) or "labshare")
    return organizer


_STATUS = {name: vText(name) for name in ("CONFIRMED", "TENTATIVE", "CANCELLED")}
_TRANSP = {True: vText("OPAQUE"), False: vText("TRANSPARENT")}
_BOOKED = vText("Booked")


@functools.lru_cache(maxsize=1024)
def _place_properties(where: Where, base_url: str) -> tuple[tuple[str, object], ...]:
    """The properties every event of one resource shares, built once (property values are never changed)."""
    props: list[tuple[str, object]] = []
    if where.location:
        props.append(("LOCATION", vText(where.location)))
    if _text(where.resource_name):
        props.append(("RESOURCES", vText(_text(where.resource_name))))
    props.append(("ORGANIZER", _organizer(where, base_url)))
    return tuple(props)


@functools.lru_cache(maxsize=20_000)
def _vevent(entry: Entry, where: Where, personal: bool, uid: str, base_url: str) -> bytes:
    """One VEVENT, with a placeholder ``DTSTAMP``; memoised, as it depends on nothing else.

    Properties are set as typed values (what ``Event.add`` would infer) and written in
    this order: the event is rendered for every booking, so this is the hot loop.
    """
    tz = _zone(where.timezone)
    live = entry.status in LIVE_STATUS
    event = Event()
    event["UID"] = vText(uid)
    event["DTSTAMP"] = vDatetime(_STAMP_PLACEHOLDER)
    event["DTSTART"] = vDatetime(entry.start.astimezone(tz))
    event["DTEND"] = vDatetime(entry.end.astimezone(tz))
    event["LAST-MODIFIED"] = vDatetime(entry.modified)
    event["SEQUENCE"] = vInt(entry.sequence)
    event["STATUS"] = _STATUS[ics_status(entry.status)]
    event["TRANSP"] = _TRANSP[live]
    title = _text(entry.title)
    if personal:
        resource = _text(where.resource_name)
        link = f"{base_url}/api/v1/bookings/{entry.id}"
        lines = [f"Resource: {resource}", f"Lab: {_text(where.lab_name)}"]
        if _text(entry.project):
            lines.append(f"Project: {_text(entry.project)}")
        if entry.status == "pending":
            lines.append("Waiting for the lab's approval.")
        lines.append(link)
        event["SUMMARY"] = vText(title or resource or "Booking")
        event["DESCRIPTION"] = vText("\n".join(lines))
        event["URL"] = vUri(link)
    else:
        event["SUMMARY"] = vText(title) if where.show_titles and title else _BOOKED
    for name, value in _place_properties(where, base_url):
        event[name] = value
    return event.to_ical(sorted=False)


def _calendar(info: FeedInfo) -> Calendar:
    cal = Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    cal.add("calscale", "GREGORIAN")
    cal.add("method", "PUBLISH")
    cal.add("name", vText(info.name))
    cal.add("x-wr-calname", vText(info.name))
    cal.add("description", vText(info.description))
    cal.add("x-wr-caldesc", vText(info.description))
    cal.add("url", info.url)
    cal.add("refresh-interval", REFRESH, parameters={"VALUE": "DURATION"})
    cal.add("x-published-ttl", vDuration(REFRESH))
    return cal


def _splice(header: Calendar, body: bytes) -> bytes:
    """The calendar's own bytes with ``body`` (rendered components) before its END line."""
    head = header.to_ical()
    assert head.endswith(_END)
    return head[: -len(_END)] + body + _END


def render_feed(
    info: FeedInfo,
    entries: Iterable[Entry],
    places: Mapping[str, Where],
    *,
    personal: bool,
    uid: Callable[[str], str],
    base_url: str,
    now: dt.datetime,
) -> bytes:
    """A feed: one VEVENT per listed booking occurrence, a VTIMEZONE for every zone they use.

    ``places`` maps resource ids to where they are; ``uid`` gives a booking's
    UID; ``now`` is the generation time (``DTSTAMP``) and decides which cancelled
    bookings are still ahead.
    """
    base_url = base_url.rstrip("/")
    chunks: list[bytes] = []
    zones: set[str] = set()
    first = last = None
    for entry in entries:
        if not listed(entry, now):
            continue
        where = places.get(entry.resource_id) or Where(entry.resource_id)
        chunks.append(_vevent(entry, where, personal, uid(entry.id), base_url))
        if _zone(where.timezone) is not UTC:
            zones.add(where.timezone)
        first = entry.start if first is None else min(first, entry.start)
        last = entry.end if last is None else max(last, entry.end)
    cal = _calendar(info)
    for tzid in sorted(zones):
        # The rules from a day before the first event to a day after the last one.
        cal.add_component(_vtimezone(tzid, (first - dt.timedelta(days=1)).date(),
                                     (last + dt.timedelta(days=1)).date()))
    placeholder = vDatetime(_STAMP_PLACEHOLDER).to_ical()
    stamp = vDatetime(now.astimezone(UTC).replace(microsecond=0)).to_ical()
    # Whole content lines only: "\r\nDTSTAMP:...\r\n" cannot occur inside escaped or folded text.
    body = b"".join(chunks).replace(b"\r\nDTSTAMP:" + placeholder + b"\r\n", b"\r\nDTSTAMP:" + stamp + b"\r\n")
    return _splice(cal, body)


def _merged(periods: Iterable[tuple[dt.datetime, dt.datetime]], lo: dt.datetime, hi: dt.datetime):
    out: list[list[dt.datetime]] = []
    for start, end in sorted((max(s, lo), min(e, hi)) for s, e in periods):
        if start >= end:
            continue
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(s, e) for s, e in out]


def render_freebusy(
    info: FeedInfo,
    where: Where,
    busy: Iterable[tuple[dt.datetime, dt.datetime, str]],
    outages: Iterable[tuple[dt.datetime, dt.datetime]],
    win: Window,
    *,
    uid: str,
    base_url: str,
    now: dt.datetime,
) -> bytes:
    """A VFREEBUSY of one resource over ``win``: BUSY (confirmed), BUSY-TENTATIVE (pending), BUSY-UNAVAILABLE
    (outages); times in UTC, as RFC 5545 requires for free/busy."""
    busy = list(busy)
    fb = FreeBusy()
    fb.add("uid", uid)
    fb.add("dtstamp", now.astimezone(UTC).replace(microsecond=0))
    fb.add("dtstart", win.start)
    fb.add("dtend", win.end)
    fb.add("organizer", _organizer(where, base_url.rstrip("/")))
    fb.add("url", info.url)
    kinds = (
        ("BUSY", [(s, e) for s, e, status in busy if status == "confirmed"]),
        ("BUSY-TENTATIVE", [(s, e) for s, e, status in busy if status == "pending"]),
        ("BUSY-UNAVAILABLE", list(outages)),
    )
    for fbtype, periods in kinds:
        for start, end in _merged(periods, win.start, win.end):
            fb.add("freebusy", (start.astimezone(UTC), end.astimezone(UTC)), parameters={"FBTYPE": fbtype})
    cal = _calendar(info)
    cal.add_component(fb)
    return cal.to_ical()
