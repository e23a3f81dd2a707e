"""Notify's rules: who hears of what, when reminders fall due, how retries back off, which webhooks match.

Pure Python: the standard library only.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

#: Booking statuses that hold time and may be in the owner's calendar.
LIVE = ("confirmed", "pending")
#: Booking events after which the owner's calendar entry is removed (``METHOD:CANCEL``), as the feeds show
#: such a booking ``STATUS:CANCELLED``.
ENDING = ("booking.cancelled", "booking.declined", "booking.no_show")
#: Waitlist events that mail the waiter. One who got a confirmed booking (``waitlist.booked``) hears of it
#: from that booking's own invitation; joining and leaving are their own doing.
WAITLIST_MAILS = ("waitlist.offered", "waitlist.skipped", "waitlist.expired")

EVENT_PATTERN = re.compile(r"^[A-Za-z0-9_.*?\[\]!-]{1,100}$")
MAX_URL = 2000


@dataclass(frozen=True)
class Person:
    """Someone notify can write to."""

    sub: str
    name: str
    email: str

    @classmethod
    def of(cls, data: dict[str, Any] | None) -> Person:
        data = data or {}
        return cls(str(data.get("sub") or ""), str(data.get("name") or ""), str(data.get("email") or ""))


@dataclass(frozen=True)
class BookingFacts:
    """What a booking event tells notify about one booking occurrence."""

    id: str
    status: str
    sequence: int
    start: dt.datetime
    end: dt.datetime
    timezone: str
    title: str
    project: str
    resource_id: str
    resource_name: str
    lab_id: str
    lab_name: str
    owner: Person
    owner_org: str
    managers: tuple[Person, ...]
    cancel_reason: str | None = None
    outage_reason: str | None = None
    series_id: str | None = None
    updated_at: dt.datetime | None = None

    @classmethod
    def from_snapshot(cls, data: dict[str, Any]) -> BookingFacts:
        """Read a booking snapshot as booking's events carry it."""
        lab = data.get("lab") or {}
        user = data.get("user") or {}
        outage = data.get("outage") or {}
        return cls(
            id=str(data["id"]),
            status=str(data.get("status") or ""),
            sequence=int(data.get("sequence") or 0),
            start=_parse(data["start"]),
            end=_parse(data["end"]),
            timezone=str(lab.get("timezone") or "UTC"),
            title=str(data.get("title") or ""),
            project=str(data.get("project") or ""),
            resource_id=str(data.get("resource_id") or ""),
            resource_name=str(data.get("resource_name") or "the resource"),
            lab_id=str(lab.get("id") or data.get("lab_id") or ""),
            lab_name=str(lab.get("name") or "the lab"),
            owner=Person.of(user),
            owner_org=str(user.get("org") or ""),
            managers=tuple(Person.of(m) for m in lab.get("managers") or []),
            cancel_reason=data.get("cancel_reason"),
            outage_reason=outage.get("reason") if data.get("cancel_reason") == "outage" else None,
            series_id=data.get("series_id"),
            updated_at=_parse(data["updated_at"]) if data.get("updated_at") else None,
        )


def _parse(value: str) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"timestamp without offset: {value}")
    return parsed.astimezone(dt.UTC)


# -- what a booking event means for the people it concerns ------------------------------------------


@dataclass(frozen=True)
class Seen:
    """What notify remembers of a booking from earlier events."""

    sequence: int
    status: str
    invited: bool


@dataclass
class Plan:
    """The mails one booking event calls for, and what becomes of the owner's reminder."""

    #: ``booked`` | ``changed`` | ``approved`` | ``pending_again`` → a REQUEST to the owner;
    #: ``cancelled`` | ``declined`` | ``no_show`` → a CANCEL to the owner; None: no mail to the owner.
    owner_mail: str | None = None
    #: Managers asked to approve or decline.
    approvers: list[Person] = field(default_factory=list)
    #: Keep a reminder for the booking's start (False: drop any).
    remind: bool = False
    #: The event is older than what notify already acted on: mail nobody.
    stale: bool = False


def plan_for(event_type: str, b: BookingFacts, seen: Seen | None) -> Plan:
    """Decide the mails of a booking event, given what notify saw of the booking before.

    Events can arrive late or twice; one whose ``sequence`` is lower than one already
    acted on is stale and changes nothing.
    """
    if seen is not None and b.sequence < seen.sequence:
        return Plan(stale=True, remind=seen.status == "confirmed")
    plan = Plan(remind=b.status == "confirmed")
    approvers = [m for m in b.managers if m.email]
    if event_type == "booking.created":
        if b.status == "pending":
            plan.approvers = approvers
    elif event_type == "booking.confirmed":
        was_pending = (seen is not None and seen.status == "pending") or b.sequence > 0
        plan.owner_mail = "approved" if was_pending else "booked"
    elif event_type == "booking.updated":
        if b.status == "confirmed":
            plan.owner_mail = "changed" if seen is None or seen.invited else "booked"
        elif b.status == "pending":
            plan.approvers = approvers
            if seen is not None and seen.invited:
                plan.owner_mail = "pending_again"
    elif event_type in ENDING:
        plan.owner_mail = event_type.removeprefix("booking.")
    if not b.owner.email:
        plan.owner_mail = None
    return plan


def cancel_text(b: BookingFacts) -> str:
    """Why a booking ended, in words for its owner."""
    if b.status == "no_show":
        return ("Nobody checked in to the booking by its check-in deadline, shortly after its start, so it was "
                "released as a no-show: the rest of its time is free for others. It still counts as booked time "
                "in the lab's usage.")
    if b.status == "declined":
        reason = b.cancel_reason if b.cancel_reason and b.cancel_reason != "declined" else ""
        return f"The lab declined the booking{': ' + reason if reason else '.'}"
    if b.cancel_reason == "outage":
        why = f" ({b.outage_reason})" if b.outage_reason else ""
        return f"The booking was cancelled because the resource is out of service at that time{why}."
    if b.cancel_reason:
        return f"The booking was cancelled: {b.cancel_reason}."
    return "The booking was cancelled."


# -- reminders --------------------------------------------------------------------------------------

MIN_REMINDER, MAX_REMINDER = 5, 7 * 24 * 60


def reminder_due(start: dt.datetime, minutes: int | None) -> dt.datetime | None:
    """When the reminder of a booking starting at ``start`` falls due; None when the user wants none."""
    if minutes is None:
        return None
    return start - dt.timedelta(minutes=minutes)


def reminder_action(start: dt.datetime, due: dt.datetime, now: dt.datetime) -> str:
    """``send`` a due reminder whose booking is still ahead (also after downtime), ``skip`` a started one."""
    if start <= now:
        return "skip"
    return "send" if due <= now else "wait"


# -- retries ----------------------------------------------------------------------------------------


def retry_delay(attempts: int, schedule: tuple[float, ...], jitter: float) -> float | None:
    """Seconds to wait after the ``attempts``-th failed try, or None when the delivery is dead.

    ``jitter`` in [0, 1) spreads retries of many deliveries by up to ±20 %, so that a
    receiver that comes back is not hit by all of them at once.
    """
    if attempts < 1 or attempts > len(schedule):
        return None
    return schedule[attempts - 1] * (0.8 + 0.4 * jitter)


def max_attempts(schedule: tuple[float, ...]) -> int:
    """The first try plus one per pause in the schedule."""
    return len(schedule) + 1


# -- webhooks ---------------------------------------------------------------------------------------


def matches(patterns: list[str], event_type: str) -> bool:
    """Whether an event type matches any of a webhook's patterns (``booking.*``, ``*``, exact names)."""
    return any(fnmatch.fnmatchcase(event_type, p) for p in patterns)


def address_kind(address: str) -> str | None:
    """What keeps webhooks from this IP address, e.g. ``"a loopback address"``; None for a public one."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_global and not (ip.is_multicast or ip.is_reserved):
        return None
    kinds = (("a loopback address", ip.is_loopback), ("a link-local address", ip.is_link_local),
             ("a multicast address", ip.is_multicast), ("an unspecified address", ip.is_unspecified),
             ("a private or reserved address", ip.is_private or ip.is_reserved))
    return next((kind for kind, yes in kinds if yes), "not a public address")


def host_problem(host: str) -> str | None:
    """Why a webhook URL's host is refused when only public addresses may be called: an IP address that is
    not public, or a name of this machine. Other names are checked when a delivery connects."""
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return f"{host} is this machine"
    try:
        kind = address_kind(host)
    except ValueError:
        return None
    return f"{host} is {kind}" if kind else None


def url_problems(url: str, private_targets: bool = True) -> list[str]:
    """Why a webhook URL is refused: only http(s) with a host, no credentials, no fragment; and, unless
    ``private_targets``, no host that is not on the public internet."""
    if len(url) > MAX_URL:
        return [f"must be at most {MAX_URL} characters"]
    if any(c.isspace() for c in url) or any(ord(c) < 32 for c in url):
        return ["must not contain spaces or control characters"]
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return [f"is not a valid URL: {exc}"]
    problems = []
    if parts.scheme not in ("http", "https"):
        problems.append("must be an http:// or https:// URL")
    if not parts.hostname:
        problems.append("must name a host")
    if parts.username is not None or parts.password is not None:
        problems.append("must not contain credentials; use the secret to authenticate deliveries")
    if parts.fragment:
        problems.append("must not contain a fragment")
    if port == 0:
        problems.append("must not use port 0")
    if not private_targets and parts.hostname and (problem := host_problem(parts.hostname)):
        problems.append(f"must point to a public address ({problem}; LABSHARE_WEBHOOK_PRIVATE_TARGETS=1 "
                        "allows it)")
    return problems


def pattern_problems(patterns: list[str]) -> list[str]:
    """Why a list of event patterns is refused."""
    bad = [p for p in patterns if not EVENT_PATTERN.match(p)]
    return [f"not an event type or pattern: {p!r}" for p in bad]


def event_lab(event: dict[str, Any], resource_labs: dict[str, str]) -> str | None:
    """The lab an event is about, when it is about one."""
    data = event.get("data") or {}
    type_ = str(event.get("type") or "")
    if type_.startswith("lab."):
        return data.get("id")
    lab = data.get("lab")
    if isinstance(lab, dict) and lab.get("id"):
        return str(lab["id"])
    if data.get("lab_id"):
        return str(data["lab_id"])
    resource_id = data.get("resource_id")
    if resource_id:
        return resource_labs.get(str(resource_id))
    return None


@dataclass(frozen=True)
class WebhookScope:
    """Whose events a webhook may carry."""

    lab_id: str | None
    owner_sub: str
    owner_is_admin: bool


def in_scope(scope: WebhookScope, lab_id: str | None, managers_of_lab: frozenset[str]) -> bool:
    """A webhook gets an event of its own lab; without one, an admin's gets all, a manager's those
    of the labs that list them as manager (checked at delivery time, so a removed manager stops hearing)."""
    if scope.lab_id is not None:
        return lab_id == scope.lab_id and (scope.owner_is_admin or scope.owner_sub in managers_of_lab)
    if scope.owner_is_admin:
        return True
    return lab_id is not None and scope.owner_sub in managers_of_lab


def mail_domain(public_host: str | None) -> str:
    """A domain for notify's own addresses: the public host, unless that is an IP address or a bare name."""
    host = (public_host or "").strip(".")
    if not host or "." not in host:
        return "localhost"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host
    return "localhost"
