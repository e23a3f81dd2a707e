"""Inventory rules: what a valid policy, lab and outage are, and who may change them.

Pure Python: no Flask, SQLAlchemy or kombu here.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from collections.abc import Iterable, Mapping
from typing import Any

from shared.errors import Forbidden, ValidationFailed

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
KINDS = ("equipment", "room")
STATUSES = ("active", "maintenance", "retired")

DEFAULT_POLICY: dict[str, Any] = {
    "slot_minutes": 15,
    "min_minutes": 15,
    "max_minutes": 480,
    "lead_minutes": 0,
    "horizon_days": 90,
    "buffer_minutes": 0,
    "requires_approval": False,
    "requires_qualification": False,
    "opening_hours": None,
    "max_hours_per_week": None,
    "checkin_required": False,
    "checkin_grace_minutes": 15,
}

_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$|^24:00$")


def minutes_of(hhmm: str) -> int:
    """``"08:30"`` → 510; ``"24:00"`` → 1440."""
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


def check_timezone(name: str) -> None:
    """An IANA time zone name, or 422."""
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ValidationFailed([{"field": "timezone", "message": f"unknown time zone {name!r}"}]) from exc


def check_policy(policy: Mapping[str, Any]) -> None:
    """Cross-field rules of a complete policy; 422 listing each fault."""
    errors: list[dict[str, str]] = []

    def bad(field: str, message: str) -> None:
        errors.append({"field": f"policy.{field}", "message": message})

    if policy["max_minutes"] < policy["min_minutes"]:
        bad("max_minutes", "must be at least min_minutes")
    if policy["min_minutes"] % policy["slot_minutes"]:
        bad("min_minutes", "must be a multiple of slot_minutes")
    if policy["max_minutes"] % policy["slot_minutes"]:
        bad("max_minutes", "must be a multiple of slot_minutes")
    hours = policy.get("opening_hours")
    if hours is not None:
        for day, intervals in hours.items():
            if day not in WEEKDAYS:
                bad("opening_hours", f"unknown weekday {day!r}; use {', '.join(WEEKDAYS)}")
                continue
            previous_end = -1
            for pair in intervals:
                if len(pair) != 2 or not all(isinstance(p, str) and _HHMM.match(p) for p in pair):
                    bad(f"opening_hours.{day}", "each interval is [\"HH:MM\", \"HH:MM\"]")
                    continue
                start, end = minutes_of(pair[0]), minutes_of(pair[1])
                if start >= end:
                    bad(f"opening_hours.{day}", f"{pair[0]}-{pair[1]} ends before it starts")
                elif start < previous_end:
                    bad(f"opening_hours.{day}", "intervals must be in order and not overlap")
                previous_end = max(previous_end, end)
    if errors:
        raise ValidationFailed(errors)


def merged_policy(current: Mapping[str, Any] | None, changes: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults, then the current policy, then the changes (a PATCH merges member by member)."""
    policy = dict(DEFAULT_POLICY)
    policy.update(current or {})
    policy.update(changes)
    check_policy(policy)
    return policy


def manager_subs(managers: Iterable[Mapping[str, Any]]) -> set[str]:
    """The ``sub`` of every manager of a lab."""
    return {m["sub"] for m in managers}


def ensure_can_manage(user, managers: Iterable[Mapping[str, Any]]) -> None:
    """Admins manage every lab; managers the labs that list them."""
    if user.is_admin:
        return
    if "manager" in user.roles and user.sub in manager_subs(managers):
        return
    raise Forbidden("Only a manager of this lab (or an admin) may do this.")


def check_interval(start: dt.datetime, end: dt.datetime) -> None:
    """``end`` after ``start``."""
    if end <= start:
        raise ValidationFailed([{"field": "end", "message": "must be after start"}])
