"""Reading the managers' and bookers' forms into API bodies, with a translated sentence for each bad field."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any

from flask_babel import gettext as _

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_SPAN = re.compile(r"^\s*(\d{1,2}):(\d\d)\s*[-–]\s*(\d{1,2}):(\d\d)\s*$")
_ORG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
#: At most this many choices in a duration list; longer ranges step more coarsely.
MAX_CHOICES = 32


class FormErrors:
    """Sentences per field."""

    def __init__(self) -> None:
        self.fields: dict[str, list[str]] = {}

    def add(self, field: str, message: str) -> None:
        self.fields.setdefault(field, []).append(message)

    def __bool__(self) -> bool:
        return bool(self.fields)


def form_moment(date: str, clock: str, tz: dt.tzinfo) -> dt.datetime | None:
    """A date and a wall-clock time of the lab's zone, or None when either is missing or wrong."""
    try:
        day = dt.date.fromisoformat(date.strip())
        hours, minutes = (int(x) for x in clock.strip()[:5].split(":"))
        return dt.datetime.combine(day, dt.time(hours, minutes), tzinfo=tz)
    except (ValueError, AttributeError):
        return None


def durations(policy: Mapping[str, Any], include: int | None = None) -> list[int]:
    """The booking lengths the policy allows (in minutes), thinned out when there are very many."""
    slot = int(policy.get("slot_minutes") or 15)
    lo, hi = int(policy.get("min_minutes") or slot), int(policy.get("max_minutes") or 480)
    step = slot
    while (hi - lo) // step + 1 > MAX_CHOICES:
        step += slot
    choices = list(range(lo, hi + 1, step))
    if hi not in choices:
        choices.append(hi)
    if include and include not in choices:
        choices = sorted({*choices, include})
    return choices


def opening_hours(form: Mapping[str, str], errors: FormErrors) -> dict[str, list[list[str]]] | None:
    """Per weekday "08:00-12:00, 13:00-16:00" (empty: closed); None when "always open" is ticked."""
    if form.get("always_open"):
        return None
    hours: dict[str, list[list[str]]] = {}
    for day in WEEKDAYS:
        text = (form.get(f"hours_{day}") or "").strip()
        if not text:
            continue
        spans = []
        for part in text.split(","):
            m = _SPAN.match(part)
            if not m:
                errors.add(f"hours_{day}", _("Write opening hours like 08:00-16:00, or leave empty when closed."))
                break
            h1, m1, h2, m2 = (int(x) for x in m.groups())
            if h1 > 23 or m1 > 59 or h2 > 24 or m2 > 59 or (h2 == 24 and m2):
                errors.add(f"hours_{day}", _("Write opening hours like 08:00-16:00, or leave empty when closed."))
                break
            spans.append([f"{h1:02d}:{m1:02d}", f"{h2:02d}:{m2:02d}"])
        hours[day] = spans
    return hours


def _int(form: Mapping[str, str], name: str, errors: FormErrors, lo: int, hi: int) -> int | None:
    raw = (form.get(name) or "").strip()
    try:
        value = int(raw)
    except ValueError:
        errors.add(name, _("Please give a whole number."))
        return None
    if not lo <= value <= hi:
        errors.add(name, _("Please give a number from %(lo)s to %(hi)s.", lo=lo, hi=hi))
        return None
    return value


def _number(form: Mapping[str, str], name: str, errors: FormErrors) -> float | None:
    raw = (form.get(name) or "").strip().replace(",", ".")
    try:
        value = float(raw or 0)
    except ValueError:
        errors.add(name, _("Please give a number."))
        return None
    if value < 0:
        errors.add(name, _("Please give a number of at least 0."))
        return None
    return value


def policy_from_form(form: Mapping[str, str], errors: FormErrors) -> dict[str, Any]:
    """The policy members of the resource form."""
    policy: dict[str, Any] = {
        "slot_minutes": _int(form, "slot_minutes", errors, 1, 1440),
        "min_minutes": _int(form, "min_minutes", errors, 1, 10080),
        "max_minutes": _int(form, "max_minutes", errors, 1, 10080),
        "lead_minutes": _int(form, "lead_minutes", errors, 0, 525600),
        "horizon_days": _int(form, "horizon_days", errors, 1, 3650),
        "buffer_minutes": _int(form, "buffer_minutes", errors, 0, 1440),
        "checkin_grace_minutes": _int(form, "checkin_grace_minutes", errors, 0, 1440),
        "requires_approval": bool(form.get("requires_approval")),
        "requires_qualification": bool(form.get("requires_qualification")),
        "checkin_required": bool(form.get("checkin_required")),
        "opening_hours": opening_hours(form, errors),
    }
    quota = (form.get("max_hours_per_week") or "").strip()
    if quota:
        value = _number(form, "max_hours_per_week", errors)
        if value is not None and not 0 < value <= 168:
            errors.add("max_hours_per_week", _("Please give a number from %(lo)s to %(hi)s.", lo=1, hi=168))
        policy["max_hours_per_week"] = value
    else:
        policy["max_hours_per_week"] = None
    return policy


def resource_from_form(form: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, Any], dict[str, list[str]]]:
    """The body of ``POST``/``PATCH /api/v1/resources``, the values to show again, and the field errors."""
    errors = FormErrors()
    values: dict[str, Any] = {k: form.get(k, "") for k in form}
    for box in ("requires_approval", "requires_qualification", "checkin_required", "always_open"):
        values[box] = bool(form.get(box))
    name, category = (form.get("name") or "").strip(), (form.get("category") or "").strip()
    if not name:
        errors.add("name", _("Please give a name."))
    if not category:
        errors.add("category", _("Please give a category, e.g. microscopy/confocal."))
    kind = form.get("kind") if form.get("kind") in ("equipment", "room") else "equipment"
    currency = (form.get("currency") or "NOK").strip().upper()
    if not re.match(r"^[A-Z]{3}$", currency):
        errors.add("currency", _("A three-letter currency code, e.g. NOK."))
    body = {
        "name": name, "kind": kind, "category": category, "description": (form.get("description") or "").strip(),
        "policy": policy_from_form(form, errors),
        "rates": {"internal": _number(form, "rate_internal", errors),
                  "external": _number(form, "rate_external", errors), "currency": currency},
    }
    return body, values, errors.fields


def lab_from_form(form: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, Any], dict[str, list[str]]]:
    """The body of ``POST``/``PATCH /api/v1/labs``; managers are lines of "id | name | e-mail"."""
    errors = FormErrors()
    values = {k: form.get(k, "") for k in ("name", "org", "building", "timezone", "managers")}
    if not values["name"].strip():
        errors.add("name", _("Please give a name."))
    org = values["org"].strip().lower()
    if not _ORG.match(org):
        errors.add("org", _("Lower-case letters, digits and dashes, e.g. ntnu."))
    managers = []
    for line in values["managers"].splitlines():
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split("|")]
        if not parts[0]:
            errors.add("managers", _("Each line: user id | name | e-mail."))
            continue
        managers.append({"sub": parts[0], "name": parts[1] if len(parts) > 1 else "",
                         "email": parts[2] if len(parts) > 2 else ""})
    body = {"name": values["name"].strip(), "org": org, "building": values["building"].strip(),
            "timezone": values["timezone"].strip() or "Europe/Oslo", "managers": managers}
    return body, values, errors.fields
