"""The production login end to end: the web app, an OpenID provider on 127.0.0.1, and the API in OIDC mode.

The browser is Flask's test client at the site's public https address; it follows the redirects to the
provider (a real HTTP server, ``tests.servers.OpenIDProvider``) with ``requests``. Authlib fetches the
provider's discovery document, JWKS and token endpoint over HTTP, and the API services (not in dev mode)
verify the provider's access token against the same JWKS.
"""

from __future__ import annotations

import datetime as dt
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
import requests

from services.web.app import create_app
from services.web.sessions import COOKIE
from services.web.settings import WebSettings
from tests.conftest import sqlite_settings
from tests.harness import Stack, next_weekday, rfc
from tests.servers import OpenIDProvider

PUBLIC = "https://labshare.example.org"
CLIENT_ID = "labshare-web"
CLIENT_SECRET = "s3cret-of-the-web-app"
AUDIENCE = "labshare-api"
ADA = {"sub": "f3a1c9e2-ada", "name": "Ada Lovelace", "email": "ada@ntnu.example.org", "org": "ntnu",
       "roles": ["researcher"]}
MANAGER = {"sub": "f3a1c9e2-mgr", "name": "Mona Manager", "email": "mona@ntnu.example.org", "org": "ntnu",
           "roles": ["researcher", "manager"]}


@pytest.fixture
def provider():
    idp = OpenIDProvider(CLIENT_ID, CLIENT_SECRET, AUDIENCE)
    idp.user = ADA
    yield idp
    idp.close()


@pytest.fixture
def stack(tmp_path, provider):
    """The API services in OIDC mode: they trust the provider's tokens for ``AUDIENCE`` and nothing else."""
    settings = sqlite_settings(tmp_path).replace(dev_mode=False, oidc_issuer=provider.issuer,
                                                 oidc_audience=AUDIENCE)
    s = Stack(settings)
    yield s
    s.close()


@pytest.fixture
def api_calls(stack):
    """The API (the stack's gateway) as the web app reaches it, recording each call's Authorization header."""
    calls: list[tuple[str, str | None]] = []

    def api(environ, start_response):
        calls.append((environ["PATH_INFO"], environ.get("HTTP_AUTHORIZATION")))
        return stack.app(environ, start_response)

    api.calls = calls  # type: ignore[attr-defined]
    return api


@pytest.fixture
def web(tmp_path, provider, api_calls):
    settings = WebSettings(api_url="http://api.internal", public_url=PUBLIC, data_dir=str(tmp_path / "web"),
                           dev_mode=False, secret_key="production-key", oidc_issuer=provider.issuer,
                           oidc_client_id=CLIENT_ID, oidc_client_secret=CLIENT_SECRET)
    app = create_app(settings, api_wsgi=api_calls)
    return app.test_client()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query=urlencode({**dict(parse_qsl(parts.query)), **changes})))


def to_provider(web, next_path: str = "/") -> str:
    """Press "Log in with your organisation": where the web app sends the browser."""
    resp = web.get(f"/login/oidc?next={next_path}", base_url=PUBLIC)
    assert resp.status_code == 302
    location = resp.headers["Location"]
    assert location.startswith(web.application.extensions["labshare.web"]["settings"].oidc_issuer + "/authorize?")
    return location


def at_provider(location: str) -> str:
    """The browser at the provider, which logs the user in and sends them back with a code."""
    resp = requests.get(location, allow_redirects=False, timeout=10)
    assert resp.status_code == 302, resp.text
    back = resp.headers["Location"]
    assert back.startswith(PUBLIC + "/login/callback?"), back
    return back


def seed_booking(stack: Stack, provider: OpenIDProvider) -> dict:
    """A lab, a resource and a booking of Ada's, made through the API with the provider's tokens."""
    manager, ada = bearer(provider.access_token(**MANAGER)), bearer(provider.access_token(**ADA))
    lab = stack.post("/api/v1/labs", json={
        "name": "Cell imaging lab", "org": "ntnu", "building": "Elgeseter 10", "timezone": "Europe/Oslo",
        "managers": [{k: MANAGER[k] for k in ("sub", "name", "email")}]}, headers=manager)
    assert lab.status_code == 201, lab.get_json()
    res = stack.post("/api/v1/resources", json={
        "lab_id": lab.get_json()["id"], "name": "Zeiss LSM 980 confocal", "kind": "equipment",
        "category": "microscopy/confocal", "policy": {"slot_minutes": 15, "min_minutes": 15, "max_minutes": 480}},
        headers=manager)
    assert res.status_code == 201, res.get_json()
    resource_id = res.get_json()["id"]
    stack.eventually(lambda: stack.get(f"/api/v1/availability?resource_id={resource_id}",
                                       headers=ada).status_code == 200, what="booking to learn of the resource")
    start = next_weekday(1, 10)
    made = stack.post("/api/v1/bookings", json={"resource_id": resource_id, "start": rfc(start),
                                                "end": rfc(start + dt.timedelta(hours=2)), "title": "Live cells"},
                      headers=ada)
    assert made.status_code == 201, made.get_json()
    return made.get_json()


def test_the_api_takes_only_the_providers_tokens(stack, provider):
    assert stack.get("/api/v1/labs", headers=bearer(provider.access_token(**ADA))).status_code == 200
    for token in (provider.sign(ADA, "another-audience"), stack.token("ada")):
        assert stack.get("/api/v1/labs", headers=bearer(token)).status_code == 401


def test_login_with_the_provider_then_the_api_with_its_token(web, stack, provider, api_calls):
    booking = seed_booking(stack, provider)
    back = at_provider(to_provider(web, "/find"))

    resp = web.get(back)
    # The code was exchanged once, by the web app as its client, with the verifier of its challenge.
    [(form, status, answer)] = provider.token_requests
    assert status == 200 and form["grant_type"] == "authorization_code" and form["code_verifier"]
    assert resp.status_code == 302 and resp.headers["Location"] == "/find"
    cookie = next(h for h in resp.headers.getlist("Set-Cookie") if h.startswith(COOKIE + "="))
    assert {"Secure", "HttpOnly", "SameSite=Lax", "Path=/"} <= {p.strip() for p in cookie.split(";")}, cookie
    assert answer["access_token"] not in cookie

    page = web.get("/", base_url=PUBLIC)
    assert page.status_code == 200, page.get_data(as_text=True)
    html = page.get_data(as_text=True)
    assert "Hello, Ada Lovelace" in html
    # The booking the API keeps for the provider's "sub" (mine=true), with its resource's name.
    upcoming = re.search(r'<ul class="bookings" id="upcoming">.*?</ul>', html, re.S).group(0)
    assert f'/bookings/{booking["id"]}' in upcoming and "Zeiss LSM 980 confocal" in upcoming
    assert "Live cells" in upcoming
    # Every call of the web app to the API carried the provider's access token.
    assert api_calls.calls and {auth for _path, auth in api_calls.calls} == {f"Bearer {answer['access_token']}"}

    assert web.get("/find", base_url=PUBLIC).status_code == 200


def test_a_wrong_state_ends_on_the_login_page(web, provider):
    back = at_provider(to_provider(web, "/find"))
    resp = web.get(with_query(back, state="forged"))
    assert resp.status_code == 302 and urlsplit(resp.headers["Location"]).path == "/login"
    page = web.get(resp.headers["Location"], base_url=PUBLIC).get_data(as_text=True)
    assert "The login did not succeed. Please try again." in page
    assert provider.token_requests == [], "a forged state never reaches the token endpoint"
    assert web.get("/", base_url=PUBLIC).headers["Location"].startswith("/login")


def test_a_code_for_another_challenge_is_refused(web, provider):
    # The code is issued for a challenge the web app did not make (an injected code): its verifier fails.
    location = to_provider(web)
    back = at_provider(with_query(location, code_challenge="E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"))
    resp = web.get(back)
    [(form, status, answer)] = provider.token_requests
    assert status == 400 and answer["error"] == "invalid_grant" and form["code_verifier"]
    assert resp.status_code == 302 and urlsplit(resp.headers["Location"]).path == "/login"
    page = web.get(resp.headers["Location"], base_url=PUBLIC).get_data(as_text=True)
    assert "The login did not succeed. Please try again." in page
    assert web.get("/", base_url=PUBLIC).headers["Location"].startswith("/login")


def test_an_id_token_for_another_login_is_refused(web, provider):
    provider.id_token_extra = {"nonce": "of-another-login"}
    resp = web.get(at_provider(to_provider(web)))
    assert [status for _form, status, _answer in provider.token_requests] == [200]
    assert resp.status_code == 302 and urlsplit(resp.headers["Location"]).path == "/login"
    assert web.get("/", base_url=PUBLIC).headers["Location"].startswith("/login")


def test_the_provider_saying_no_ends_on_the_login_page(web, provider):
    location = to_provider(web)
    state = dict(parse_qsl(urlsplit(location).query))["state"]
    norwegian = {"Accept-Language": "nb"}
    resp = web.get(f"{PUBLIC}/login/callback?error=access_denied&state={state}", headers=norwegian)
    assert resp.status_code == 302 and urlsplit(resp.headers["Location"]).path == "/login"
    page = web.get(resp.headers["Location"], base_url=PUBLIC, headers=norwegian)
    assert "Innloggingen lyktes ikke. Prøv igjen." in page.get_data(as_text=True)


def test_logged_out_users_are_sent_to_the_login(web, provider):
    assert web.get("/find", base_url=PUBLIC).headers["Location"] == "/login?next=/find"
    web.get(at_provider(to_provider(web)))
    home = web.get("/", base_url=PUBLIC)
    assert home.status_code == 200
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', home.get_data(as_text=True)).group(1)
    out = web.post("/logout", data={"csrf_token": csrf}, base_url=PUBLIC)
    assert out.status_code == 302 and out.headers["Location"] == "/login"
    assert web.get("/", base_url=PUBLIC).headers["Location"].startswith("/login")
    assert "Log in with your organisation" in web.get("/login", base_url=PUBLIC).get_data(as_text=True)
