"""The web app's views through Flask's test client, against a stub of the API (a WSGI app in this process).

The stub answers as the API's contract says, including its refusals, so these
tests pin how each answer is shown: CSRF refusals, the language choice, and
every refusal as a sentence next to its field.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po
from flask import Flask, Response, request

from services.web import views
from services.web.app import create_app
from services.web.sessions import COOKIE
from services.web.settings import WebSettings

LAB = {"id": "lab-1", "name": "Cell imaging lab", "org": "ntnu", "building": "Elgeseter 10",
       "timezone": "Europe/Oslo", "managers": [{"sub": "imaging-manager", "name": "M", "email": "m@x"}]}
POLICY = {"slot_minutes": 15, "min_minutes": 30, "max_minutes": 240, "lead_minutes": 0, "horizon_days": 60,
          "buffer_minutes": 15, "requires_approval": False, "requires_qualification": True,
          "opening_hours": {d: [["07:00", "22:00"]] for d in ("mon", "tue", "wed", "thu", "fri")},
          "max_hours_per_week": None, "checkin_required": False, "checkin_grace_minutes": 15}
RESOURCE = {"id": "res-1", "lab_id": "lab-1", "name": "Zeiss LSM 980 confocal", "kind": "equipment",
            "category": "microscopy/confocal", "description": "", "status": "active", "policy": POLICY,
            "rates": {"internal": 450, "external": 1200, "currency": "NOK"}}
WEB_DIR = Path(__file__).resolve().parents[2] / "services" / "web"
USAGE = [
    {"resource_id": "res-1", "resource_name": "Zeiss LSM 980 confocal", "org": "ntnu", "project": "NFR-1",
     "bookings": 2, "hours": 3.0, "rate": 450, "amount": 1350.0, "currency": "NOK"},
    {"resource_id": "res-1", "resource_name": "Zeiss LSM 980 confocal", "org": "pulsetech", "project": "",
     "bookings": 1, "hours": 1.5, "rate": 1200, "amount": 1800.0, "currency": "NOK"},
    {"resource_id": "res-2", "resource_name": "Leica Stellaris 8 confocal", "org": "ntnu", "project": "NFR-1",
     "bookings": 1, "hours": 6.0, "rate": 400, "amount": 2400.0, "currency": "NOK"},
]
UTILISATION = [
    {"resource_id": "res-1", "resource_name": "Zeiss LSM 980 confocal", "status": "active", "open_hours": 15.0,
     "booked_hours": 4.5, "no_show_hours": 0.0, "utilisation": 0.3},
    {"resource_id": "res-2", "resource_name": "Leica Stellaris 8 confocal", "status": "active", "open_hours": 15.0,
     "booked_hours": 6.0, "no_show_hours": 1.0, "utilisation": 0.4},
    {"resource_id": "res-3", "resource_name": "BD FACSymphony A5 flow cytometer", "status": "active",
     "open_hours": 0.0, "booked_hours": 0.0, "no_show_hours": 0.0, "utilisation": None},
]


def problem(status: int, **extra) -> Response:
    body = {"type": "about:blank", "title": "t", "status": status, "detail": "raw API text", **extra}
    return Response(json.dumps(body), status=status, mimetype="application/problem+json")


def stub_api() -> Flask:
    """Just enough of the API; a booking's title chooses the answer."""
    api = Flask("stub-api")
    api.config["calls"] = []

    def ok(body, status=200):
        return Response(json.dumps(body), status=status, mimetype="application/json")

    @api.before_request
    def _record():
        api.config["calls"].append((request.method, request.path, request.headers.get("Authorization")))
        api.config.setdefault("forwarded_for", []).append(request.headers.get("X-Forwarded-For"))

    @api.post("/api/v1/dev/token")
    def token():
        return ok({"token": "token-of-" + request.get_json()["sub"]}, 201)

    @api.get("/api/v1/labs")
    def labs():
        return ok({"items": [LAB], "next": None})

    @api.get("/api/v1/labs/<lab_id>")
    def lab(lab_id):
        return ok(LAB)

    @api.get("/api/v1/resources")
    def resources():
        return ok({"items": [RESOURCE], "next": None})

    @api.get("/api/v1/resources/<resource_id>")
    def resource(resource_id):
        return ok(RESOURCE) if resource_id == "res-1" else problem(404)

    @api.get("/api/v1/bookings")
    def bookings():
        return ok({"items": list(api.config.get("series", {}).values()), "next": None})

    @api.get("/api/v1/bookings/<booking_id>")
    def booking(booking_id):
        found = api.config.get("series", {}).get(booking_id)
        return ok({**found, "occurrences": list(api.config["series"])}) if found else problem(404)

    @api.post("/api/v1/bookings/<booking_id>/cancel")
    def cancel(booking_id):
        api.config["sent"] = request.get_json()
        return ok({**api.config["series"][booking_id], "status": "cancelled", "cancelled": [booking_id, "s-4"]})

    @api.patch("/api/v1/bookings/<booking_id>")
    def change(booking_id):
        api.config["sent"] = request.get_json()
        return ok({**api.config["series"][booking_id], "updated": [booking_id, "s-4"]})

    @api.get("/api/v1/openapi/booking.json")
    def openapi():
        return ok({"paths": {}})

    @api.post("/api/v1/bookings")
    def book():
        body = request.get_json()
        if body["title"] == "clash":
            return problem(409, conflicts=[{"start": "2030-01-07T09:00:00Z", "end": "2030-01-07T11:00:00Z"}])
        if body["title"] == "rules":
            return problem(422, violations=[{"rule": "max_minutes", "message": "raw"},
                                            {"rule": "qualification", "message": "raw"}])
        if body["title"] == "expired":
            return problem(401)
        return ok({**body, "id": "b-1", "status": "confirmed", "user": {"sub": "ada"}}, 201)

    @api.get("/api/v1/waitlist")
    def waitlist():
        return ok({"items": api.config.get("waiting", []), "next": None})

    @api.post("/api/v1/waitlist")
    def join_waitlist():
        body = request.get_json()
        if body["title"] == "free":
            return problem(409, type="https://labshare.example/problems/time-is-free")
        if body["title"] == "again":
            return problem(409, type="https://labshare.example/problems/invalid-state", waitlist_id="w-1")
        entry = {**body, "id": "w-1", "lab_id": "lab-1", "resource_name": RESOURCE["name"], "status": "waiting",
                 "position": 2, "lab": {"id": "lab-1", "timezone": "Europe/Oslo"}}
        api.config["waiting"] = [entry]
        return ok(entry, 201)

    @api.delete("/api/v1/waitlist/<entry_id>")
    def leave_waitlist(entry_id):
        api.config["waiting"] = []
        return Response(status=204)

    @api.get("/api/v1/webhooks/<webhook_id>")
    def webhook(webhook_id):
        return ok({"id": webhook_id, "url": "https://hooks.example.org/in", "events": ["booking.*"],
                   "enabled": api.config.get("hook_on", False), "disabled_at": "2030-01-07T08:00:00Z"})

    @api.get("/api/v1/webhooks/<webhook_id>/deliveries")
    def deliveries(webhook_id):
        return ok({"items": [
            {"id": f"d-{n}", "event_type": "booking.created", "status": status, "attempts": 3,
             "created_at": "2030-01-07T08:00:00Z", "last_status_code": 500, "last_error": "HTTP 500"}
            for n, status in enumerate(("dead", "sent", "dead"))], "next": None})

    @api.post("/api/v1/webhooks/<webhook_id>/enable")
    def enable(webhook_id):
        api.config["hook_on"] = True
        return ok({"id": webhook_id, "enabled": True})

    @api.post("/api/v1/webhooks/<webhook_id>/deliveries/<delivery_id>/replay")
    def replay(webhook_id, delivery_id):
        if not api.config.get("hook_on"):
            return problem(409)
        api.config.setdefault("replayed", []).append(delivery_id)
        return ok({"id": delivery_id, "status": "pending"})

    @api.get("/api/v1/usage")
    def usage():
        api.config["usage_args"] = dict(request.args)
        if request.args.get("format") == "csv":
            return Response("resource_id,resource_name,org\r\nres-1,Zeiss LSM 980 confocal,ntnu\r\n",
                            mimetype="text/csv")
        return ok({"items": USAGE, "next": None})

    @api.get("/api/v1/utilisation")
    def utilisation():
        return ok({"lab_id": "lab-1", "items": UTILISATION, "next": None})

    return api


@pytest.fixture
def api():
    return stub_api()


@pytest.fixture
def app(tmp_path, api):
    settings = WebSettings(api_url="http://api.test", public_url="http://labshare.test", data_dir=str(tmp_path),
                           dev_mode=True, secret_key="test-key")
    app = create_app(settings, api_wsgi=api)
    app.testing = True
    return app


@pytest.fixture
def client(app):
    return app.test_client()


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def log_in(client, user: str = "ada") -> None:
    page = client.get("/login").get_data(as_text=True)
    resp = client.post("/login/dev", data={"csrf_token": csrf_of(page), "user": user, "next": "/"})
    assert resp.status_code == 302, resp.get_data(as_text=True)


def book(client, title: str, minutes: int = 60):
    page = client.get("/resources/res-1/book").get_data(as_text=True)
    return client.post("/resources/res-1/book", data={
        "csrf_token": csrf_of(page), "date": "2030-01-07", "time": "09:00", "minutes": str(minutes),
        "title": title, "project": ""})


def test_pages_need_a_login(client):
    resp = client.get("/find")
    assert resp.status_code == 302 and resp.headers["Location"].startswith("/login?next=/find")


def test_a_form_without_its_csrf_token_is_refused(client, api):
    log_in(client)
    calls = len(api.config["calls"])
    resp = client.post("/resources/res-1/book", data={"date": "2030-01-07", "time": "09:00", "minutes": "60"})
    assert resp.status_code == 400
    assert "did not come from this site" in resp.get_data(as_text=True)
    assert len(api.config["calls"]) == calls, "nothing reached the API"
    resp = client.post("/resources/res-1/book", data={"csrf_token": "forged", "date": "2030-01-07"})
    assert resp.status_code == 400


def test_dev_login_keeps_the_token_on_the_server(client, app, api, tmp_path):
    log_in(client, "ada")
    cookie = client.get_cookie(COOKIE)
    assert cookie is not None and cookie.http_only and cookie.same_site == "Lax"
    assert "token-of-ada" not in cookie.value
    stored = "".join(p.read_text() for p in (tmp_path / "web-sessions").glob("*.json"))
    assert "token-of-ada" in stored
    client.get("/find")
    assert ("GET", "/api/v1/resources", "Bearer token-of-ada") in api.config["calls"]


def test_secure_cookies_behind_https(tmp_path, api):
    settings = WebSettings(api_url="http://api.test", public_url="https://labshare.example.org",
                           data_dir=str(tmp_path), dev_mode=True, secret_key="k")
    client = create_app(settings, api_wsgi=api).test_client()
    client.get("/login")
    assert client.get_cookie(COOKIE).secure


def test_dev_login_is_absent_outside_development_mode(tmp_path, api):
    settings = WebSettings(api_url="http://api.test", public_url="http://x", data_dir=str(tmp_path),
                           dev_mode=False, secret_key="k")
    client = create_app(settings, api_wsgi=api).test_client()
    page = client.get("/login").get_data(as_text=True)
    assert "Ada Researcher" not in page
    assert client.post("/login/dev", data={"csrf_token": csrf_of(page), "user": "ada"}).status_code == 404


def test_language_from_the_browser_and_from_the_switch(client):
    log_in(client)
    assert "Finn og book" in client.get("/find", headers={"Accept-Language": "nb-NO,nb;q=0.9"}).get_data(
        as_text=True)
    assert "Finn og book" in client.get("/find", headers={"Accept-Language": "no"}).get_data(as_text=True)
    page = client.get("/find", headers={"Accept-Language": "en-GB"}).get_data(as_text=True)
    assert "Find and book" in page and 'lang="en"' in page
    resp = client.post("/language", data={"csrf_token": csrf_of(page), "lang": "nb", "next": "/find"})
    assert resp.status_code == 302 and resp.headers["Location"] == "/find"
    page = client.get("/find", headers={"Accept-Language": "en-GB"}).get_data(as_text=True)
    assert "Finn og book" in page and 'lang="nb"' in page
    # Only local paths are followed after the switch.
    resp = client.post("/language", data={"csrf_token": csrf_of(page), "lang": "en",
                                          "next": "https://evil.example/"})
    assert resp.headers["Location"] == "/"


def test_a_broken_rule_is_a_sentence_next_to_its_field(client):
    log_in(client)
    resp = book(client, "rules", 300)
    page = resp.get_data(as_text=True)
    assert resp.status_code == 422
    assert "A booking may last at most 4 hours." in page
    assert "Only trained users may book Zeiss LSM 980 confocal." in page
    assert 'id="duration-error"' in page
    assert "raw" not in page


def test_a_clash_lists_the_busy_time_on_the_lab_clock(client):
    log_in(client)
    page = book(client, "clash").get_data(as_text=True)
    assert "That time is taken: Mon, 7 Jan 2030, 10:00–12:00." in page  # 09:00Z is 10:00 in Oslo
    assert 'id="when-error"' in page


def test_refusals_in_norwegian(client):
    log_in(client)
    client.set_cookie("labshare_lang", "nb")
    page = book(client, "rules", 300).get_data(as_text=True)
    assert "En booking kan vare høyst 4 timer." in page
    assert "Bare brukere med opplæring kan booke Zeiss LSM 980 confocal." in page


def test_an_expired_login_goes_back_to_the_login_page(client):
    log_in(client)
    resp = book(client, "expired")
    assert resp.status_code == 302 and resp.headers["Location"].startswith("/login")
    assert client.get("/").status_code == 302


def test_a_booking_goes_to_its_page(client):
    log_in(client)
    resp = book(client, "fine")
    assert resp.status_code == 302 and resp.headers["Location"] == "/bookings/b-1"


def test_an_unknown_resource_is_a_page_not_a_trace(client):
    log_in(client)
    resp = client.get("/resources/nope")
    assert resp.status_code == 404
    assert "That no longer exists." in resp.get_data(as_text=True)


def test_security_headers(client):
    resp = client.get("/login")
    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["Cache-Control"] == "no-store"


def test_the_dev_users_are_the_demo_users():
    from services import demo

    assert views.DEV_USERS == demo.USERS


def test_the_compiled_catalogue_matches_its_source():
    po = read_po((WEB_DIR / "translations/nb/LC_MESSAGES/messages.po").open("rb"))
    mo = read_mo((WEB_DIR / "translations/nb/LC_MESSAGES/messages.mo").open("rb"))
    def key(value):
        return tuple(value) if isinstance(value, list | tuple) else value

    source = {key(m.id): key(m.string) for m in po if m.id}
    compiled = {key(m.id): key(m.string) for m in mo if m.id}
    assert source == compiled, "run: pybabel compile -d services/web/translations"
    assert all(source.values()), "every message is translated"
    template = read_po((WEB_DIR / "translations/messages.pot").open("rb"))
    assert {key(m.id) for m in template if m.id} == set(source), "extract and update the catalogue (README)"


def test_week_cells():
    from zoneinfo import ZoneInfo

    from services.web.week import build_week

    tz = ZoneInfo("Europe/Oslo")
    monday = dt.date(2030, 1, 7)
    availability = {
        "busy": [{"start": "2030-01-07T08:00:00Z", "end": "2030-01-07T09:00:00Z"}],
        "free": [{"start": "2030-01-07T09:15:00Z", "end": "2030-01-07T21:00:00Z"}],
        "outages": [{"start": "2030-01-08T10:00:00Z", "end": "2030-01-08T11:00:00Z"}],
    }
    days, labels = build_week(monday, tz, POLICY, availability, dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    assert labels[0] == "07:00" and labels[-1] == "21:30" and len(days) == 7
    monday_cells = {c.start.strftime("%H:%M"): c.state for c in days[0].cells}
    assert monday_cells["09:00"] == "busy" and monday_cells["09:30"] == "busy"
    assert monday_cells["10:00"] == "buffer"  # the 15-minute buffer after the booking
    assert monday_cells["10:30"] == "free"
    assert {c.state for c in days[5].cells} == {"closed"}
    assert {c.start.strftime("%H:%M"): c.state for c in days[1].cells}["11:00"] == "outage"


def test_api_calls_name_the_address_the_gateway_gave_the_user(client, api):
    """The gateway (a trusted peer) appends the browser's address to X-Forwarded-For: the API calls name that one.

    Whatever the browser itself put in front of it is not believed, or anyone could pick an allowance.
    """
    log_in(client)
    assert api.config["forwarded_for"] == ["127.0.0.1"], "the development login's token call too"
    api.config["forwarded_for"].clear()
    resp = client.get("/find", headers={"X-Forwarded-For": "203.0.113.66, 198.51.100.7"})
    assert resp.status_code == 200
    assert api.config["forwarded_for"] and set(api.config["forwarded_for"]) == {"198.51.100.7"}


def test_a_forwarded_address_from_anyone_but_a_trusted_proxy_is_ignored(tmp_path, api):
    settings = WebSettings(api_url="http://api.test", public_url="http://labshare.test", data_dir=str(tmp_path),
                           dev_mode=True, secret_key="k", forwarded_allow_ips=("10.0.0.0/8",))
    client = create_app(settings, api_wsgi=api).test_client()
    log_in(client)
    api.config["forwarded_for"].clear()
    spoofed = {"X-Forwarded-For": "203.0.113.66"}
    client.get("/find", headers=spoofed, environ_base={"REMOTE_ADDR": "192.0.2.50"})
    assert set(api.config["forwarded_for"]) == {"192.0.2.50"}, "a peer outside the trusted network speaks for itself"
    api.config["forwarded_for"].clear()
    client.get("/find", headers=spoofed, environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert set(api.config["forwarded_for"]) == {"203.0.113.66"}


def test_trusted_proxies_are_gunicorns_forwarded_allow_ips(tmp_path):
    env = {"LABSHARE_DATA_DIR": str(tmp_path), "LABSHARE_DEV_MODE": "1"}
    assert WebSettings.from_env(env=env).forwarded_allow_ips == ("127.0.0.1", "::1")
    allowed = WebSettings.from_env(env={**env, "LABSHARE_FORWARDED_ALLOW_IPS": " 10.0.0.0/8, 172.18.0.5 "})
    assert allowed.forwarded_allow_ips == ("10.0.0.0/8", "172.18.0.5")
    assert WebSettings.from_env(env={**env, "LABSHARE_FORWARDED_ALLOW_IPS": "*"}).forwarded_allow_ips == ("*",)


def test_production_login_is_oidc_with_pkce(tmp_path, api):
    settings = WebSettings(api_url="http://api.test", public_url="https://labshare.example.org",
                           data_dir=str(tmp_path), dev_mode=False, secret_key="k",
                           oidc_issuer="https://idp.example.org/realms/arena", oidc_client_id="labshare-web",
                           oidc_client_secret="s3cret")
    app = create_app(settings, api_wsgi=api)
    # The provider's discovery document, as if fetched already.
    app.extensions["labshare.web"]["oauth"].oidc.server_metadata.update({
        "_loaded_at": 1, "issuer": "https://idp.example.org/realms/arena",
        "authorization_endpoint": "https://idp.example.org/realms/arena/auth",
        "token_endpoint": "https://idp.example.org/realms/arena/token",
    })
    client = app.test_client()
    assert "Log in with your organisation" in client.get("/login").get_data(as_text=True)
    resp = client.get("/login/oidc?next=/find")
    assert resp.status_code == 302
    location = resp.headers["Location"]
    assert location.startswith("https://idp.example.org/realms/arena/auth?")
    for part in ("response_type=code", "client_id=labshare-web", "code_challenge=", "code_challenge_method=S256",
                 "redirect_uri=https%3A%2F%2Flabshare.example.org%2Flogin%2Fcallback", "state="):
        assert part in location, location


def _bars(page: str, chart: str) -> list[tuple[str, float, str]]:
    """(label, bar width, value text) of each bar of one chart of a page."""
    svg = re.search(rf'<svg class="chart" id="{chart}".*?</svg>', page, re.S).group(0)
    return [(label, float(width), text) for label, width, text in re.findall(
        r'<text class="label"[^>]*>([^<]*)</text>\s*<rect [^>]*width="([^"]+)"[^>]*></rect>\s*'
        r'<text class="value"[^>]*>([^<]*)</text>', svg)]


def test_usage_charts_and_tables_for_a_period(client, api):
    log_in(client, "imaging-manager")
    resp = client.get("/manage/usage?lab=lab-1&from=2030-01-07&to=2030-01-13")
    page = resp.get_data(as_text=True)
    assert resp.status_code == 200, page
    # The period is the lab's days, the last one included.
    assert api.config["usage_args"] == {"lab_id": "lab-1", "from": "2030-01-07T00:00:00+01:00",
                                        "to": "2030-01-14T00:00:00+01:00"}
    bars = _bars(page, "usage-chart")
    assert [(label, text) for label, _w, text in bars] == [("Leica Stellaris 8 confocal", "6 hrs"),
                                                          ("Zeiss LSM 980 confocal", "4.5 hrs"),
                                                          ("BD FACSymphony A5 flow cytometer", "0 hrs")]
    assert bars[1][1] == pytest.approx(bars[0][1] * 4.5 / 6) and bars[2][1] == 0
    assert '<title id="usage-chart-title">Hours booked per instrument, 7\u2009–\u200913 Jan 2030</title>' in page
    assert "Leica Stellaris 8 confocal: 6 hrs; Zeiss LSM 980 confocal: 4.5 hrs;" in page
    assert 'aria-labelledby="usage-chart-title usage-chart-desc"' in page
    assert re.search(r"<th scope=\"row\">Zeiss LSM 980 confocal</th><td>3</td><td>4.5 hrs</td><td>NOK3,150.00</td>",
                     page)
    util = _bars(page, "util-chart")
    assert [(label, text) for label, _w, text in util] == [("Leica Stellaris 8 confocal", "40%"),
                                                          ("Zeiss LSM 980 confocal", "30%"),
                                                          ("BD FACSymphony A5 flow cytometer", "–")]
    assert util[0][1] == pytest.approx(392 * 0.4)  # the scale is 0–100 %
    assert 'href="/manage/usage.csv?lab=lab-1&amp;from=2030-01-07&amp;to=2030-01-13"' in page

    page = client.get("/manage/usage?lab=lab-1&from=2030-01-07&to=2030-01-13&by=org").get_data(as_text=True)
    assert [(label, text) for label, _w, text in _bars(page, "usage-chart")] == [("ntnu", "9 hrs"),
                                                                               ("pulsetech", "1.5 hrs")]
    page = client.get("/manage/usage?lab=lab-1&from=2030-01-07&to=2030-01-13&by=project",
                      headers={"Accept-Language": "nb"}).get_data(as_text=True)
    assert [(label, text) for label, _w, text in _bars(page, "usage-chart")] == [("NFR-1", "9 t"),
                                                                               ("Uten prosjekt", "1,5 t")]


def test_usage_refuses_a_bad_period_next_to_its_field(client, api):
    log_in(client, "imaging-manager")
    resp = client.get("/manage/usage?lab=lab-1&from=2030-01-13&to=2030-01-07")
    page = resp.get_data(as_text=True)
    assert resp.status_code == 422
    assert '<p class="refusal" id="to-error">The last day must be on or after the first day.</p>' in page
    assert 'id="to" name="to" type="date" value="2030-01-07" aria-invalid="true"' in page
    assert "usage_args" not in api.config, "nothing was asked of the API"
    page = client.get("/manage/usage?lab=lab-1&from=7.1.2030&to=2031-01-31").get_data(as_text=True)
    assert 'id="from-error">Please give a date, like' in page
    page = client.get("/manage/usage?lab=lab-1&from=2030-01-01&to=2031-01-31").get_data(as_text=True)
    assert 'id="to-error">Choose at most 366 days.' in page
    assert client.get("/manage/usage?lab=lab-9&from=2030-01-01&to=2030-01-31").status_code == 422


def test_usage_csv_is_the_apis_with_the_managers_token(client, api):
    log_in(client, "imaging-manager")
    resp = client.get("/manage/usage.csv?lab=lab-1&from=2030-01-07&to=2030-01-13")
    assert resp.status_code == 200
    assert resp.mimetype == "text/csv"
    assert resp.headers["Content-Disposition"] == (
        'attachment; filename="usage-cell-imaging-lab-2030-01-07-2030-01-13.csv"')
    assert resp.get_data(as_text=True).startswith("resource_id,resource_name,org\r\n")
    assert api.config["usage_args"]["format"] == "csv"
    assert ("GET", "/api/v1/usage", "Bearer token-of-imaging-manager") in api.config["calls"]
    resp = client.get("/manage/usage.csv?lab=lab-1&from=2030-01-13&to=2030-01-07")
    assert resp.status_code == 302 and resp.headers["Location"].startswith("/manage/usage?")


def test_usage_is_for_managers(client):
    log_in(client, "ada")
    assert client.get("/manage/usage").status_code == 403


def test_chart_scales_end_on_a_round_number():
    from services.web.charts import bar_chart, nice_scale

    assert [nice_scale(v) for v in (0, 0.3, 1, 4, 6, 7.5, 11, 240)] == [
        (1, 1), (pytest.approx(0.3), 3), (1, 2), (4, 4), (6, 3), (8, 4), (15, 3), (300, 3)]
    chart = bar_chart([("a", 6, "6"), ("b", 3, "3"), ("c", 0, "0")], str)
    assert [t.text for t in chart.ticks] == ["0.0", "2.0", "4.0", "6.0"]
    assert [b.width for b in chart.bars] == [chart.plot_width, chart.plot_width / 2, 0]
    assert chart.height > chart.bars[2].y
    percent = bar_chart([("a", 0.2, "20%")], str, scale_max=1.0)
    assert [t.text for t in percent.ticks] == ["0.0", "0.25", "0.5", "0.75", "1.0"]


def test_a_taken_time_offers_the_waitlist_and_home_shows_the_place(client, api):
    log_in(client)
    page = book(client, "rules", 300).get_data(as_text=True)
    assert "Join the waitlist" not in page, "a broken rule is not a reason to wait"
    page = book(client, "clash").get_data(as_text=True)
    assert "That time is taken" in page and 'form="waitlist-form">Join the waitlist</button>' in page
    hidden = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">',
                             page[page.index('id="waitlist-form"'):]))
    assert hidden["resource_id"] == "res-1" and hidden["title"] == "clash"
    assert hidden["start"] == "2030-01-07T09:00:00+01:00" and hidden["end"] == "2030-01-07T10:00:00+01:00"
    resp = client.post("/waitlist", data={**hidden, "title": "Imaging"})
    assert resp.status_code == 302 and resp.headers["Location"] == "/#waitlist"
    page = client.get("/").get_data(as_text=True)
    assert "You are number 2 on the waitlist for Zeiss LSM 980 confocal, Mon, 7 Jan 2030, 09:00–10:00." in page
    waiting = page[page.index('id="waiting"'):]
    assert "Mon, 7 Jan 2030, 09:00–10:00" in waiting and "Number 2 in the queue" in waiting
    resp = client.post("/waitlist/w-1/leave", data={"csrf_token": csrf_of(page)})
    assert ("DELETE", "/api/v1/waitlist/w-1", "Bearer token-of-ada") in api.config["calls"]
    page = client.get(resp.headers["Location"]).get_data(as_text=True)
    assert "You have left the waitlist." in page and 'id="waiting"' not in page


def test_joining_the_waitlist_of_a_time_that_freed_up_goes_back_to_booking(client):
    log_in(client)
    page = book(client, "clash").get_data(as_text=True)
    resp = client.post("/waitlist", data={"csrf_token": csrf_of(page), "resource_id": "res-1", "title": "free",
                                          "start": "2030-01-07T09:00:00+01:00", "end": "2030-01-07T10:00:00+01:00"})
    assert resp.headers["Location"].startswith("/resources/res-1/book?start=2030-01-07T09")
    page = client.get(resp.headers["Location"]).get_data(as_text=True)
    assert "That time has just become free: book it now." in page
    assert 'value="2030-01-07"' in page and 'value="09:00"' in page
    resp = client.post("/waitlist", data={"csrf_token": csrf_of(page), "resource_id": "res-1", "title": "again",
                                          "start": "2030-01-07T09:00:00+01:00", "end": "2030-01-07T10:00:00+01:00"})
    assert "You are already on the waitlist for this time." in client.get(resp.headers["Location"]).get_data(
        as_text=True)


def series_of_four(api) -> None:
    """Ada's weekly series of four on Mondays 2030-01-07 to 2030-01-28, 09:00-10:00 in Oslo."""
    api.config["series"] = {
        f"s-{n + 1}": {"id": f"s-{n + 1}", "resource_id": "res-1", "lab_id": "lab-1", "series_id": "series-1",
                       "start": f"2030-01-{7 + 7 * n:02d}T08:00:00Z", "end": f"2030-01-{7 + 7 * n:02d}T09:00:00Z",
                       "status": "confirmed", "title": "Imaging", "project": "", "user": {"sub": "ada"},
                       "lab": {"id": "lab-1", "timezone": "Europe/Oslo"}}
        for n in range(4)
    }


def test_a_series_booking_is_cancelled_or_moved_with_a_scope(client, api):
    series_of_four(api)
    log_in(client)
    page = client.get("/bookings/s-3").get_data(as_text=True)
    assert "Part of a series of 4 bookings" in page
    assert page.count('name="scope" value="following"') == 2, "both the move and the cancel ask"
    listed = re.findall(r'<a href="/bookings/(s-\d)"><span class="when">([^<]+)</span>', page)
    assert listed == [("s-1", "Mon, 7 Jan 2030, 09:00–10:00"), ("s-2", "Mon, 14 Jan 2030, 09:00–10:00"),
                      ("s-3", "Mon, 21 Jan 2030, 09:00–10:00"), ("s-4", "Mon, 28 Jan 2030, 09:00–10:00")]
    assert '<li aria-current="true" class="current">\n      <a href="/bookings/s-3">' in page

    resp = client.post("/bookings/s-3/cancel", data={"csrf_token": csrf_of(page), "scope": "following"})
    assert api.config["sent"] == {"reason": None, "scope": "following"}
    assert "Cancelled 2 bookings of the series." in client.get(resp.headers["Location"]).get_data(as_text=True)

    client.post("/bookings/s-3/move", data={"csrf_token": csrf_of(page), "scope": "all", "date": "2030-01-22",
                                            "time": "10:00", "minutes": "60", "title": "Imaging"})
    assert api.config["sent"]["scope"] == "all" and api.config["sent"]["start"] == "2030-01-22T10:00:00+01:00"
    assert "Changed 2 bookings of the series." in client.get("/bookings/s-3").get_data(as_text=True)

    client.post("/bookings/s-3/move", data={"csrf_token": csrf_of(page), "scope": "nonsense", "date": "2030-01-22",
                                            "time": "10:00", "minutes": "60"})
    assert "scope" not in api.config["sent"], "only the API's scopes are sent"


def test_a_disabled_webhook_is_turned_on_again_and_its_failed_deliveries_sent_again(client, api):
    log_in(client, "imaging-manager")
    page = client.get("/manage/webhooks/h-1").get_data(as_text=True)
    assert "Off (failed)" in page and "Turn it on again" in page
    assert "Send again" not in page, "a disabled webhook's deliveries wait until it is on"
    client.post("/manage/webhooks/h-1/enable", data={"csrf_token": csrf_of(page)})
    page = client.get("/manage/webhooks/h-1").get_data(as_text=True)
    assert "Webhook enabled again." in page and "Turn it on again" not in page
    assert page.count(">Failed</span>") == 2 and ">Delivered</span>" in page and "HTTP 500" in page
    client.post("/manage/webhooks/h-1/replay", data={"csrf_token": csrf_of(page), "delivery": "d-2"})
    assert api.config["replayed"] == ["d-2"]
    assert "Send the 2 failed deliveries again" in page
    resp = client.post("/manage/webhooks/h-1/replay", data={"csrf_token": csrf_of(page), "delivery": ["d-0", "d-2"]})
    assert api.config["replayed"] == ["d-2", "d-0", "d-2"]
    assert "2 deliveries are being sent again." in client.get(resp.headers["Location"]).get_data(as_text=True)
