"""Waiting for a taken time: join the waitlist from a refused booking, leave it from the home page.

The queue is the API's (``POST /api/v1/waitlist``, ``DELETE /api/v1/waitlist/{id}``):
when the time frees up, the first waiter the rules allow gets the booking there,
and it appears among the user's bookings.
"""

from __future__ import annotations

from flask import Blueprint, Response, abort, flash, redirect, request, url_for
from flask_babel import gettext as _

from services.web import i18n
from services.web.client import Refused
from services.web.views import api, lab_tz, login_required, resources

bp = Blueprint("waitlist", __name__)


def _kind(err: Refused) -> str:
    """The last part of a problem's ``type`` (``time-is-free``, ``invalid-state``, …)."""
    return str(err.problem.get("type") or "").rsplit("/", 1)[-1]


@bp.post("/waitlist")
@login_required
def join() -> Response:
    form = request.form
    res = resources().get(form.get("resource_id", ""))
    if res is None:
        abort(404)
    tz = lab_tz(res["lab_id"])
    body = {k: form.get(k, "").strip() for k in ("resource_id", "start", "end", "title", "project")}
    try:
        start, end = i18n.local(body["start"], tz), i18n.local(body["end"], tz)
    except ValueError:
        abort(400)
    again = url_for("main.book_form", resource_id=res["id"], start=start.isoformat(),
                    minutes=int((end - start).total_seconds() // 60))
    try:
        entry = api().post("/api/v1/waitlist", body)
    except Refused as err:
        if _kind(err) == "time-is-free":
            flash(_("That time has just become free: book it now."), "ok")
            return redirect(again)
        if _kind(err) == "invalid-state":
            flash(_("You are already on the waitlist for this time."), "error")
            return redirect(url_for("main.home") + "#waitlist")
        for message in i18n.flat(i18n.refusal(err, res["policy"], tz, res["name"])):
            flash(message, "error")
        return redirect(again)
    flash(_("You are number %(n)s on the waitlist for %(name)s, %(when)s. If the time frees up, the booking is "
            "yours and you will be told.", n=entry.get("position") or 1, name=res["name"],
            when=i18n.fmt_range(start, end, tz)), "ok")
    return redirect(url_for("main.home") + "#waitlist")


@bp.post("/waitlist/<entry_id>/leave")
@login_required
def leave(entry_id: str) -> Response:
    try:
        api().delete(f"/api/v1/waitlist/{entry_id}")
    except Refused:
        flash(_("You already got this time: it is among your bookings."), "error")
    else:
        flash(_("You have left the waitlist."), "ok")
    return redirect(url_for("main.home") + "#waitlist")
