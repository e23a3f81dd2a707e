"""The one place that calls the labshare API: HTTP with ``requests``, problem+json turned into exceptions.

The web app holds no data of its own besides sessions; everything it shows or
changes goes through these calls, with the user's bearer token. In the
all-in-one development process the API's WSGI app can be mounted in-process
(``WSGIAdapter``): the requests still go through the full HTTP semantics
(method, path, headers, status, body), only without a socket.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict
from werkzeug.test import EnvironBuilder, run_wsgi_app


class ApiError(Exception):
    """The API refused or failed; ``problem`` is its RFC 9457 document."""

    def __init__(self, status: int, problem: dict[str, Any] | None = None) -> None:
        self.status = status
        self.problem = problem or {}
        super().__init__(f"{status}: {self.problem.get('detail') or self.problem.get('title') or ''}")

    @property
    def detail(self) -> str:
        return str(self.problem.get("detail") or "")


class NotAuthenticated(ApiError):
    """401: no token, or it expired."""


class NotAllowed(ApiError):
    """403."""


class NotFound(ApiError):
    """404."""


class Refused(ApiError):
    """409 (``conflicts``, or a state that forbids the change) or 422 (``violations`` or ``errors``)."""

    @property
    def conflicts(self) -> list[dict[str, str]]:
        return list(self.problem.get("conflicts") or [])

    @property
    def violations(self) -> list[dict[str, str]]:
        return list(self.problem.get("violations") or [])

    @property
    def errors(self) -> list[dict[str, str]]:
        return list(self.problem.get("errors") or [])


class Unavailable(ApiError):
    """The API did not answer, or answered 5xx."""


_BY_STATUS: dict[int, type[ApiError]] = {401: NotAuthenticated, 403: NotAllowed, 404: NotFound, 409: Refused,
                                         422: Refused}


def error_for(resp: requests.Response) -> ApiError:
    """The exception for an API answer that is not 2xx."""
    try:
        problem = resp.json()
    except ValueError:
        problem = {"title": resp.reason or "", "detail": ""}
    if not isinstance(problem, dict):
        problem = {}
    kind = _BY_STATUS.get(resp.status_code, Unavailable if resp.status_code >= 500 else ApiError)
    return kind(resp.status_code, problem)


class WSGIAdapter(BaseAdapter):
    """A ``requests`` transport that hands each request to a WSGI app in this process."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        super().__init__()
        self.app = app

    def send(self, request: requests.PreparedRequest, **_kwargs: Any) -> requests.Response:
        parts = urlsplit(request.url)
        body = request.body.encode() if isinstance(request.body, str) else (request.body or b"")
        builder = EnvironBuilder(
            path=parts.path, query_string=parts.query, method=request.method,
            headers=dict(request.headers), data=body,
            base_url=f"{parts.scheme}://{parts.netloc}",
        )
        try:
            environ = builder.get_environ()
        finally:
            builder.close()
        app_iter, status, headers = run_wsgi_app(self.app, environ, buffered=True)
        resp = requests.Response()
        resp.status_code = int(status.split(" ", 1)[0])
        resp.reason = status.split(" ", 1)[1] if " " in status else ""
        resp.headers = CaseInsensitiveDict(headers.items())
        resp.raw = io.BytesIO(b"".join(app_iter))
        resp.url = request.url or ""
        resp.request = request
        resp.encoding = "utf-8"
        return resp

    def close(self) -> None:
        """Nothing to release."""


class Api:
    """The labshare API as one user (``token``) sees it.

    ``client_address`` is that user's address: every call names it in X-Forwarded-For, so that the
    gateway, which trusts the web app as a proxy, counts the call against that user's rate limit
    rather than against the web app's one address.
    """

    def __init__(self, base_url: str, http: requests.Session, token: str | None = None,
                 timeout: float = 15.0, client_address: str | None = None) -> None:
        self.base = base_url.rstrip("/")
        self.http = http
        self.token = token
        self.timeout = timeout
        self.client_address = client_address

    def request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                json_body: Any = None, token: str | None = None) -> Any:
        """One call; the decoded JSON answer (None for 204), or an ``ApiError``."""
        resp = self._send(method, path, params, json_body, token, "application/json")
        if resp.status_code == 204 or not resp.content:
            return None
        return resp.json()

    def download(self, path: str, accept: str, **params: Any) -> tuple[bytes, str]:
        """A GET whose answer is not JSON (a CSV export): its body and content type, or an ``ApiError``."""
        resp = self._send("GET", path, params, None, None, accept)
        return resp.content, resp.headers.get("Content-Type", accept)

    def _send(self, method: str, path: str, params: dict[str, Any] | None, json_body: Any, token: str | None,
              accept: str) -> requests.Response:
        headers = {"Accept": accept}
        bearer = token or self.token
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        if json_body is not None:
            headers["Content-Type"] = "application/json"
        if self.client_address:
            headers["X-Forwarded-For"] = self.client_address
        clean = {k: v for k, v in (params or {}).items() if v not in (None, "")}
        try:
            resp = self.http.request(
                method, self.base + path, params=clean, headers=headers, timeout=self.timeout,
                data=None if json_body is None else json.dumps(json_body).encode(),
            )
        except requests.RequestException as exc:
            raise Unavailable(503, {"title": "API unreachable", "detail": str(exc)}) from exc
        if resp.status_code >= 400:
            raise error_for(resp)
        return resp

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json_body={} if body is None else body)

    def patch(self, path: str, body: Any) -> Any:
        return self.request("PATCH", path, json_body=body)

    def put(self, path: str, body: Any) -> Any:
        return self.request("PUT", path, json_body=body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def items(self, path: str, limit: int = 500, **params: Any) -> Iterator[dict[str, Any]]:
        """Every item of a list endpoint, following ``next`` cursors."""
        cursor = None
        while True:
            page = self.get(path, limit=limit, cursor=cursor, **params)
            yield from page["items"]
            cursor = page.get("next")
            if not cursor:
                return

    def all(self, path: str, **params: Any) -> list[dict[str, Any]]:
        return list(self.items(path, **params))
