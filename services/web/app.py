"""``create_app(settings=None)``: the web app (``gunicorn 'services.web.app:create_app()'``)."""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Callable, Iterable
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import requests
from flask import Flask, Response, abort, g, render_template, request, session
from flask_babel import Babel
from flask_babel import gettext as _
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from services.web import i18n
from services.web.client import ApiError, NotAuthenticated, WSGIAdapter
from services.web.sessions import FileSessions
from services.web.settings import WebSettings

log = logging.getLogger("labshare.web")
HERE = Path(__file__).resolve().parent
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"


def csrf_token() -> str:
    """This session's CSRF token (made on first use); every form carries it."""
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def _check_csrf() -> None:
    if request.method not in UNSAFE:
        return
    expected = session.get("csrf")
    sent = request.form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or ""
    if not expected or not hmac.compare_digest(str(expected), sent):
        abort(400, description="csrf")


class ClientAddress:
    """WSGI middleware: the user's address is the one the gateway names, never one the browser made up.

    On a request from a trusted proxy (``forwarded_allow_ips``: the gateway) ``REMOTE_ADDR`` becomes
    the last X-Forwarded-For entry, the one the gateway appended (the address it decided is the
    client's); entries before it came from the browser and are not believed. Any other peer's
    X-Forwarded-For is ignored. The API client names this address in its calls, so the gateway
    counts them against the user's own allowance.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]], trusted: Iterable[str]) -> None:
        self.app = app
        self.via_proxy = ProxyFix(app, x_for=1, x_proto=0)
        trusted = list(trusted)
        self.any_peer = "*" in trusted
        self.networks = [ip_network(t, strict=False) for t in trusted if t != "*"]

    def trusts(self, peer: str | None) -> bool:
        """Whether ``peer`` (an address) is a proxy whose X-Forwarded-For is believed."""
        if self.any_peer:
            return True
        try:
            address = ip_address(peer or "")
        except ValueError:
            return False
        return any(address in network for network in self.networks)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        app = self.via_proxy if self.trusts(environ.get("REMOTE_ADDR")) else self.app
        return app(environ, start_response)


def create_app(settings: WebSettings | None = None,
               api_wsgi: Callable[..., Iterable[bytes]] | None = None) -> Flask:
    """The web app; ``api_wsgi`` mounts the API's WSGI app in-process (the all-in-one development server)."""
    settings = settings or WebSettings.from_env()
    app = Flask("labshare.web", template_folder=str(HERE / "templates"), static_folder=str(HERE / "static"),
                static_url_path="/static")
    app.config.update(
        SECRET_KEY=settings.secret_key,
        SESSION_COOKIE_SECURE=settings.secure_cookies,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        MAX_CONTENT_LENGTH=1024 * 1024,
        BABEL_TRANSLATION_DIRECTORIES=str(HERE / "translations"),
        BABEL_DEFAULT_LOCALE="en",
        SEND_FILE_MAX_AGE_DEFAULT=300,
    )
    app.wsgi_app = ClientAddress(app.wsgi_app, settings.forwarded_allow_ips)  # type: ignore[method-assign]
    app.session_interface = FileSessions(settings.session_dir, settings.session_seconds)
    Babel(app, locale_selector=i18n.select_locale)

    http = requests.Session()
    if api_wsgi is not None:
        http.mount(settings.api_url + "/", WSGIAdapter(api_wsgi))
    app.extensions["labshare.web"] = {"settings": settings, "http": http, "cache": {}}

    if settings.oidc_issuer and settings.oidc_client_id:
        from authlib.integrations.flask_client import OAuth

        oauth = OAuth(app)
        oauth.register(
            "oidc",
            client_id=settings.oidc_client_id,
            client_secret=settings.oidc_client_secret,
            server_metadata_url=settings.oidc_issuer.rstrip("/") + "/.well-known/openid-configuration",
            client_kwargs={"scope": "openid profile email", "code_challenge_method": "S256"},
        )
        app.extensions["labshare.web"]["oauth"] = oauth

    from services.web import usage, views, waitlist

    app.before_request(_check_csrf)
    for bp in (*views.blueprints, usage.bp, waitlist.bp):
        app.register_blueprint(bp)
    app.context_processor(views.template_context)
    app.jinja_env.globals["csrf_token"] = csrf_token
    for name, fn in views.template_filters.items():
        app.add_template_filter(fn, name)

    @app.errorhandler(NotAuthenticated)
    def _expired(_err: NotAuthenticated) -> Response:
        return views.logged_out_redirect(_("Your login has expired. Please log in again."))

    @app.errorhandler(ApiError)
    def _api_error(err: ApiError) -> tuple[str, int]:
        status = err.status if err.status in (403, 404) else 502 if err.status >= 500 else 400
        return render_template("error.html", messages=i18n.flat(i18n.refusal(err))), status

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException) -> tuple[str, int]:
        code = err.code or 500
        if code == 400 and err.description == "csrf":
            messages = [_("This form has expired or did not come from this site. Please go back, reload the "
                          "page and try again.")]
        elif code == 404:
            messages = [_("There is no page here.")]
        elif code == 403:
            messages = [_("You are not allowed to do that.")]
        else:
            messages = [_("That did not work. Please check what you entered.")]
        return render_template("error.html", messages=messages), code

    @app.errorhandler(Exception)
    def _unexpected(err: Exception) -> tuple[str, int]:
        log.exception("unhandled error in the web app")
        return render_template("error.html", messages=[_("Something went wrong on our side.")]), 500

    @app.after_request
    def _headers(resp: Response) -> Response:
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault("Referrer-Policy", "same-origin")
        resp.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "frame-ancestors 'none'; base-uri 'self'",
        )
        if not request.path.startswith("/static/"):
            resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    @app.teardown_request
    def _forget(_exc: BaseException | None) -> None:
        g.pop("memo", None)

    return app


def settings_of(app: Flask) -> WebSettings:
    """The settings the app was made with."""
    return app.extensions["labshare.web"]["settings"]


def state_of(app: Flask) -> dict[str, Any]:
    return app.extensions["labshare.web"]
