"""One origin for the three services and the web app in one process, routed as the production gateway routes them."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

from flask import Flask
from werkzeug.wrappers import Request, Response

#: Path prefixes and the service that answers them (the same table as deploy/nginx.conf).
ROUTES: tuple[tuple[str, str], ...] = (
    ("/api/v1/labs", "inventory"),
    ("/api/v1/resources", "inventory"),
    ("/api/v1/bookings", "booking"),
    ("/api/v1/availability", "booking"),
    ("/api/v1/slots", "booking"),
    ("/api/v1/waitlist", "booking"),
    ("/api/v1/usage", "booking"),
    ("/api/v1/utilisation", "booking"),
    ("/api/v1/feeds", "booking"),
    ("/feeds/", "booking"),
    ("/api/v1/webhooks", "notify"),
    ("/api/v1/notifications", "notify"),
    ("/api/v1/dev/token", "inventory"),
)


def route(path: str) -> str | None:
    """The service answering ``path``, or None."""
    for prefix, service in ROUTES:
        if path == prefix or path.startswith(prefix if prefix.endswith("/") else prefix + "/"):
            return service
    return None


def _problem(status: int, title: str, detail: str) -> Response:
    body = {"type": f"https://labshare.dev/problems/{status}", "title": title, "status": status, "detail": detail}
    return Response(json.dumps(body), status=status, mimetype="application/problem+json")


class Gateway:
    """A WSGI app dispatching by path prefix; paths no API claims go to the web app, when there is one.

    ``/api/…`` and ``/feeds/…`` paths nobody serves stay problem+json 404s.
    ``/healthz`` is 503 ("down") when any service is down (its ``/healthz`` is not
    200), else 200: "degraded" when any service says so (it serves, but its events
    are held up), "ok" when all do.
    """

    def __init__(self, apps: dict[str, Flask], web: Flask | None = None) -> None:
        self.apps = apps
        self.web = web

    def _health(self) -> Response:
        report, down, degraded = {}, False, False
        for name, app in self.apps.items():
            resp = app.test_client().get("/healthz")
            report[name] = resp.get_json(silent=True) or {"status": resp.status_code}
            down = down or resp.status_code != 200
            degraded = degraded or report[name].get("status") != "ok"
        status = "down" if down else "degraded" if degraded else "ok"
        body = {"status": status, "services": report}
        return Response(json.dumps(body), status=503 if down else 200, mimetype="application/json")

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            return self._health()(environ, start_response)
        if path.startswith("/api/v1/openapi/") and path.endswith(".json"):
            name = path[len("/api/v1/openapi/"):-len(".json")]
            if name in self.apps:
                environ = {**environ, "PATH_INFO": "/openapi.json"}
                return self.apps[name](environ, start_response)
        service = route(path)
        if service is None and self.web is not None and not path.startswith(("/api/", "/feeds/")):
            return self.web(environ, start_response)
        if service is None:
            request = Request(environ)
            return _problem(404, "Not found", f"Nothing is served at {request.path}.")(environ, start_response)
        return self.apps[service](environ, start_response)
