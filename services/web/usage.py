"""The managers' usage and utilisation page: a lab's bookings over a chosen period as charts and tables,
and the usage report as a CSV download.

The numbers are the API's (``GET /api/v1/usage`` and ``GET /api/v1/utilisation``);
this only groups them, lays out the charts (``charts.bar_chart``, drawn as SVG by
``templates/charts.html``) and passes the CSV through with the manager's token.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Response, redirect, render_template, request, url_for
from flask_babel import gettext as _

from services.web import charts, i18n
from services.web.client import Refused
from services.web.views import api, managed_labs, manager_required

#: The API's longest report window.
MAX_DAYS = 366
GROUPS = ("resource", "org", "project")

bp = Blueprint("usage", __name__, url_prefix="/manage")


@dataclass(frozen=True)
class Period:
    """A lab and the days ``first`` to ``last`` (both included) on its clock."""

    lab: dict[str, Any]
    first: dt.date
    last: dt.date
    by: str

    @property
    def start(self) -> dt.datetime:
        return dt.datetime.combine(self.first, dt.time(0), tzinfo=i18n.zone(self.lab.get("timezone")))

    @property
    def end(self) -> dt.datetime:
        return dt.datetime.combine(self.last + dt.timedelta(days=1), dt.time(0),
                                   tzinfo=i18n.zone(self.lab.get("timezone")))

    def window(self) -> dict[str, str]:
        """The API's ``lab_id``, ``from`` and ``to`` (the day after the last, at midnight)."""
        return {"lab_id": self.lab["id"], "from": self.start.isoformat(), "to": self.end.isoformat()}


@dataclass
class Group:
    """Usage summed over one instrument, organisation or project."""

    label: str
    bookings: int = 0
    hours: float = 0.0
    amounts: dict[str, float] = field(default_factory=dict)


def _date(value: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(value.strip())
    except ValueError:
        return None


def read_period(args: Mapping[str, str], labs: Mapping[str, dict[str, Any]],
                today: dt.date) -> tuple[dict[str, str], dict[str, list[str]], Period | None]:
    """The form's values (this month of the first lab by name when not given), a sentence per bad field,
    and the period when every field is good."""
    first_lab = min(labs.values(), key=lambda lab: lab["name"], default=None)
    month_start = today.replace(day=1)
    month_end = (month_start + dt.timedelta(days=32)).replace(day=1) - dt.timedelta(days=1)
    values = {
        "lab": args.get("lab") or (first_lab or {}).get("id", ""),
        "from": args.get("from", month_start.isoformat()),
        "to": args.get("to", month_end.isoformat()),
        "by": args.get("by") if args.get("by") in GROUPS else "resource",
    }
    errors: dict[str, list[str]] = {}
    lab = labs.get(values["lab"])
    if lab is None:
        errors["lab"] = [_("Choose one of your labs.")]
    first, last = _date(values["from"]), _date(values["to"])
    for name, day in (("from", first), ("to", last)):
        if day is None:
            errors[name] = [_("Please give a date, like %(example)s.", example=today.isoformat())]
    if first is not None and last is not None:
        if last < first:
            errors["to"] = [_("The last day must be on or after the first day.")]
        elif (last - first).days + 1 > MAX_DAYS:
            errors["to"] = [_("Choose at most %(n)s days.", n=MAX_DAYS)]
    if errors or lab is None or first is None or last is None:
        return values, errors, None
    return values, errors, Period(lab=lab, first=first, last=last, by=values["by"])


def group_usage(lines: list[dict[str, Any]], by: str, resource_names: Mapping[str, str]) -> list[Group]:
    """The API's rows (resource × org × project) summed per ``by``, most hours first. Grouped by resource,
    every instrument of the lab is listed, also those nobody booked."""
    groups: dict[str, Group] = {}
    if by == "resource":
        groups = {rid: Group(label=name) for rid, name in resource_names.items()}
    for line in lines:
        if by == "resource":
            key, label = line["resource_id"], line["resource_name"]
        elif by == "org":
            key = label = line["org"] or _("Unknown")
        else:
            key = line["project"]
            label = line["project"] or _("No project")
        group = groups.setdefault(key, Group(label=label))
        group.bookings += int(line["bookings"])
        group.hours += float(line["hours"])
        if line.get("amount") is not None:
            currency = line.get("currency") or ""
            group.amounts[currency] = round(group.amounts.get(currency, 0.0) + float(line["amount"]), 2)
    return sorted(groups.values(), key=lambda g: (-g.hours, g.label.lower()))


def _summary(rows: list[tuple[str, float, str]]) -> str:
    """A chart's numbers in one sentence, for its ``desc``."""
    return "; ".join(f"{label}: {text}" for label, _value, text in rows) + "."


@bp.get("/usage")
@manager_required
def usage() -> tuple[str, int]:
    labs = managed_labs()
    today = dt.date.today()
    values, errors, period = read_period(request.args, labs, today)
    context: dict[str, Any] = {"labs": sorted(labs.values(), key=lambda lab: lab["name"]), "values": values,
                               "errors": errors, "period": None}
    if period is None:
        return render_template("manage/usage.html", **context), 422 if request.args and labs else 200
    try:
        lines = api().get("/api/v1/usage", **period.window())["items"]
        util = api().get("/api/v1/utilisation", **period.window())["items"]
    except Refused as err:
        context["errors"] = {"form": i18n.flat(i18n.refusal(err))}
        return render_template("manage/usage.html", **context), 422
    names = {u["resource_id"]: u["resource_name"] for u in util}
    groups = group_usage(lines, period.by, names)
    usage_rows = [(g.label, g.hours, i18n.fmt_hours(g.hours)) for g in groups]
    util = sorted(util, key=lambda u: (-(u["utilisation"] or 0), u["resource_name"].lower()))
    util_rows = [(u["resource_name"], u["utilisation"] or 0.0, i18n.fmt_percent(u["utilisation"])) for u in util]
    when = i18n.fmt_period(period.first, period.last)
    titles = {"resource": _("Hours booked per instrument, %(period)s", period=when),
              "org": _("Hours booked per organisation, %(period)s", period=when),
              "project": _("Hours booked per project, %(period)s", period=when)}
    context.update(
        period=period, when=when, groups=groups, utilisation=util,
        usage_chart=charts.bar_chart(usage_rows, i18n.fmt_hours) if any(g.hours for g in groups) else None,
        usage_title=titles[period.by], usage_desc=_summary(usage_rows),
        util_chart=charts.bar_chart(util_rows, i18n.fmt_percent, scale_max=1.0) if util else None,
        util_title=_("Share of open time booked per instrument, %(period)s", period=when),
        util_desc=_summary(util_rows),
        total_hours=sum(g.hours for g in groups), total_bookings=sum(g.bookings for g in groups),
        total_amounts=_total(groups),
        csv_url=url_for("usage.usage_csv", lab=period.lab["id"], **{"from": values["from"], "to": values["to"]}),
    )
    return render_template("manage/usage.html", **context), 200


def _total(groups: list[Group]) -> dict[str, float]:
    out: dict[str, float] = {}
    for g in groups:
        for currency, amount in g.amounts.items():
            out[currency] = round(out.get(currency, 0.0) + amount, 2)
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "lab"


@bp.get("/usage.csv")
@manager_required
def usage_csv() -> Response:
    """The API's CSV of the period, fetched with the manager's token and handed to the browser as a file."""
    _values, _errors, period = read_period(request.args, managed_labs(), dt.date.today())
    if period is None:  # the page says what is wrong, next to the field
        return redirect(url_for("usage.usage", **request.args))
    body, _type = api().download("/api/v1/usage", "text/csv", format="csv", **period.window())
    name = f"usage-{_slug(period.lab['name'])}-{period.first.isoformat()}-{period.last.isoformat()}.csv"
    return Response(body, mimetype="text/csv", headers={"Content-Disposition": f'attachment; filename="{name}"'})
