"""Booking rules: policies, opening hours, free time, series, waitlists, check-in, usage. Pure Python.

Everything here works on aware UTC datetimes; local time (the lab's time zone)
is used only where a rule speaks of wall-clock time: opening hours, the slot
grid, ISO weeks for quotas, the occurrences of a series and how a series moves.
"""

from __future__ import annotations

import datetime as dt
import numbers
import zoneinfo
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dateutil.rrule import rrule, rrulestr

UTC = dt.UTC
LIVE = ("confirmed", "pending")
#: Statuses that are billed and count as booked time: the time was held for the user, used or not.
BILLED = ("confirmed", "no_show")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_OCCURRENCES = 366
#: Inventory caps ``max_minutes`` at 10080: no booking lasts longer, which bounds index scans by start time.
LONGEST_BOOKING = dt.timedelta(minutes=10080)

Interval = tuple[dt.datetime, dt.datetime]


@dataclass(frozen=True)
class Policy:
    """A resource's booking rules, as inventory publishes them."""

    slot_minutes: int = 15
    min_minutes: int = 15
    max_minutes: int = 480
    lead_minutes: int = 0
    horizon_days: int = 90
    buffer_minutes: int = 0
    requires_approval: bool = False
    requires_qualification: bool = False
    opening_hours: Mapping[str, list[list[str]]] | None = None
    max_hours_per_week: float | None = None
    checkin_required: bool = False
    checkin_grace_minutes: int = 15

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Policy:
        """Build from an event snapshot, ignoring members this version does not know."""
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in (data or {}).items() if k in known})

    @property
    def buffer(self) -> dt.timedelta:
        """The time each booking holds after its end."""
        return dt.timedelta(minutes=self.buffer_minutes)


@dataclass(frozen=True)
class Place:
    """What booking knows of a resource and its lab (from inventory's events)."""

    resource_id: str
    resource_name: str
    category: str
    status: str
    policy: Policy
    rates: Mapping[str, Any]
    lab_id: str
    lab_name: str
    lab_org: str
    timezone: str
    managers: frozenset[str]
    manager_contacts: tuple[Mapping[str, Any], ...] = ()
    show_titles: bool = False

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        """The lab's time zone."""
        return zoneinfo.ZoneInfo(self.timezone)


def violation(rule: str, message: str, **extra: Any) -> dict[str, Any]:
    """One broken rule, as the 422 lists it."""
    return {"rule": rule, "message": message, **extra}


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


def open_intervals(
    opening_hours: Mapping[str, list[list[str]]] | None, tz: dt.tzinfo, start: dt.datetime, end: dt.datetime
) -> list[Interval]:
    """Opening hours as merged UTC intervals covering ``[start, end)``.

    Each local day is turned into UTC on its own, so daylight-saving changes
    move the UTC times, not the wall-clock ones. ``None`` means always open.
    """
    if opening_hours is None:
        return [(start, end)]
    first = start.astimezone(tz).date() - dt.timedelta(days=1)
    last = end.astimezone(tz).date() + dt.timedelta(days=1)
    out: list[Interval] = []
    day = first
    while day <= last:
        for pair in opening_hours.get(WEEKDAYS[day.weekday()], []) or []:
            a, b = _minutes(pair[0]), _minutes(pair[1])
            midnight = dt.datetime.combine(day, dt.time(0))
            lo = (midnight + dt.timedelta(minutes=a)).replace(tzinfo=tz).astimezone(UTC)
            hi = (midnight + dt.timedelta(minutes=b)).replace(tzinfo=tz).astimezone(UTC)
            if b == 1440:
                hi = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), tzinfo=tz).astimezone(UTC)
            if hi > start and lo < end:
                out.append((max(lo, start), min(hi, end)))
        day += dt.timedelta(days=1)
    return merge(out)


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    """Sort and merge touching or overlapping intervals."""
    out: list[Interval] = []
    for lo, hi in sorted(intervals):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def subtract(base: list[Interval], holes: Iterable[Interval]) -> list[Interval]:
    """``base`` minus every interval of ``holes``."""
    result = list(base)
    for h_lo, h_hi in merge(holes):
        nxt: list[Interval] = []
        for lo, hi in result:
            if h_hi <= lo or h_lo >= hi:
                nxt.append((lo, hi))
                continue
            if lo < h_lo:
                nxt.append((lo, h_lo))
            if h_hi < hi:
                nxt.append((h_hi, hi))
        result = nxt
    return result


def overlaps(a_start: dt.datetime, a_end: dt.datetime, b_start: dt.datetime, b_end: dt.datetime) -> bool:
    """Half-open overlap: touching is not overlapping."""
    return a_start < b_end and b_start < a_end


def iso_week_hours(
    intervals: Iterable[Interval], tz: dt.tzinfo
) -> dict[tuple[int, int], float]:
    """Hours per ISO week (of the lab's time zone), splitting intervals at local Monday midnight."""
    hours: dict[tuple[int, int], float] = {}
    for lo, hi in intervals:
        cursor = lo
        while cursor < hi:
            local = cursor.astimezone(tz)
            monday = local.date() - dt.timedelta(days=local.weekday())
            next_week = dt.datetime.combine(monday + dt.timedelta(days=7), dt.time(0), tzinfo=tz).astimezone(UTC)
            piece_end = min(hi, next_week)
            key = tuple(local.isocalendar())[:2]
            hours[key] = hours.get(key, 0.0) + (piece_end - cursor).total_seconds() / 3600
            cursor = piece_end
    return hours


def check_rules(
    place: Place,
    start: dt.datetime,
    end: dt.datetime,
    *,
    now: dt.datetime,
    outages: Iterable[Interval],
    qualified: bool,
    exempt: bool,
) -> list[dict[str, Any]]:
    """Every rule the booking ``[start, end)`` breaks (an empty list when it may be made).

    ``exempt`` (a manager of the lab, or an admin) skips qualification and quota,
    which the caller checks separately.
    """
    p = place.policy
    out: list[dict[str, Any]] = []
    if place.status != "active":
        out.append(violation("status", f"{place.resource_name} is {place.status} and takes no new bookings."))
    minutes = (end - start).total_seconds() / 60
    if minutes < p.min_minutes:
        out.append(violation("min_minutes", f"A booking must last at least {p.min_minutes} minutes."))
    if minutes > p.max_minutes:
        out.append(violation("max_minutes", f"A booking may last at most {p.max_minutes} minutes."))
    local_start = start.astimezone(place.tz)
    since_midnight = local_start.hour * 60 + local_start.minute
    if local_start.second or local_start.microsecond or since_midnight % p.slot_minutes or minutes % p.slot_minutes:
        out.append(
            violation(
                "slot_minutes",
                f"Bookings start and end on the {p.slot_minutes}-minute grid of the lab's day "
                f"({place.timezone}).",
            )
        )
    if start < now + dt.timedelta(minutes=p.lead_minutes):
        msg = "The start is in the past." if start < now else (
            f"Bookings must be made at least {p.lead_minutes} minutes ahead."
        )
        out.append(violation("lead_minutes", msg))
    if end > now + dt.timedelta(days=p.horizon_days):
        out.append(violation("horizon_days", f"Bookings may be made at most {p.horizon_days} days ahead."))
    if p.opening_hours is not None:
        inside = any(lo <= start and end <= hi for lo, hi in open_intervals(p.opening_hours, place.tz, start, end))
        if not inside:
            out.append(
                violation("opening_hours", f"{place.resource_name} is not open for the whole time ({place.timezone}).")
            )
    for o_start, o_end in outages:
        if overlaps(start, end, o_start, o_end):
            out.append(violation("outage", "The resource is out of service during that time."))
            break
    if p.requires_qualification and not qualified and not exempt:
        out.append(violation("qualification", f"Only users trained on {place.resource_name} may book it."))
    return out


def _quota_message(place: Place, week: tuple[int, int], hours: float) -> dict[str, Any]:
    limit = place.policy.max_hours_per_week
    return violation(
        "quota",
        f"At most {limit:g} hours per week on {place.resource_name}; week {week[1]} of {week[0]} "
        f"would have {hours:g}.",
    )


def quota_violation(
    place: Place, new: Iterable[Interval], existing: Iterable[Interval]
) -> dict[str, Any] | None:
    """The ``quota`` violation when ``new`` plus ``existing`` exceed ``max_hours_per_week`` in any week."""
    limit = place.policy.max_hours_per_week
    if limit is None:
        return None
    new = list(new)
    used = iso_week_hours(existing, place.tz)
    wanted = iso_week_hours(new, place.tz)
    for week, hours in sorted(wanted.items()):
        if used.get(week, 0.0) + hours > limit + 1e-9:
            return _quota_message(place, week, used.get(week, 0.0) + hours)
    return None


def quota_fit(
    place: Place, candidates: Sequence[Interval], existing: Iterable[Interval]
) -> list[dict[str, Any] | None]:
    """For a series booked with skips: each candidate's ``quota`` violation, or None where it fits.

    Candidates are taken in the order given (time order); one that would push any
    ISO week over the limit is refused and does not count, so later ones may still fit.
    """
    limit = place.policy.max_hours_per_week
    if limit is None:
        return [None] * len(candidates)
    used = iso_week_hours(existing, place.tz)
    out: list[dict[str, Any] | None] = []
    for interval in candidates:
        hours = iso_week_hours([interval], place.tz)
        over = sorted(w for w, h in hours.items() if used.get(w, 0.0) + h > limit + 1e-9)
        if over:
            out.append(_quota_message(place, over[0], used.get(over[0], 0.0) + hours[over[0]]))
            continue
        for week, h in hours.items():
            used[week] = used.get(week, 0.0) + h
        out.append(None)
    return out


class RRuleError(ValueError):
    """An RRULE labshare will not expand."""


def expand_series(rule: str, start: dt.datetime, end: dt.datetime, tz: dt.tzinfo) -> list[Interval]:
    """The occurrences of a series, keeping the first one's wall-clock start and end in the lab's zone.

    One RRULE only (no DTSTART, RDATE or EXDATE lines); COUNT or UNTIL is
    required and at most 366 occurrences are allowed.
    """
    text = rule.strip()
    if text.upper().startswith("RRULE:"):
        text = text[6:]
    if any(ch in text for ch in "\r\n:"):
        raise RRuleError("Give one RRULE, e.g. FREQ=WEEKLY;COUNT=8 (no DTSTART, RDATE or EXDATE).")
    parts = {}
    for piece in text.split(";"):
        name, _, value = piece.partition("=")
        parts[name.strip().upper()] = value.strip()
    if "FREQ" not in parts:
        raise RRuleError("The rule needs FREQ, e.g. FREQ=WEEKLY;COUNT=8.")
    if not parts.keys() & {"COUNT", "UNTIL"}:
        raise RRuleError("The rule needs COUNT or UNTIL so the series ends.")
    if "INTERVAL" in parts and (not parts["INTERVAL"].isdigit() or int(parts["INTERVAL"]) < 1):
        raise RRuleError("INTERVAL must be a whole number of at least 1.")
    for name in ("BYMONTHDAY", "BYYEARDAY", "BYWEEKNO"):
        if name in parts and any(v.strip().lstrip("+-") in {"0", ""} for v in parts[name].split(",")):
            raise RRuleError(f"{name} may not contain 0.")
    local_start = start.astimezone(tz)
    # The length on the wall clock, so 22:00-06:00 stays 22:00-06:00 on a night the clocks change.
    wall_length = end.astimezone(tz).replace(tzinfo=None) - local_start.replace(tzinfo=None)
    occurrences: list[Interval] = []
    try:
        rr = rrulestr(text, dtstart=local_start, forceset=False)
        if not isinstance(rr, rrule):
            raise RRuleError("Give one RRULE.")
        for index, occ in enumerate(rr):
            if index >= MAX_OCCURRENCES:
                raise RRuleError(f"A series may have at most {MAX_OCCURRENCES} occurrences.")
            # Re-attach the zone so each occurrence gets that day's offset.
            wall = occ.replace(tzinfo=None)
            occurrences.append(
                (wall.replace(tzinfo=tz).astimezone(UTC), (wall + wall_length).replace(tzinfo=tz).astimezone(UTC))
            )
    except RRuleError:
        raise
    except (ValueError, TypeError, IndexError, OverflowError) as exc:
        raise RRuleError(f"Not a valid RRULE: {exc}") from exc
    if not occurrences:
        raise RRuleError("The rule yields no occurrences.")
    return occurrences


def free_intervals(
    place: Place,
    start: dt.datetime,
    end: dt.datetime,
    outages: Iterable[Interval],
    holds: Iterable[Interval],
) -> list[Interval]:
    """Time in ``[start, end)`` where a booking could lie: open, no outage, clear of others' holds.

    A new booking holds its buffer after its end too, so each existing hold is
    widened backwards by the buffer.
    """
    buffer = place.policy.buffer
    base = open_intervals(place.policy.opening_hours, place.tz, start, end)
    base = subtract(base, list(outages))
    return subtract(base, [(lo - buffer, hi) for lo, hi in holds])


def align(place: Place, moment: dt.datetime) -> dt.datetime:
    """The first start on the slot grid of ``moment``'s local day at or after ``moment``."""
    step = place.policy.slot_minutes
    local = moment.astimezone(place.tz).replace(tzinfo=None)
    midnight = dt.datetime.combine(local.date(), dt.time(0))
    since = (local - midnight).total_seconds() / 60
    wall = midnight + dt.timedelta(minutes=-(-since // step) * step)
    aligned = wall.replace(tzinfo=place.tz).astimezone(UTC)
    # A wall time in a spring-forward gap maps before ``moment``; take the next grid point.
    return aligned if aligned >= moment else align(place, moment + dt.timedelta(minutes=1))


def slot_starts(place: Place, free: Interval, minutes: int, not_before: dt.datetime) -> Iterable[dt.datetime]:
    """Starts on the local slot grid inside ``free`` where a booking of ``minutes`` fits."""
    lo, hi = free
    length = dt.timedelta(minutes=minutes)
    candidate = align(place, max(lo, not_before))
    while candidate + length <= hi:
        yield candidate
        candidate = align(place, candidate + dt.timedelta(minutes=place.policy.slot_minutes))


# -- moving a series on the wall clock -------------------------------------------------------------


def wall(moment: dt.datetime, tz: dt.tzinfo) -> dt.datetime:
    """``moment`` as a naive wall-clock time in ``tz``."""
    return moment.astimezone(tz).replace(tzinfo=None)


def wall_delta(old: dt.datetime, new: dt.datetime, tz: dt.tzinfo) -> dt.timedelta:
    """How far ``new`` is from ``old`` on the wall clock of ``tz`` (a day is 24 h even when the clocks change)."""
    return wall(new, tz) - wall(old, tz)


def shift_wall(moment: dt.datetime, delta: dt.timedelta, tz: dt.tzinfo) -> dt.datetime:
    """``moment`` moved by ``delta`` on the wall clock of ``tz``, as UTC: 09:00 + 1 day stays 09:00 across DST."""
    return (wall(moment, tz) + delta).replace(tzinfo=tz).astimezone(UTC)


@dataclass(frozen=True)
class Occurrence:
    """What re-planning a series needs to know of one existing occurrence."""

    id: str
    recurrence_id: dt.datetime
    start: dt.datetime
    live: bool


@dataclass(frozen=True)
class Replan:
    """The outcome of giving a series a new rule from one occurrence on."""

    keep: list[str]
    cancel: list[str]
    add: list[Interval]


def replan_series(slots: Sequence[Interval], existing: Iterable[Occurrence], now: dt.datetime) -> Replan:
    """Match a new rule's ``slots`` against the occurrences the series has from the same point on.

    An occurrence belongs to the slot its ``recurrence_id`` (the start its rule gave
    it, kept when it alone was moved) names. Live occurrences whose slot the new rule
    still has are kept; the other live ones are cancelled; slots no occurrence has
    (live or not: a cancelled occurrence stays cancelled) are to be booked. Whatever
    has started is never touched and nothing is booked in the past.
    """
    wanted = {start for start, _ in slots}
    keep: list[str] = []
    cancel: list[str] = []
    taken: set[dt.datetime] = set()
    for occ in existing:
        taken.add(occ.recurrence_id)
        if not occ.live or occ.start <= now:
            continue
        (keep if occ.recurrence_id in wanted else cancel).append(occ.id)
    add = [(s, e) for s, e in slots if s not in taken and s > now]
    return Replan(keep=keep, cancel=cancel, add=add)


def self_clashes(intervals: Sequence[Interval], buffer: dt.timedelta) -> list[tuple[Interval, Interval]]:
    """Pairs of ``intervals`` whose holds (end plus ``buffer``) overlap one another."""
    out: list[tuple[Interval, Interval]] = []
    latest: Interval | None = None  # the interval whose hold reaches furthest so far
    for interval in sorted(intervals):
        if latest is not None and interval[0] < latest[1] + buffer:
            out.append((latest, interval))
        if latest is None or interval[1] > latest[1]:
            latest = interval
    return out


# -- check-in and waitlists --------------------------------------------------------------------------


def checkin_due(policy: Policy, start: dt.datetime) -> dt.datetime | None:
    """When a booking that nobody checked in to becomes a no-show (None where check-in is not required)."""
    if not policy.checkin_required:
        return None
    return start + dt.timedelta(minutes=policy.checkin_grace_minutes)


@dataclass(frozen=True)
class Waiter:
    """A waitlist entry as the queue order sees it."""

    id: str
    start: dt.datetime
    end: dt.datetime
    joined: dt.datetime


def waitlist_positions(waiters: Iterable[Waiter]) -> dict[str, int]:
    """Each waiter's place in the queue for its window: 1 + those who joined earlier for overlapping time."""
    ordered = sorted(waiters, key=lambda w: (w.joined, w.id))
    return {
        w.id: 1 + sum(1 for other in ordered[:i] if overlaps(w.start, w.end, other.start, other.end))
        for i, w in enumerate(ordered)
    }


#: Rules that mean "the time is not free yet" to a waiter, rather than "you may not have it".
STILL_TAKEN = frozenset({"outage"})


# -- usage and utilisation ---------------------------------------------------------------------------


def clipped_seconds(start: dt.datetime, end: dt.datetime, lo: dt.datetime, hi: dt.datetime) -> float:
    """Seconds of ``[start, end)`` inside ``[lo, hi)``."""
    return max(0.0, (min(end, hi) - max(start, lo)).total_seconds())


def _number(value: Any) -> float | int | None:
    """A rate as a number (1200.0 reads 1200), or None when it is not one."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return None
    return int(value) if float(value).is_integer() else float(value)


def usage_line(
    *,
    resource_id: str,
    resource_name: str,
    rates: Mapping[str, Any] | None,
    lab_org: str,
    org: str,
    project: str,
    bookings: int,
    seconds: float,
) -> dict[str, Any]:
    """One row of the usage report: hours at the internal rate for the lab's own org, the external one else.

    ``amount`` is the exact hours times the rate, rounded to cents; ``hours`` is
    rounded to two decimals for display. No rate: ``rate`` and ``amount`` are null.
    """
    rates = rates or {}
    rate = _number(rates.get("internal" if org == lab_org else "external"))
    hours = seconds / 3600
    return {
        "resource_id": resource_id,
        "resource_name": resource_name,
        "org": org,
        "project": project,
        "bookings": bookings,
        "hours": round(hours, 2),
        "rate": rate,
        "amount": round(hours * rate, 2) if rate is not None else None,
        "currency": rates.get("currency"),
    }


def open_seconds(
    opening_hours: Mapping[str, list[list[str]]] | None,
    tz: dt.tzinfo,
    start: dt.datetime,
    end: dt.datetime,
    outages: Iterable[Interval],
) -> float:
    """Seconds in ``[start, end)`` that a resource is open and not out of service (always open: all of them)."""
    base = subtract(open_intervals(opening_hours, tz, start, end), list(outages))
    return sum((hi - lo).total_seconds() for lo, hi in base)


def utilisation(booked_seconds: float, open_secs: float) -> float | None:
    """Booked time as a share of open time (None when it was never open)."""
    return round(booked_seconds / open_secs, 4) if open_secs > 0 else None
