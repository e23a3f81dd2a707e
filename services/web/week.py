"""The week calendar of a resource: cells of busy, free, closed, buffer and outage time from the API's availability.

Pure functions: the view fetches ``GET /api/v1/availability`` for the week and
the resource's policy; this decides what each cell of the grid shows.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

Interval = tuple[dt.datetime, dt.datetime]


@dataclass(frozen=True)
class Cell:
    """One cell of the grid: ``state`` is free, busy, outage, buffer (open but held), closed or past."""

    start: dt.datetime
    end: dt.datetime
    state: str


@dataclass(frozen=True)
class Day:
    date: dt.date
    cells: list[Cell]


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


def cell_minutes(policy: Mapping[str, Any]) -> int:
    """The grid's step: the slot length, or the smallest multiple of it that is at least 30 minutes."""
    slot = int(policy.get("slot_minutes") or 15)
    return slot if slot >= 30 else slot * math.ceil(30 / slot)


def day_span(policy: Mapping[str, Any], step: int) -> tuple[int, int]:
    """The minutes of the day the grid shows: from the earliest opening to the latest closing, on the hour."""
    hours = policy.get("opening_hours")
    if hours is None:
        return 0, 24 * 60
    spans = [(_minutes(a), _minutes(b)) for day in hours.values() for a, b in day]
    if not spans:
        return 8 * 60, 16 * 60
    lo = min(a for a, _ in spans) // 60 * 60
    hi = min(24 * 60, math.ceil(max(b for _, b in spans) / 60) * 60)
    return lo, max(hi, lo + step)


def _parse(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _intervals(items: Sequence[Mapping[str, str]] | None) -> list[Interval]:
    return [(_parse(i["start"]), _parse(i["end"])) for i in items or []]


def _is_open(policy: Mapping[str, Any], weekday: str, lo: int, hi: int) -> bool:
    hours = policy.get("opening_hours")
    if hours is None:
        return True
    return any(_minutes(a) <= lo and hi <= _minutes(b) for a, b in hours.get(weekday) or [])


def build_week(monday: dt.date, tz: dt.tzinfo, policy: Mapping[str, Any], availability: Mapping[str, Any],
               now: dt.datetime) -> tuple[list[Day], list[str]]:
    """The seven days of the week starting ``monday`` and the row labels ("08:00", …)."""
    step = cell_minutes(policy)
    lo, hi = day_span(policy, step)
    busy = _intervals(availability.get("busy"))
    free = _intervals(availability.get("free"))
    outages = _intervals(availability.get("outages"))
    days = []
    for offset in range(7):
        date = monday + dt.timedelta(days=offset)
        weekday = WEEKDAYS[date.weekday()]
        cells = []
        for m in range(lo, hi, step):
            start = dt.datetime.combine(date, dt.time(m // 60, m % 60), tzinfo=tz)
            end = start + dt.timedelta(minutes=step)
            if end <= now:
                state = "past"
            elif any(a < end and start < b for a, b in outages):
                state = "outage"
            elif any(a < end and start < b for a, b in busy):
                state = "busy"
            elif start >= now and any(a <= start and end <= b for a, b in free):
                state = "free"
            elif _is_open(policy, weekday, m, m + step):
                state = "buffer"
            else:
                state = "closed"
            cells.append(Cell(start, end, state))
        days.append(Day(date, cells))
    labels = [f"{m // 60:02d}:{m % 60:02d}" for m in range(lo, hi, step)]
    return days, labels
