"""Reports for a lab's managers: usage and cost sharing, and utilisation.

The database sums the bookings (``GROUP BY``); the rates, the open hours and the
arithmetic are ``domain``'s.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Any

from sqlalchemy.orm import Session

from services.booking import domain, handlers, store
from services.booking.store import LabView
from shared.auth import Principal
from shared.errors import Forbidden, NotFound
from shared.service import Runtime
from shared.timeutil import iso

USAGE_COLUMNS = ("resource_id", "resource_name", "org", "project", "bookings", "hours", "rate", "amount", "currency")


def _manages(user: Principal, lab: LabView) -> bool:
    return user.is_admin or ("manager" in user.roles and any(m.get("sub") == user.sub for m in lab.managers or []))


def _lab(session: Session, user: Principal, lab_id: str) -> LabView:
    lab = session.get(LabView, lab_id)
    if lab is None:
        raise NotFound(f"No lab with id {lab_id}.")
    if not _manages(user, lab):
        raise Forbidden("Only the lab's managers may see its reports.")
    return lab


def _report_labs(session: Session, user: Principal, lab_id: str | None, resource_id: str | None) -> set[str] | None:
    """The labs a report may cover (None: every lab, for an admin); 403 when the caller manages none asked for."""
    if resource_id:
        place = handlers.place_or_404(session, resource_id)
        if not handlers.can_manage(user, place):
            raise Forbidden("Only the lab's managers may see its reports.")
        return {place.lab_id} if not lab_id or lab_id == place.lab_id else set()
    if lab_id:
        return {_lab(session, user, lab_id).id}
    if user.is_admin:
        return None
    managed = store.managed_lab_ids(session, user.sub) if "manager" in user.roles else set()
    if not managed:
        raise Forbidden("Only managers of a lab (and admins) may see usage.")
    return managed


def usage(
    rt: Runtime,
    user: Principal,
    *,
    lab_id: str | None,
    resource_id: str | None,
    org: str | None,
    start: dt.datetime,
    end: dt.datetime,
) -> list[dict[str, Any]]:
    """One row per resource × org × project: billed bookings (confirmed, no-shows included) overlapping
    ``[start, end)``, their hours clipped to it, priced at the lab's internal or external rate."""
    with rt.db.read() as session:
        labs = _report_labs(session, user, lab_id, resource_id)
        if labs is not None and not labs:
            return []
        totals = store.usage_totals(session, start, end, domain.LONGEST_BOOKING, lab_ids=labs,
                                    resource_id=resource_id, org=org)
        places = store.places_by_id(session, {row[0] for row in totals})
    lines = []
    for rid, user_org, project, count, seconds in totals:
        place = places.get(rid)
        lines.append(domain.usage_line(
            resource_id=rid, resource_name=place.resource_name if place else "", rates=place.rates if place else {},
            lab_org=place.lab_org if place else "", org=user_org or "", project=project or "", bookings=int(count),
            seconds=float(seconds or 0),
        ))
    lines.sort(key=lambda x: (x["resource_name"], x["resource_id"], x["org"], x["project"]))
    return lines


def usage_csv(lines: list[dict[str, Any]]) -> str:
    """The usage rows as CSV with a header line; hours and amounts with two decimals."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(USAGE_COLUMNS)
    for line in lines:
        row = dict(line)
        row["hours"] = f"{line['hours']:.2f}"
        if line["amount"] is not None:
            row["amount"] = f"{line['amount']:.2f}"
        writer.writerow([row[c] for c in USAGE_COLUMNS])
    return out.getvalue()


def utilisation(rt: Runtime, user: Principal, lab_id: str, start: dt.datetime, end: dt.datetime) -> dict[str, Any]:
    """Per resource of a lab: open hours in ``[start, end)`` (opening hours minus outages; always open is
    24 h a day), booked hours (confirmed and no-show bookings, clipped), and booked ÷ open."""
    with rt.db.read() as session:
        _lab(session, user, lab_id)
        places = store.places_of_lab(session, lab_id)
        booked = store.booked_seconds(session, lab_id, start, end, domain.LONGEST_BOOKING)
        outages = store.outages_of_lab(session, lab_id, start, end)
    items = []
    for place in places:
        rid = place.resource_id
        open_secs = domain.open_seconds(place.policy.opening_hours, place.tz, start, end, outages.get(rid, []))
        no_show = booked.get((rid, "no_show"), 0.0)
        used = booked.get((rid, "confirmed"), 0.0) + no_show
        items.append({
            "resource_id": rid,
            "resource_name": place.resource_name,
            "status": place.status,
            "open_hours": round(open_secs / 3600, 2),
            "booked_hours": round(used / 3600, 2),
            "no_show_hours": round(no_show / 3600, 2),
            "utilisation": domain.utilisation(used, open_secs),
        })
    return {"lab_id": lab_id, "from": iso(start), "to": iso(end), "items": items, "next": None}
