"""The pages: login, the researcher's home, find, resource and booking pages, and the managers' pages.

Every view reads and writes through ``client.Api`` with the user's token; a
refusal of the API is shown as sentences from ``i18n.refusal`` next to the
field it concerns.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import requests
from authlib.integrations.base_client import OAuthError
from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_babel import gettext as _
from flask_babel import ngettext
from joserfc.errors import JoseError

from services.web import i18n, week
from services.web.client import Api, ApiError, NotFound, Refused
from services.web.forms import (
    FormErrors,
    durations,
    form_moment,
    lab_from_form,
    resource_from_form,
)

log = logging.getLogger("labshare.web")

#: The demo users the development login offers (the same as the demo data's).
DEV_USERS: dict[str, dict[str, Any]] = {
    "ada": {"sub": "ada", "name": "Ada Researcher", "email": "ada@ntnu.example.org", "org": "ntnu",
            "roles": ["researcher"]},
    "ola": {"sub": "ola", "name": "Ola Startup", "email": "ola@pulsetech.example.org", "org": "pulsetech",
            "roles": ["researcher"]},
    "imaging-manager": {"sub": "imaging-manager", "name": "Imaging lab manager",
                        "email": "imaging-manager@ntnu.example.org", "org": "ntnu",
                        "roles": ["researcher", "manager"]},
    "admin": {"sub": "admin", "name": "Arena admin", "email": "admin@arena.example.org", "org": "arena",
              "roles": ["admin"]},
}

FIND_DURATIONS = (30, 60, 90, 120, 180, 240, 360, 480)
FIND_WINDOW_DAYS = 14
FIND_RESULTS = 12
FEEDS_CHECK_SECONDS = 60
#: Which occurrences of a series a move or a cancellation is for (the API's ``scope``).
SCOPES = ("this", "following", "all")
SERIES_REACH = dt.timedelta(days=366)

auth = Blueprint("auth", __name__)
main = Blueprint("main", __name__)
manage = Blueprint("manage", __name__, url_prefix="/manage")
blueprints = (auth, main, manage)


# -- plumbing ---------------------------------------------------------------------------------------


def _state() -> dict[str, Any]:
    return current_app.extensions["labshare.web"]


def api() -> Api:
    """The API as the logged-in user sees it, called from the user's address (see ``ClientAddress``)."""
    st = _state()
    return Api(st["settings"].api_url, st["http"], session.get("token"), st["settings"].api_timeout,
               client_address=request.remote_addr)


def user() -> dict[str, Any] | None:
    return session.get("user")


def is_manager() -> bool:
    roles = (user() or {}).get("roles") or []
    return "manager" in roles or "admin" in roles


def is_admin() -> bool:
    return "admin" in ((user() or {}).get("roles") or [])


def _memo(key: str, make: Callable[[], Any]) -> Any:
    memo = g.setdefault("memo", {})
    if key not in memo:
        memo[key] = make()
    return memo[key]


def labs() -> dict[str, dict[str, Any]]:
    """Every lab by id (once per request)."""
    return _memo("labs", lambda: {lab["id"]: lab for lab in api().all("/api/v1/labs")})


def resources() -> dict[str, dict[str, Any]]:
    """Every resource by id, any status (once per request)."""
    return _memo("resources", lambda: {r["id"]: r for r in api().all("/api/v1/resources")})


def lab_tz(lab_id: str | None):
    return i18n.zone((labs().get(lab_id or "") or {}).get("timezone"))


def managed_labs() -> dict[str, dict[str, Any]]:
    """The labs the user may manage: every one for an admin, those listing them for a manager."""
    me = (user() or {}).get("sub")
    if is_admin():
        return labs()
    if not is_manager():
        return {}
    return {i: lab for i, lab in labs().items() if me in {m.get("sub") for m in lab.get("managers") or []}}


def _safe_next(value: str | None, default: str = "/") -> str:
    """Only paths of this site, never another origin."""
    if not value:
        return default
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not value.startswith("/") or value.startswith("//"):
        return default
    return value


def login_required(view: Callable) -> Callable:
    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if not user():
            return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
        return view(*args, **kwargs)

    return wrapped


def manager_required(view: Callable) -> Callable:
    @functools.wraps(view)
    @login_required
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if not is_manager():
            abort(403)
        return view(*args, **kwargs)

    return wrapped


def logged_out_redirect(message: str) -> Response:
    """End the session (the token expired) and send the user to log in again."""
    session.clear()
    flash(message, "error")
    return redirect(url_for("auth.login", next=_safe_next(request.full_path.rstrip("?"))))


def template_context() -> dict[str, Any]:
    st = _state()
    return {
        "current_user": user(),
        "is_manager": is_manager(),
        "lang": i18n.lang(),
        "languages": i18n.LANGUAGES,
        "dev_mode": st["settings"].dev_mode,
    }


def _when(value: Any, tz: Any = None) -> str:
    return i18n.fmt_when(value, tz or i18n.zone("UTC"))


def _range(item: dict[str, Any], tz: Any = None) -> str:
    return i18n.fmt_range(item["start"], item["end"], tz or i18n.zone("UTC"))


template_filters: dict[str, Callable] = {
    "when": _when,
    "range": _range,
    "duration": i18n.fmt_duration,
    "clock": lambda value, tz: i18n.fmt_clock(value, tz),
    "day": i18n.fmt_day,
    "hours": i18n.fmt_hours,
    "percent": i18n.fmt_percent,
    "money": i18n.fmt_money,
}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _iso(value: dt.datetime) -> str:
    return value.isoformat()


# -- login ------------------------------------------------------------------------------------------


def _log_in(token: str, claims: dict[str, Any]) -> None:
    """A fresh session (a new id, so that an id seen before the login is worth nothing) holding the token."""
    session.clear()
    session.rotate()  # type: ignore[attr-defined]
    session["token"] = token
    session["user"] = {k: claims.get(k) for k in ("sub", "name", "email", "org")}
    session["user"]["roles"] = list(claims.get("roles") or [])


@auth.get("/login")
def login() -> str:
    st = _state()
    return render_template(
        "login.html", next=_safe_next(request.args.get("next")), oidc="oauth" in st,
        dev_users=DEV_USERS if st["settings"].dev_mode else {},
    )


@auth.post("/login/dev")
def dev_login() -> Response:
    if not _state()["settings"].dev_mode:
        abort(404)
    claims = DEV_USERS.get(request.form.get("user", ""))
    if claims is None:
        abort(400)
    token = Api(_state()["settings"].api_url, _state()["http"],
                client_address=request.remote_addr).post("/api/v1/dev/token", claims)["token"]
    _log_in(token, claims)
    return redirect(_safe_next(request.form.get("next")))


@auth.get("/login/oidc")
def oidc_login() -> Response:
    st = _state()
    if "oauth" not in st:
        abort(404)
    session["login_next"] = _safe_next(request.args.get("next"))
    return st["oauth"].oidc.authorize_redirect(st["settings"].public_url + url_for("auth.oidc_callback"))


@auth.get("/login/callback")
def oidc_callback() -> Response:
    st = _state()
    if "oauth" not in st:
        abort(404)
    after = _safe_next(session.pop("login_next", None))
    try:
        token = st["oauth"].oidc.authorize_access_token()
    except (OAuthError, JoseError, requests.RequestException) as exc:
        # A state that is not this session's, the provider's refusal (of the login, the code or the
        # code verifier), an id token that does not check out, or no answer: no login, and the user is told.
        log.warning("OIDC login failed: %s", exc)
        flash(_("The login did not succeed. Please try again."), "error")
        return redirect(url_for("auth.login", next=after))
    claims = dict(token.get("userinfo") or {})
    access = token.get("access_token") or token.get("id_token")
    _log_in(access, {
        "sub": claims.get("sub"), "name": claims.get("name") or claims.get("preferred_username") or "",
        "email": claims.get("email") or "", "org": claims.get("org") or "", "roles": claims.get("roles") or [],
    })
    return redirect(after)


@auth.post("/logout")
def logout() -> Response:
    session.clear()
    return redirect(url_for("auth.login"))


@auth.post("/language")
def language() -> Response:
    lang = request.form.get("lang", "")
    resp = redirect(_safe_next(request.form.get("next")))
    if lang in i18n.LANGUAGES:
        resp.set_cookie(i18n.LANG_COOKIE, lang, max_age=365 * 24 * 3600, path="/", httponly=True,
                        samesite="Lax", secure=_state()["settings"].secure_cookies)
    return resp


# -- researchers ------------------------------------------------------------------------------------


def _feeds_available() -> bool:
    """Whether the API offers personal calendar feeds (asked of its OpenAPI document, once a minute)."""
    cache = _state()["cache"]
    known = cache.get("feeds")
    if known is not None and known[1] > time.monotonic():
        return known[0]
    try:
        paths = api().get("/api/v1/openapi/booking.json").get("paths", {})
        answer = "/api/v1/feeds/token" in paths
    except ApiError:
        answer = False
    cache["feeds"] = (answer, time.monotonic() + FEEDS_CHECK_SECONDS)
    return answer


def _decorate(booking: dict[str, Any]) -> dict[str, Any]:
    """A booking with its resource's name and its lab's time zone, for listing."""
    res = resources().get(booking["resource_id"]) or {}
    lab_id = booking.get("lab_id") or res.get("lab_id")
    return {**booking, "resource_name": booking.get("resource_name") or res.get("name", ""),
            "tz": lab_tz(lab_id), "lab_name": (labs().get(lab_id or "") or {}).get("name", "")}


@main.get("/")
@login_required
def home() -> str:
    now = _iso(_now())
    mine = api().get("/api/v1/bookings", mine="true", **{"from": now}, limit=100)["items"]
    upcoming = [_decorate(b) for b in mine if b["status"] == "confirmed"]
    pending = [_decorate(b) for b in mine if b["status"] == "pending"]
    waiting = [_decorate(w) for w in api().get("/api/v1/waitlist", mine="true", status="waiting", limit=100)["items"]]
    return render_template("home.html", upcoming=upcoming, pending=pending, waiting=waiting,
                           feeds=_feeds_available(), feed=session.get("feed"))


@main.post("/calendar-link")
@login_required
def calendar_link() -> Response:
    try:
        answer = api().post("/api/v1/feeds/token")
    except NotFound:
        flash(_("Calendar subscriptions are not available yet."), "error")
        return redirect(url_for("main.home"))
    url = answer["url"]
    session["feed"] = {"url": url, "webcal_url": answer.get("webcal_url") or "webcal://" + url.split("://", 1)[-1]}
    flash(_("Your calendar link is ready. Any older link no longer works."), "ok")
    return redirect(url_for("main.home") + "#calendar")


def _categories(items: list[dict[str, Any]]) -> list[str]:
    """Every category and its parents ("microscopy", "microscopy/confocal"), sorted."""
    found: set[str] = set()
    for r in items:
        parts = r["category"].split("/")
        for n in range(1, len(parts) + 1):
            found.add("/".join(parts[:n]))
    return sorted(found)


@main.get("/find")
@login_required
def find() -> str:
    active = [r for r in resources().values() if r["status"] == "active"]
    all_labs = labs()
    args = request.args
    what = args.get("what", "")
    minutes = args.get("minutes", type=int) or 60
    day = args.get("day") or ""
    chosen = {"lab": args.get("lab", ""), "org": args.get("org", ""), "building": args.get("building", "")}
    slots: list[dict[str, Any]] | None = None
    messages: list[str] = []
    if what:
        slots, messages = _find_slots(what, minutes, day, chosen, active, all_labs)
    return render_template(
        "find.html", categories=_categories(active), instruments=sorted(active, key=lambda r: r["name"]),
        durations=FIND_DURATIONS, what=what, minutes=minutes, day=day, chosen=chosen, slots=slots,
        messages=messages, labs=sorted(all_labs.values(), key=lambda lab: lab["name"]),
        orgs=sorted({lab["org"] for lab in all_labs.values()}),
        buildings=sorted({lab["building"] for lab in all_labs.values() if lab.get("building")}),
        today=dt.date.today().isoformat(), back=request.full_path.rstrip("?"),
    )


def _find_slots(what: str, minutes: int, day: str, chosen: dict[str, str], active: list[dict[str, Any]],
                all_labs: dict[str, dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """The earliest free slots: ``GET /api/v1/slots`` for the category, then the filters applied here."""
    kind, _sep, value = what.partition(":")
    if kind == "res":
        target = next((r for r in active if r["id"] == value), None)
        if target is None:
            return [], [_("That instrument takes no bookings right now.")]
        category, allowed = target["category"], {target["id"]}
    else:
        category, allowed = value, {r["id"] for r in active}
    for key, field in (("lab", "id"), ("org", "org"), ("building", "building")):
        if chosen[key]:
            allowed &= {r["id"] for r in active if (all_labs.get(r["lab_id"]) or {}).get(field) == chosen[key]}
    params: dict[str, Any] = {"category": category, "duration_minutes": minutes, "limit": 500}
    if day:
        try:
            start_day = dt.date.fromisoformat(day)
        except ValueError:
            return [], [_("Please choose a date.")]
        tz = i18n.zone(next(iter(all_labs.values()), {}).get("timezone"))
        start = max(dt.datetime.combine(start_day, dt.time(0), tzinfo=tz), _now())
        params["from"] = _iso(start)
        params["to"] = _iso(start + dt.timedelta(days=FIND_WINDOW_DAYS))
    try:
        found = api().get("/api/v1/slots", **params)["items"]
    except Refused as err:
        return [], i18n.flat(i18n.refusal(err))
    by_id = {r["id"]: r for r in active}
    out: list[dict[str, Any]] = []
    per_start: dict[str, int] = {}
    for slot in found:
        # At most two instruments per start time, so that the list offers a spread of times.
        if slot["resource_id"] not in allowed or per_start.get(slot["start"], 0) >= 2:
            continue
        per_start[slot["start"]] = per_start.get(slot["start"], 0) + 1
        res = by_id[slot["resource_id"]]
        lab = all_labs.get(res["lab_id"]) or {}
        out.append({**slot, "resource": res, "lab": lab, "tz": i18n.zone(lab.get("timezone"))})
        if len(out) >= FIND_RESULTS:
            break
    return out, []


def _monday(value: str | None, tz: Any) -> dt.date:
    try:
        day = dt.date.fromisoformat(value) if value else dt.datetime.now(tz).date()
    except ValueError:
        day = dt.datetime.now(tz).date()
    return day - dt.timedelta(days=day.weekday())


@main.get("/resources/<resource_id>")
@login_required
def resource(resource_id: str) -> str:
    res = api().get(f"/api/v1/resources/{resource_id}")
    lab = api().get(f"/api/v1/labs/{res['lab_id']}")
    tz = i18n.zone(lab["timezone"])
    monday = _monday(request.args.get("week"), tz)
    start = dt.datetime.combine(monday, dt.time(0), tzinfo=tz)
    end = dt.datetime.combine(monday + dt.timedelta(days=7), dt.time(0), tzinfo=tz)
    try:
        availability = api().get("/api/v1/availability", resource_id=resource_id, **{"from": _iso(start)},
                                 to=_iso(end))
        days, labels = week.build_week(monday, tz, res["policy"], availability, _now())
    except NotFound:
        days, labels = [], []
    feed = _state()["settings"].public_url + f"/feeds/resources/{resource_id}.ics"
    return render_template(
        "resource.html", resource=res, lab=lab, tz=tz, days=days, labels=labels, monday=monday,
        prev_week=(monday - dt.timedelta(days=7)).isoformat(), next_week=(monday + dt.timedelta(days=7)).isoformat(),
        rules=i18n.policy_sentences(res["policy"]), hours=i18n.opening_hours_lines(res["policy"].get("opening_hours")),
        feed_url=feed, webcal_url="webcal://" + feed.split("://", 1)[-1],
        can_manage=res["lab_id"] in managed_labs(),
    )


def _booking_form_context(res: dict[str, Any], lab: dict[str, Any], values: dict[str, Any],
                          errors: dict[str, list[str]], wait: dict[str, str] | None = None) -> dict[str, Any]:
    """``wait``: the window to offer the waitlist for (a single booking refused because the time is taken)."""
    return {"resource": res, "lab": lab, "values": values, "errors": errors, "wait": wait,
            "durations": durations(res["policy"]), "rules": i18n.policy_sentences(res["policy"])}


def _wait_offer(err: Refused, body: dict[str, Any]) -> dict[str, str] | None:
    """The window a refused single booking may wait for: only when the time is taken, not when a rule says no."""
    if not err.conflicts or body.get("rrule"):
        return None
    return {k: body.get(k) or "" for k in ("resource_id", "start", "end", "title", "project")}


@main.get("/resources/<resource_id>/book")
@login_required
def book_form(resource_id: str) -> str:
    res = api().get(f"/api/v1/resources/{resource_id}")
    lab = api().get(f"/api/v1/labs/{res['lab_id']}")
    tz = i18n.zone(lab["timezone"])
    start = None
    if request.args.get("start"):
        try:
            start = i18n.local(request.args["start"], tz)
        except ValueError:
            start = None
    start = start or dt.datetime.now(tz).replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=1)
    policy = res["policy"]
    default_minutes = min(max(60, policy.get("min_minutes", 15)), policy.get("max_minutes", 480))
    values = {"date": start.date().isoformat(), "time": start.strftime("%H:%M"),
              "minutes": request.args.get("minutes", type=int) or default_minutes,
              "title": "", "project": "", "repeat": False, "weeks": 4}
    return render_template("book.html", **_booking_form_context(res, lab, values, {}))


@main.post("/resources/<resource_id>/book")
@login_required
def book(resource_id: str) -> Any:
    res = api().get(f"/api/v1/resources/{resource_id}")
    lab = api().get(f"/api/v1/labs/{res['lab_id']}")
    tz = i18n.zone(lab["timezone"])
    form = request.form
    values = {"date": form.get("date", ""), "time": form.get("time", ""), "minutes": form.get("minutes", type=int),
              "title": form.get("title", "").strip(), "project": form.get("project", "").strip(),
              "repeat": bool(form.get("repeat")), "weeks": form.get("weeks", type=int) or 0}
    errors = FormErrors()
    start = form_moment(values["date"], values["time"], tz)
    if start is None:
        errors.add("when", _("Please choose a date and a time."))
    if not values["minutes"]:
        errors.add("duration", _("Please choose how long."))
    if values["repeat"] and not 2 <= values["weeks"] <= 52:
        errors.add("repeat", _("The repeat does not work: choose between 2 and 52 weeks."))
    if errors or start is None:
        return render_template("book.html", **_booking_form_context(res, lab, values, errors.fields)), 422
    body: dict[str, Any] = {"resource_id": resource_id, "start": _iso(start),
                            "end": _iso(start + dt.timedelta(minutes=values["minutes"])),
                            "title": values["title"], "project": values["project"]}
    if values["repeat"]:
        body["rrule"] = f"FREQ=WEEKLY;COUNT={values['weeks']}"
    try:
        booking = api().post("/api/v1/bookings", body)
    except Refused as err:
        messages = i18n.refusal(err, res["policy"], tz, res["name"])
        return render_template("book.html", **_booking_form_context(res, lab, values, messages,
                                                                    _wait_offer(err, body))), 422
    _flash_booked(booking)
    return redirect(url_for("main.booking", booking_id=booking["id"]))


def _flash_booked(booking: dict[str, Any]) -> None:
    if booking["status"] == "pending":
        flash(_("Requested. The lab's manager will approve or decline it, and you will hear by e-mail."), "ok")
    elif booking.get("occurrences"):
        flash(_("Booked: %(n)s weeks.", n=len(booking["occurrences"])), "ok")
    else:
        flash(_("Booked."), "ok")


@main.post("/bookings")
@login_required
def quick_book() -> Any:
    """One click on a found slot."""
    form = request.form
    back = _safe_next(form.get("back"), url_for("main.find"))
    res = resources().get(form.get("resource_id", ""))
    if res is None:
        abort(404)
    tz = lab_tz(res["lab_id"])
    body = {"resource_id": res["id"], "start": form.get("start", ""), "end": form.get("end", ""),
            "title": form.get("title", "")}
    try:
        booking = api().post("/api/v1/bookings", body)
    except Refused as err:
        messages = i18n.refusal(err, res["policy"], tz, res["name"])
        if err.conflicts:  # taken since the list was shown: the form, with the waitlist on offer
            start, end = i18n.local(body["start"], tz), i18n.local(body["end"], tz)
            values = {"date": start.date().isoformat(), "time": start.strftime("%H:%M"),
                      "minutes": int((end - start).total_seconds() // 60), "title": body["title"], "project": "",
                      "repeat": False, "weeks": 4}
            lab = labs().get(res["lab_id"]) or {"timezone": str(tz)}
            return render_template("book.html", **_booking_form_context(res, lab, values, messages,
                                                                        _wait_offer(err, body))), 422
        for message in i18n.flat(messages):
            flash(message, "error")
        return redirect(back)
    _flash_booked(booking)
    return redirect(url_for("main.booking", booking_id=booking["id"]))


def _booking_page(booking_id: str, errors: dict[str, list[str]] | None = None,
                  values: dict[str, Any] | None = None, status: int = 200) -> tuple[str, int]:
    booking = api().get(f"/api/v1/bookings/{booking_id}")
    if "id" not in booking:  # someone else's booking: busy time only
        abort(404)
    res = resources().get(booking["resource_id"]) or api().get(f"/api/v1/resources/{booking['resource_id']}")
    tz = i18n.zone((booking.get("lab") or {}).get("timezone") or (labs().get(res["lab_id"]) or {}).get("timezone"))
    start, end = i18n.local(booking["start"], tz), i18n.local(booking["end"], tz)
    now = _now()
    mine = booking["user"]["sub"] == (user() or {}).get("sub")
    live = booking["status"] in ("confirmed", "pending")
    values = values or {"date": start.date().isoformat(), "time": start.strftime("%H:%M"),
                        "minutes": int((end - start).total_seconds() // 60), "title": booking.get("title", ""),
                        "project": booking.get("project", ""), "scope": "this"}
    return render_template(
        "booking.html", booking=booking, resource=res, tz=tz, values=values, errors=errors or {},
        series=_series(booking, start) if mine else [],
        durations=durations(res["policy"], include=values["minutes"]), mine=mine,
        can_change=live and i18n.parse_time(booking["end"]) > now,
        can_check_in=mine and booking["status"] == "confirmed" and not booking.get("checked_in_at")
        and start - dt.timedelta(minutes=15) <= now <= end,
        can_decide=booking["status"] == "pending" and res["lab_id"] in managed_labs(),
    ), status


def _series(booking: dict[str, Any], start: dt.datetime) -> list[dict[str, Any]]:
    """The occurrences of the user's own series, in time order (those within a year of this one)."""
    ids = booking.get("occurrences") or []
    if not booking.get("series_id") or len(ids) < 2:
        return []
    items = api().all("/api/v1/bookings", resource_id=booking["resource_id"], mine="true",
                      **{"from": _iso(start - SERIES_REACH)}, to=_iso(start + SERIES_REACH))
    by_id = {b["id"]: b for b in items if b.get("series_id") == booking["series_id"]}
    return [by_id[i] for i in ids if i in by_id]


def _scope(form: Any) -> str:
    scope = form.get("scope", "this")
    return scope if scope in SCOPES else "this"


@main.get("/bookings/<booking_id>")
@login_required
def booking(booking_id: str) -> tuple[str, int]:
    return _booking_page(booking_id)


@main.post("/bookings/<booking_id>/move")
@login_required
def move(booking_id: str) -> Any:
    current = api().get(f"/api/v1/bookings/{booking_id}")
    res = resources().get(current["resource_id"]) or {}
    tz = i18n.zone((current.get("lab") or {}).get("timezone"))
    form = request.form
    values = {"date": form.get("date", ""), "time": form.get("time", ""), "minutes": form.get("minutes", type=int),
              "title": form.get("title", "").strip(), "project": form.get("project", "").strip(),
              "scope": _scope(form) if current.get("series_id") else "this"}
    start = form_moment(values["date"], values["time"], tz)
    if start is None or not values["minutes"]:
        return _booking_page(booking_id, {"when": [_("Please choose a date and a time.")]}, values, 422)
    changes = {"start": _iso(start), "end": _iso(start + dt.timedelta(minutes=values["minutes"])),
               "title": values["title"], "project": values["project"]}
    if values["scope"] != "this":
        changes["scope"] = values["scope"]
    try:
        answer = api().patch(f"/api/v1/bookings/{booking_id}", changes)
    except Refused as err:
        messages = i18n.refusal(err, res.get("policy"), tz, res.get("name", ""))
        return _booking_page(booking_id, messages, values, 422)
    if "updated" in answer:
        flash(ngettext("Changed %(num)s booking of the series.", "Changed %(num)s bookings of the series.",
                       len(answer["updated"])), "ok")
    else:
        flash(_("Changed."), "ok")
    return redirect(url_for("main.booking", booking_id=booking_id))


def _booking_action(booking_id: str, action: str, body: dict[str, Any] | None, done: str) -> Response:
    try:
        api().post(f"/api/v1/bookings/{booking_id}/{action}", body or {})
    except Refused as err:
        if action == "check-in":
            flash(_("Check-in is open from 15 minutes before the start until shortly after it."), "error")
        else:
            for message in i18n.flat(i18n.refusal(err)):
                flash(message, "error")
    else:
        flash(done, "ok")
    return redirect(_safe_next(request.form.get("back"), url_for("main.booking", booking_id=booking_id)))


@main.post("/bookings/<booking_id>/cancel")
@login_required
def cancel(booking_id: str) -> Response:
    reason = request.form.get("reason", "").strip() or None
    scope = _scope(request.form)
    if scope == "this":
        return _booking_action(booking_id, "cancel", {"reason": reason} if reason else {}, _("Cancelled."))
    try:
        answer = api().post(f"/api/v1/bookings/{booking_id}/cancel", {"reason": reason, "scope": scope})
    except Refused as err:
        for message in i18n.flat(i18n.refusal(err)):
            flash(message, "error")
    else:
        flash(ngettext("Cancelled %(num)s booking of the series.", "Cancelled %(num)s bookings of the series.",
                       len(answer.get("cancelled") or [])), "ok")
    return redirect(url_for("main.booking", booking_id=booking_id))


@main.post("/bookings/<booking_id>/check-in")
@login_required
def check_in(booking_id: str) -> Response:
    return _booking_action(booking_id, "check-in", None, _("Checked in."))


@main.post("/bookings/<booking_id>/approve")
@manager_required
def approve(booking_id: str) -> Response:
    return _booking_action(booking_id, "approve", None, _("Approved."))


@main.post("/bookings/<booking_id>/decline")
@manager_required
def decline(booking_id: str) -> Response:
    reason = request.form.get("reason", "").strip() or None
    return _booking_action(booking_id, "decline", {"reason": reason} if reason else {}, _("Declined."))


# -- managers ---------------------------------------------------------------------------------------


@manage.get("/")
@manager_required
def index() -> str:
    mine = managed_labs()
    by_lab: dict[str, list[dict[str, Any]]] = {lab_id: [] for lab_id in mine}
    for r in resources().values():
        if r["lab_id"] in by_lab:
            by_lab[r["lab_id"]].append(r)
    pending = _pending(mine)
    return render_template("manage/index.html", labs=sorted(mine.values(), key=lambda lab: lab["name"]),
                           by_lab=by_lab, pending=len(pending))


def _lab_or_403(lab_id: str) -> dict[str, Any]:
    lab = managed_labs().get(lab_id)
    if lab is None:
        if lab_id in labs():
            abort(403)
        abort(404)
    return lab


@manage.route("/labs/new", methods=["GET", "POST"])
@manager_required
def new_lab() -> Any:
    values: dict[str, Any] = {"name": "", "org": (user() or {}).get("org") or "", "building": "",
                              "timezone": "Europe/Oslo", "managers": ""}
    errors: dict[str, list[str]] = {}
    if request.method == "POST":
        body, values, errors = lab_from_form(request.form)
        if not errors:
            try:
                lab = api().post("/api/v1/labs", body)
            except Refused as err:
                errors = _field_errors(err)
            else:
                flash(_("Lab created."), "ok")
                return redirect(url_for("manage.edit_lab", lab_id=lab["id"]))
    return render_template("manage/lab_form.html", lab=None, values=values, errors=errors), 422 if errors else 200


@manage.route("/labs/<lab_id>", methods=["GET", "POST"])
@manager_required
def edit_lab(lab_id: str) -> Any:
    current = _lab_or_403(lab_id)
    values = {**current, "managers": "\n".join(
        " | ".join(x for x in (m.get("sub", ""), m.get("name", ""), m.get("email", "")) if x) for m in
        current.get("managers") or [])}
    errors: dict[str, list[str]] = {}
    if request.method == "POST":
        body, values, errors = lab_from_form(request.form)
        if not errors:
            try:
                api().patch(f"/api/v1/labs/{lab_id}", body)
            except Refused as err:
                errors = _field_errors(err)
            else:
                flash(_("Saved."), "ok")
                return redirect(url_for("manage.edit_lab", lab_id=lab_id))
    lab_resources = sorted((r for r in resources().values() if r["lab_id"] == lab_id), key=lambda r: r["name"])
    return render_template("manage/lab_form.html", lab=current, values=values, errors=errors,
                           resources=lab_resources), 422 if errors else 200


def _field_errors(err: ApiError) -> dict[str, list[str]]:
    """A 422 ``errors`` list as sentences per form field (policy members by their own name)."""
    if not isinstance(err, Refused) or not err.errors:
        return i18n.refusal(err)
    out: dict[str, list[str]] = {}
    for e in err.errors:
        parts = str(e.get("field", "")).split(".")
        field = parts[1] if parts[0] == "policy" and len(parts) > 1 else parts[0]
        if parts[0] == "policy" and len(parts) > 2 and parts[1] == "opening_hours":
            field = f"hours_{parts[2]}"
        message = str(e.get("message", ""))
        if "multiple of slot_minutes" in message:
            text = _("Must be a multiple of the slot length.")
        elif "at least min_minutes" in message:
            text = _("Must be at least the shortest booking.")
        elif "time zone" in message:
            text = _("Unknown time zone, e.g. Europe/Oslo.")
        elif "ends before it starts" in message or "not overlap" in message:
            text = _("Each opening must end after it starts, in order.")
        else:
            text = _("Please check this value.")
        out.setdefault(field, []).append(text)
    return out


@manage.route("/labs/<lab_id>/resources/new", methods=["GET", "POST"])
@manager_required
def new_resource(lab_id: str) -> Any:
    current_lab = _lab_or_403(lab_id)
    values = resource_defaults()
    errors: dict[str, list[str]] = {}
    if request.method == "POST":
        body, values, errors = resource_from_form(request.form)
        if not errors:
            try:
                created = api().post("/api/v1/resources", {**body, "lab_id": lab_id})
            except Refused as err:
                errors = _field_errors(err)
            else:
                flash(_("Instrument created."), "ok")
                return redirect(url_for("manage.edit_resource", resource_id=created["id"]))
    return render_template("manage/resource_form.html", lab=current_lab, resource=None, values=values,
                           errors=errors, day_names=i18n.day_names()), 422 if errors else 200


def resource_defaults() -> dict[str, Any]:
    values: dict[str, Any] = {"name": "", "kind": "equipment", "category": "", "description": "",
                              "status": "active", "rate_internal": 0, "rate_external": 0, "currency": "NOK",
                              "slot_minutes": 15, "min_minutes": 15, "max_minutes": 480, "lead_minutes": 0,
                              "horizon_days": 90, "buffer_minutes": 0, "max_hours_per_week": "",
                              "requires_approval": False, "requires_qualification": False,
                              "checkin_required": False, "checkin_grace_minutes": 15, "always_open": False}
    for day in week.WEEKDAYS:
        values[f"hours_{day}"] = "08:00-16:00" if day not in ("sat", "sun") else ""
    return values


def _resource_values(res: dict[str, Any]) -> dict[str, Any]:
    p, rates = res["policy"], res.get("rates") or {}
    values = {**resource_defaults(), **{k: res.get(k, "") for k in ("name", "kind", "category", "description",
                                                                    "status")}}
    values.update({k: p.get(k) for k in ("slot_minutes", "min_minutes", "max_minutes", "lead_minutes",
                                         "horizon_days", "buffer_minutes", "requires_approval",
                                         "requires_qualification", "checkin_required", "checkin_grace_minutes")})
    values["max_hours_per_week"] = p.get("max_hours_per_week") or ""
    values.update(rate_internal=rates.get("internal", 0), rate_external=rates.get("external", 0),
                  currency=rates.get("currency", "NOK"))
    hours = p.get("opening_hours")
    values["always_open"] = hours is None
    for day in week.WEEKDAYS:
        values[f"hours_{day}"] = ", ".join(f"{a}-{b}" for a, b in (hours or {}).get(day) or [])
    return values


def _resource_or_403(resource_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    res = api().get(f"/api/v1/resources/{resource_id}")
    return res, _lab_or_403(res["lab_id"])


@manage.route("/resources/<resource_id>", methods=["GET", "POST"])
@manager_required
def edit_resource(resource_id: str) -> Any:
    res, current_lab = _resource_or_403(resource_id)
    values = _resource_values(res)
    errors: dict[str, list[str]] = {}
    if request.method == "POST":
        body, values, errors = resource_from_form(request.form)
        if not errors:
            try:
                api().patch(f"/api/v1/resources/{resource_id}", body)
            except Refused as err:
                errors = _field_errors(err)
            else:
                flash(_("Saved."), "ok")
                return redirect(url_for("manage.edit_resource", resource_id=resource_id))
    tz = i18n.zone(current_lab["timezone"])
    outages = api().get(f"/api/v1/resources/{resource_id}/outages", **{"from": _iso(_now())})["items"]
    qualifications = api().get(f"/api/v1/resources/{resource_id}/qualifications")["items"]
    return render_template(
        "manage/resource_form.html", lab=current_lab, resource=res, values=values, errors=errors,
        day_names=i18n.day_names(), outages=outages, qualifications=qualifications, tz=tz,
        outage_values=request.args, today=dt.datetime.now(tz).date().isoformat(),
    ), 422 if errors else 200


@manage.post("/resources/<resource_id>/status")
@manager_required
def set_status(resource_id: str) -> Response:
    status = request.form.get("status", "")
    if status not in ("active", "maintenance", "retired"):
        abort(400)
    _resource_or_403(resource_id)
    api().patch(f"/api/v1/resources/{resource_id}", {"status": status})
    flash({"active": _("Open for bookings again."), "maintenance": _("Marked as in maintenance."),
           "retired": _("Retired: it takes no new bookings.")}[status], "ok")
    return redirect(url_for("manage.edit_resource", resource_id=resource_id))


def _affected(resource_id: str, start: dt.datetime, end: dt.datetime) -> list[dict[str, Any]]:
    """The confirmed or pending bookings an outage would cancel (a manager sees them in full)."""
    items = api().all("/api/v1/bookings", resource_id=resource_id, **{"from": _iso(start)}, to=_iso(end))
    return [b for b in items if b["status"] in ("confirmed", "pending")]


@manage.post("/resources/<resource_id>/outages")
@manager_required
def outage(resource_id: str) -> Any:
    res, current_lab = _resource_or_403(resource_id)
    tz = i18n.zone(current_lab["timezone"])
    form = request.form
    start = form_moment(form.get("start_date", ""), form.get("start_time", ""), tz)
    end = form_moment(form.get("end_date", ""), form.get("end_time", ""), tz)
    reason = form.get("reason", "").strip()
    if start is None or end is None or end <= start:
        flash(_("An outage needs a start and an end after it."), "error")
        return redirect(url_for("manage.edit_resource", resource_id=resource_id) + "#outages")
    affected = _affected(resource_id, start, end)
    if form.get("confirm") != "yes":
        return render_template("manage/outage_confirm.html", resource=res, lab=current_lab, tz=tz, start=start,
                               end=end, reason=reason, affected=affected, form=form)
    try:
        api().post(f"/api/v1/resources/{resource_id}/outages",
                   {"start": _iso(start), "end": _iso(end), "reason": reason})
    except Refused as err:
        for message in i18n.flat(_field_errors(err)):
            flash(message, "error")
        return redirect(url_for("manage.edit_resource", resource_id=resource_id) + "#outages")
    if affected:
        flash(ngettext("Outage scheduled. %(num)s booking is being cancelled and its owner told.",
                       "Outage scheduled. %(num)s bookings are being cancelled and their owners told.",
                       len(affected)), "ok")
    else:
        flash(_("Outage scheduled. No bookings were affected."), "ok")
    return redirect(url_for("manage.edit_resource", resource_id=resource_id) + "#outages")


@manage.post("/resources/<resource_id>/outages/<outage_id>/delete")
@manager_required
def lift_outage(resource_id: str, outage_id: str) -> Response:
    _resource_or_403(resource_id)
    api().delete(f"/api/v1/resources/{resource_id}/outages/{outage_id}")
    flash(_("Outage lifted: the time can be booked again."), "ok")
    return redirect(url_for("manage.edit_resource", resource_id=resource_id) + "#outages")


@manage.post("/resources/<resource_id>/qualifications")
@manager_required
def grant(resource_id: str) -> Response:
    _res, current_lab = _resource_or_403(resource_id)
    sub = request.form.get("sub", "").strip()
    expires = request.form.get("expires", "").strip()
    body: dict[str, Any] = {"sub": sub}
    if expires:
        moment = form_moment(expires, "23:59", i18n.zone(current_lab["timezone"]))
        if moment is None:
            flash(_("Please choose a valid expiry date."), "error")
            return redirect(url_for("manage.edit_resource", resource_id=resource_id) + "#qualifications")
        body["expires"] = _iso(moment)
    if not sub:
        flash(_("Please give the user's id."), "error")
        return redirect(url_for("manage.edit_resource", resource_id=resource_id) + "#qualifications")
    try:
        api().post(f"/api/v1/resources/{resource_id}/qualifications", body)
    except Refused as err:
        for message in i18n.flat(_field_errors(err)):
            flash(message, "error")
    else:
        flash(_("%(sub)s is now qualified.", sub=sub), "ok")
    return redirect(url_for("manage.edit_resource", resource_id=resource_id) + "#qualifications")


@manage.post("/resources/<resource_id>/qualifications/<sub>/revoke")
@manager_required
def revoke(resource_id: str, sub: str) -> Response:
    _resource_or_403(resource_id)
    api().delete(f"/api/v1/resources/{resource_id}/qualifications/{sub}")
    flash(_("Qualification withdrawn."), "ok")
    return redirect(url_for("manage.edit_resource", resource_id=resource_id) + "#qualifications")


def _pending(mine: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    items = api().all("/api/v1/bookings", status="pending", **{"from": _iso(_now())})
    return [_decorate(b) for b in items if "id" in b and b.get("lab_id") in mine]


@manage.get("/approvals")
@manager_required
def approvals() -> str:
    return render_template("manage/approvals.html", pending=_pending(managed_labs()))


@manage.post("/approvals")
@manager_required
def decide() -> Response:
    action = request.form.get("action")
    ids = request.form.getlist("booking")
    reason = request.form.get("reason", "").strip() or None
    if action not in ("approve", "decline"):
        abort(400)
    if not ids:
        flash(_("Choose at least one request."), "error")
        return redirect(url_for("manage.approvals"))
    done, failed = 0, 0
    for booking_id in ids:
        try:
            api().post(f"/api/v1/bookings/{booking_id}/{action}",
                       {"reason": reason} if action == "decline" and reason else {})
            done += 1
        except Refused:
            failed += 1
    if action == "approve":
        flash(_("Approved %(n)s.", n=done), "ok")
    else:
        flash(_("Declined %(n)s.", n=done), "ok")
    if failed:
        flash(_("%(n)s could not be changed: someone else decided them first.", n=failed), "error")
    return redirect(url_for("manage.approvals"))


@manage.get("/webhooks")
@manager_required
def webhooks() -> str:
    hooks = api().all("/api/v1/webhooks")
    return render_template("manage/webhooks.html", hooks=hooks, labs=managed_labs(), values={}, errors={})


@manage.post("/webhooks")
@manager_required
def new_webhook() -> Any:
    form = request.form
    values = {"url": form.get("url", "").strip(), "events": form.get("events", "").strip() or "booking.*",
              "secret": form.get("secret", ""), "lab_id": form.get("lab_id", "")}
    body: dict[str, Any] = {"url": values["url"], "secret": values["secret"],
                            "events": [e.strip() for e in values["events"].split(",") if e.strip()]}
    if values["lab_id"]:
        body["lab_id"] = values["lab_id"]
    try:
        api().post("/api/v1/webhooks", body)
    except Refused as err:
        errors = {}
        for e in err.errors or [{"field": "url"}]:
            errors.setdefault(str(e.get("field", "url")).split(".")[0], []).append(_("Please check this value."))
        hooks = api().all("/api/v1/webhooks")
        return render_template("manage/webhooks.html", hooks=hooks, labs=managed_labs(), values=values,
                               errors=errors), 422
    flash(_("Webhook added."), "ok")
    return redirect(url_for("manage.webhooks"))


@manage.get("/webhooks/<webhook_id>")
@manager_required
def webhook(webhook_id: str) -> str:
    hook = api().get(f"/api/v1/webhooks/{webhook_id}")
    deliveries = api().get(f"/api/v1/webhooks/{webhook_id}/deliveries", limit=50)["items"]
    return render_template("manage/webhook.html", hook=hook, deliveries=deliveries, tz=lab_tz(hook.get("lab_id")))


@manage.post("/webhooks/<webhook_id>/delete")
@manager_required
def delete_webhook(webhook_id: str) -> Response:
    api().delete(f"/api/v1/webhooks/{webhook_id}")
    flash(_("Webhook removed."), "ok")
    return redirect(url_for("manage.webhooks"))


@manage.post("/webhooks/<webhook_id>/enable")
@manager_required
def enable_webhook(webhook_id: str) -> Response:
    api().post(f"/api/v1/webhooks/{webhook_id}/enable")
    flash(_("Webhook enabled again."), "ok")
    return redirect(url_for("manage.webhook", webhook_id=webhook_id))


@manage.post("/webhooks/<webhook_id>/replay")
@manager_required
def replay_deliveries(webhook_id: str) -> Response:
    """Send failed deliveries again (``delivery``: one or several ids), each with a fresh retry schedule."""
    done, failed = 0, 0
    for delivery_id in request.form.getlist("delivery"):
        try:
            api().post(f"/api/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/replay")
            done += 1
        except (Refused, NotFound):
            failed += 1
    if done:
        flash(ngettext("%(num)s delivery is being sent again.", "%(num)s deliveries are being sent again.", done),
              "ok")
    if failed or not done:
        flash(_("Only failed deliveries of a webhook that is on can be sent again."), "error")
    return redirect(url_for("manage.webhook", webhook_id=webhook_id) + "#deliveries")
