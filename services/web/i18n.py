"""Language choice, dates in the lab's time zone, and every refusal of the API as a sentence in the user's language.

English and Norwegian bokmål. The choice comes from a stored preference (the
``labshare_lang`` cookie, set by the language switch), else the browser's
Accept-Language. Strings are marked with Flask-Babel's ``gettext``; the
catalogues live in ``translations/``.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Iterable, Mapping
from typing import Any

from babel import Locale
from babel.dates import format_date, format_interval, format_skeleton, format_time, get_day_names
from babel.numbers import format_currency, format_decimal, format_percent
from babel.units import format_unit
from flask import request
from flask_babel import get_locale
from flask_babel import gettext as _

from services.web.client import ApiError, NotAllowed, NotAuthenticated, NotFound, Refused

LANGUAGES = {"en": "English", "nb": "Norsk (bokmål)"}
LANG_COOKIE = "labshare_lang"
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
#: Babel locales used for formats: British English writes 24-hour times and day-month order, as the arena does.
FORMAT_LOCALES = {"en": "en_GB", "nb": "nb_NO"}
_ALIASES = {"no": "nb", "nb": "nb", "nn": "nb", "en": "en"}


def select_locale() -> str:
    """The stored choice, else the first language of Accept-Language that we speak, else English."""
    chosen = request.cookies.get(LANG_COOKIE)
    if chosen in LANGUAGES:
        return chosen
    for value, _quality in request.accept_languages:
        lang = _ALIASES.get(value.split("-")[0].split("_")[0].lower())
        if lang:
            return lang
    return "en"


def lang() -> str:
    """The language of this request (``en`` or ``nb``)."""
    loc = get_locale()
    return loc.language if loc is not None and loc.language in LANGUAGES else "en"


def _loc() -> Locale:
    return Locale.parse(FORMAT_LOCALES[lang()])


def zone(name: str | None) -> zoneinfo.ZoneInfo:
    """A lab's time zone (UTC when it has none we know)."""
    try:
        return zoneinfo.ZoneInfo(name or "UTC")
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return zoneinfo.ZoneInfo("UTC")


def parse_time(value: str | dt.datetime) -> dt.datetime:
    """An RFC 3339 timestamp from the API (always with an offset)."""
    if isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def local(value: str | dt.datetime, tz: dt.tzinfo) -> dt.datetime:
    """``value`` on the lab's wall clock."""
    return parse_time(value).astimezone(tz)


def fmt_day(day: dt.date) -> str:
    """"Tue 1 Dec" (with the year when it is not this year)."""
    if isinstance(day, dt.datetime):
        day = day.date()
    skeleton = "MMMEd" if day.year == dt.date.today().year else "yMMMEd"
    return format_skeleton(skeleton, day, locale=_loc())


def fmt_clock(value: str | dt.datetime, tz: dt.tzinfo) -> str:
    """"09:00" on the lab's clock."""
    return format_time(local(value, tz), "HH:mm", locale=_loc())


def fmt_when(value: str | dt.datetime, tz: dt.tzinfo) -> str:
    """"Tue 1 Dec, 09:00" on the lab's clock."""
    moment = local(value, tz)
    return f"{fmt_day(moment.date())}, {format_time(moment, 'HH:mm', locale=_loc())}"


def fmt_range(start: str | dt.datetime, end: str | dt.datetime, tz: dt.tzinfo) -> str:
    """"Tue 1 Dec, 09:00–11:00", or both dates when it spans midnight."""
    s, e = local(start, tz), local(end, tz)
    if s.date() == e.date() or (e - s <= dt.timedelta(days=1) and e.time() == dt.time(0)):
        return f"{fmt_when(s, tz)}–{fmt_clock(e, tz)}"
    return f"{fmt_when(s, tz)} – {fmt_when(e, tz)}"


def fmt_date_long(value: dt.date) -> str:
    return format_date(value, "full", locale=_loc())


def fmt_duration(minutes: int | float) -> str:
    """45 → "45 minutes", 240 → "4 hours", 90 → "1 hr 30 min" (in the user's language)."""
    minutes = int(minutes)
    loc = _loc()
    if minutes < 60:
        return format_unit(minutes, "duration-minute", length="long", locale=loc)
    hours, rest = divmod(minutes, 60)
    if rest == 0:
        if hours % 24 == 0 and hours >= 48:
            return format_unit(hours // 24, "duration-day", length="long", locale=loc)
        return format_unit(hours, "duration-hour", length="long", locale=loc)
    return (format_unit(hours, "duration-hour", length="short", locale=loc) + " "
            + format_unit(rest, "duration-minute", length="short", locale=loc))


def fmt_hours(hours: float) -> str:
    """3.5 → "3.5 hr" / "3,5 t": a number of hours, at most one decimal, in the user's language."""
    return format_unit(round(hours, 1), "duration-hour", length="short", format="#,##0.#", locale=_loc())


def fmt_percent(share: float | None) -> str:
    """0.2 → "20%" / "20 %"; None (never open) → "–"."""
    return "–" if share is None else format_percent(share, format="#,##0%", locale=_loc())


def fmt_number(value: float, digits: int = 2) -> str:
    return format_decimal(value, format="#,##0." + "#" * digits, locale=_loc())


def fmt_money(amounts: Mapping[str, float]) -> str:
    """Amounts per currency ("NOK 1,900.00", "1 900,00 kr"), several joined; "–" when there is none."""
    if not amounts:
        return "–"
    return ", ".join(format_currency(v, c, locale=_loc()) if c else fmt_number(v) for c, v in sorted(amounts.items()))


def fmt_period(first: dt.date, last: dt.date) -> str:
    """The days ``first`` to ``last`` (both included): "1–31 Mar 2026", "1 Mar – 2 Apr 2026"."""
    if first == last:
        return format_skeleton("yMMMd", first, locale=_loc())
    return format_interval(first, last, "yMMMd", locale=_loc())


def day_names() -> dict[str, str]:
    """Weekday keys of the API (``mon`` …) → the user's names ("Monday" / "mandag")."""
    names = get_day_names("wide", locale=_loc())
    return {key: names[i] for i, key in enumerate(WEEKDAYS)}


def short_day_names() -> dict[str, str]:
    names = get_day_names("abbreviated", locale=_loc())
    return {key: names[i] for i, key in enumerate(WEEKDAYS)}


def opening_hours_lines(hours: Mapping[str, list[list[str]]] | None) -> list[str]:
    """Opening hours in words, consecutive days with the same hours together: "Mon–Fri 07:00–22:00"."""
    if hours is None:
        return [_("Open around the clock, every day.")]
    names = short_day_names()
    runs: list[tuple[list[str], str]] = []
    for key in WEEKDAYS:
        spans = ", ".join(f"{a}–{b}" for a, b in hours.get(key) or []) or _("closed")
        if runs and runs[-1][1] == spans:
            runs[-1][0].append(key)
        else:
            runs.append(([key], spans))
    lines = []
    for keys, spans in runs:
        days = names[keys[0]] if len(keys) == 1 else f"{names[keys[0]]}–{names[keys[-1]]}"
        lines.append(f"{days} {spans}")
    return lines


def policy_sentences(policy: Mapping[str, Any]) -> list[str]:
    """A resource's rules in plain words: "Bookings last 30 minutes to 4 hours", "Training required", …"""
    out = [
        _("Bookings last %(min)s to %(max)s, in steps of %(slot)s.",
          min=fmt_duration(policy.get("min_minutes", 15)), max=fmt_duration(policy.get("max_minutes", 480)),
          slot=fmt_duration(policy.get("slot_minutes", 15))),
        _("Book up to %(days)s days ahead.", days=policy.get("horizon_days", 90)),
    ]
    if policy.get("lead_minutes"):
        out.append(_("Book at least %(lead)s before the start.", lead=fmt_duration(policy["lead_minutes"])))
    if policy.get("buffer_minutes"):
        out.append(_("%(buffer)s are kept free after each booking (cleaning, warm-up).",
                     buffer=fmt_duration(policy["buffer_minutes"])))
    if policy.get("max_hours_per_week"):
        out.append(_("At most %(hours)s hours a week per person.", hours=_number(policy["max_hours_per_week"])))
    if policy.get("requires_qualification"):
        out.append(_("Training required: only trained users may book it."))
    if policy.get("requires_approval"):
        out.append(_("A manager approves each booking."))
    if policy.get("checkin_required"):
        out.append(_("Check in within %(grace)s of the start, or the time is given away.",
                     grace=fmt_duration(policy.get("checkin_grace_minutes", 15))))
    return out


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


#: Which form field a refusal belongs next to.
RULE_FIELDS = {
    "min_minutes": "duration", "max_minutes": "duration", "slot_minutes": "when", "quota": "duration",
    "lead_minutes": "when", "horizon_days": "when", "opening_hours": "when", "outage": "when",
    "status": "form", "qualification": "form", "rrule": "repeat",
}


def rule_sentence(rule: str, policy: Mapping[str, Any], resource_name: str = "") -> str:
    """One broken booking rule as a sentence, with the rule's own numbers."""
    p = policy
    if rule == "min_minutes":
        return _("A booking must last at least %(d)s.", d=fmt_duration(p.get("min_minutes", 15)))
    if rule == "max_minutes":
        return _("A booking may last at most %(d)s.", d=fmt_duration(p.get("max_minutes", 480)))
    if rule == "slot_minutes":
        return _("Start and end must fall on the %(d)s grid (for example on the hour).",
                 d=fmt_duration(p.get("slot_minutes", 15)))
    if rule == "lead_minutes":
        return _("Book at least %(d)s before the start.", d=fmt_duration(p.get("lead_minutes", 0)))
    if rule == "horizon_days":
        return _("You can book at most %(n)s days ahead.", n=p.get("horizon_days", 90))
    if rule == "opening_hours":
        return _("That time is outside the opening hours (%(hours)s).",
                 hours="; ".join(opening_hours_lines(p.get("opening_hours"))))
    if rule == "outage":
        return _("%(name)s is out of service then.", name=resource_name or _("The instrument"))
    if rule == "status":
        return _("%(name)s takes no new bookings right now.", name=resource_name or _("The instrument"))
    if rule == "qualification":
        return _("Only trained users may book %(name)s. Ask the lab's manager about training.",
                 name=resource_name or _("this instrument"))
    if rule == "quota":
        return _("This would take you over %(h)s hours this week on %(name)s.",
                 h=_number(p.get("max_hours_per_week") or 0), name=resource_name or _("this instrument"))
    if rule == "rrule":
        return _("The repeat does not work: choose between 2 and 52 weeks.")
    return _("The booking breaks a rule of this instrument.")


FIELD_NAMES = {"start": "when", "end": "duration", "rrule": "repeat", "title": "title", "project": "project"}


def refusal(err: ApiError, policy: Mapping[str, Any] | None = None, tz: dt.tzinfo | None = None,
            resource_name: str = "") -> dict[str, list[str]]:
    """An API refusal as sentences keyed by the form field they belong next to (``form`` for the whole form).

    Never the API's own text: every case maps to a translated sentence.
    """
    policy = policy or {}
    tz = tz or zoneinfo.ZoneInfo("UTC")
    out: dict[str, list[str]] = {}

    def add(field: str, sentence: str) -> None:
        if sentence not in out.setdefault(field, []):
            out[field].append(sentence)

    if isinstance(err, Refused) and err.conflicts:
        taken = ", ".join(fmt_range(c["start"], c["end"], tz) for c in err.conflicts[:5])
        more = len(err.conflicts) - 5
        sentence = _("That time is taken: %(times)s.", times=taken)
        if more > 0:
            sentence += " " + _("And %(n)s more.", n=more)
        add("when", sentence)
    elif isinstance(err, Refused) and err.violations:
        for v in err.violations:
            add(RULE_FIELDS.get(v.get("rule", ""), "form"), rule_sentence(v.get("rule", ""), policy, resource_name))
    elif isinstance(err, Refused) and err.errors:
        for e in err.errors:
            field = str(e.get("field", "")).split(".")[0]
            add(FIELD_NAMES.get(field, "form"), _("Please check this value."))
    elif isinstance(err, Refused):
        add("form", _("This can't be done in the booking's current state."))
    elif isinstance(err, NotAuthenticated):
        add("form", _("Your login has expired. Please log in again."))
    elif isinstance(err, NotAllowed):
        add("form", _("You are not allowed to do that."))
    elif isinstance(err, NotFound):
        add("form", _("That no longer exists."))
    elif err.status >= 500:
        add("form", _("The booking system is not answering right now. Please try again in a moment."))
    else:
        add("form", _("That did not work. Please check what you entered."))
    return out


def flat(messages: Mapping[str, Iterable[str]]) -> list[str]:
    """Every sentence of a ``refusal``, for a page without fields."""
    return [m for ms in messages.values() for m in ms]
