"""Real servers on 127.0.0.1 for the tests and benchmark: an SMTP server, a webhook receiver, an OpenID provider."""

from __future__ import annotations

import base64
import email
import hashlib
import json
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import EmailPolicy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit

import jwt
from aiosmtpd.controller import Controller


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check: Callable[[], object], timeout: float = 20.0, what: str = "condition") -> object:
    """Poll ``check()`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class _ReadingPolicy(EmailPolicy):
    """``email.policy.default`` for reading, minus CPython's gh-124452 (fixed in 3.13): a header folded right
    after its colon (``Subject:\\r\\n Reminder: ...``, as ``policy.SMTP`` folds a value that just fits a line
    of its own) keeps the fold's space at the front of its value."""

    def header_source_parse(self, sourcelines: list[str]) -> tuple[str, str]:
        name, value = super().header_source_parse(sourcelines)
        return name, value.lstrip(" \t\r\n")


READING = _ReadingPolicy()


def parse_mail(data: bytes) -> EmailMessage:
    """One e-mail as a receiver reads it."""
    return email.message_from_bytes(data, policy=READING)  # type: ignore[return-value]


@dataclass(frozen=True)
class Received:
    """One message as the SMTP server accepted it."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    at: float
    #: Wall-clock time of arrival, comparable across processes.
    wall: float

    @property
    def message(self) -> EmailMessage:
        return parse_mail(self.data)


class MailSink:
    """An SMTP server (aiosmtpd) that keeps every message; ``stop()`` and ``start()`` simulate an outage."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._controller: Controller | None = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 (aiosmtpd's hook name)
        with self._lock:
            self.received.append(
                Received(envelope.mail_from, tuple(envelope.rcpt_tos), envelope.content, time.perf_counter(),
                         time.time())
            )
        return "250 Message accepted for delivery"

    def start(self) -> MailSink:
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def to(self, address: str) -> list[EmailMessage]:
        """The messages delivered to one address, in arrival order."""
        with self._lock:
            return [r.message for r in self.received if address in r.rcpt_tos]

    def wait_for(self, address: str, count: int, timeout: float = 20.0) -> list[EmailMessage]:
        """Wait until ``address`` has at least ``count`` messages; returns them."""
        wait_until(lambda: len(self.to(address)) >= count, timeout, f"{count} mail(s) to {address}")
        return self.to(address)


@dataclass(frozen=True)
class Hit:
    """One request the webhook receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    at: float
    #: Wall-clock time of arrival, comparable across processes.
    wall: float


class WebhookSink:
    """An HTTP server answering each path with scripted status codes (the last one repeats; default 200)."""

    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self.scripts: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's hook name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status = sink._status(self.path)
                with sink._lock:
                    sink.hits.append(Hit(self.path, dict(self.headers.items()), body, status, time.perf_counter(),
                                         time.time()))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address) -> None:
                pass  # a client that drops a kept-alive connection is no test failure

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _status(self, path: str) -> int:
        with self._lock:
            script = self.scripts.get(path)
            if not script:
                return 200
            return script.pop(0) if len(script) > 1 else script[0]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def script(self, path: str, statuses: list[int]) -> None:
        """Answer ``path`` with these statuses in turn, then the last one forever."""
        with self._lock:
            self.scripts[path] = list(statuses)

    def at(self, path: str) -> list[Hit]:
        with self._lock:
            return [h for h in self.hits if h.path == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class OpenIDProvider:
    """An OpenID provider on 127.0.0.1 for one confidential client: discovery, JWKS, authorization code with PKCE.

    The authorization endpoint logs in ``user`` (set by the test) without asking and sends the browser back
    with a code. The token endpoint checks the code, the client's credentials (HTTP Basic or the form) and
    that ``code_verifier`` hashes (S256) to the code's ``code_challenge``; it answers with an RS256 id token
    (carrying the nonce) and an access token for ``audience``, both signed with an RSA key made here and
    published in the JWKS.
    """

    def __init__(self, client_id: str, client_secret: str, audience: str) -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.client_id, self.client_secret, self.audience = client_id, client_secret, audience
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = secrets.token_hex(8)
        self.user: dict[str, object] = {"sub": "someone"}
        #: Claims put into (or over) the next id tokens' claims, to give the client a bad one.
        self.id_token_extra: dict[str, object] = {}
        self.codes: dict[str, dict[str, object]] = {}
        #: (form, status, answer) of every call of the token endpoint.
        self.token_requests: list[tuple[dict[str, str], int, dict[str, object]]] = []
        self._lock = threading.Lock()
        provider = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's hook name)
                url = urlsplit(self.path)
                if url.path == "/.well-known/openid-configuration":
                    self._json(200, provider.discovery())
                elif url.path == "/jwks":
                    self._json(200, provider.jwks())
                elif url.path == "/authorize":
                    self._redirect(provider.authorize(dict(parse_qsl(url.query))))
                else:
                    self._json(404, {"error": "not_found"})

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                if urlsplit(self.path).path != "/token":
                    self._json(404, {"error": "not_found"})
                    return
                status, answer = provider.token(dict(parse_qsl(body)), self.headers.get("Authorization", ""))
                self._json(status, answer)

            def _json(self, status: int, body: object) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(data)

            def _redirect(self, location: str) -> None:
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address) -> None:
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.issuer = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def discovery(self) -> dict[str, object]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "jwks_uri": f"{self.issuer}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        }

    def jwks(self) -> dict[str, object]:
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [{**public, "kid": self.kid, "use": "sig", "alg": "RS256"}]}

    def sign(self, claims: dict[str, object], audience: str, minutes: int = 5) -> str:
        """A token of this issuer for ``audience`` (tests also use it to call the API directly)."""
        now = int(time.time())
        payload = {"iss": self.issuer, "aud": audience, "iat": now, "exp": now + minutes * 60, **claims}
        return jwt.encode(payload, self.key, algorithm="RS256", headers={"kid": self.kid})

    def access_token(self, **claims: object) -> str:
        return self.sign(claims, self.audience)

    def authorize(self, query: dict[str, str]) -> str:
        """Where the browser goes next: back to the client with a code (or an error)."""
        redirect_uri = query.get("redirect_uri", "")
        if query.get("client_id") != self.client_id or query.get("response_type") != "code":
            return f"{redirect_uri}?{urlencode({'error': 'invalid_request', 'state': query.get('state', '')})}"
        code = secrets.token_urlsafe(16)
        with self._lock:
            self.codes[code] = {"redirect_uri": redirect_uri, "challenge": query.get("code_challenge"),
                                "method": query.get("code_challenge_method"), "nonce": query.get("nonce"),
                                "user": dict(self.user)}
        return f"{redirect_uri}?{urlencode({'code': code, 'state': query.get('state', '')})}"

    def _client_ok(self, form: dict[str, str], authorization: str) -> bool:
        client_id, secret = form.get("client_id"), form.get("client_secret")
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "basic":
            client_id, _, secret = base64.b64decode(value).decode().partition(":")
            client_id, secret = unquote_plus(client_id), unquote_plus(secret)
        return client_id == self.client_id and secret == self.client_secret

    def token(self, form: dict[str, str], authorization: str) -> tuple[int, dict[str, object]]:
        status, answer = self._token(form, authorization)
        with self._lock:
            self.token_requests.append((form, status, answer))
        return status, answer

    def _token(self, form: dict[str, str], authorization: str) -> tuple[int, dict[str, object]]:
        if not self._client_ok(form, authorization):
            return 401, {"error": "invalid_client"}
        with self._lock:
            grant = self.codes.pop(form.get("code", ""), None)  # a code is good for one exchange
        if form.get("grant_type") != "authorization_code" or grant is None:
            return 400, {"error": "invalid_grant", "error_description": "unknown or used code"}
        if form.get("redirect_uri") != grant["redirect_uri"]:
            return 400, {"error": "invalid_grant", "error_description": "redirect_uri differs"}
        verifier = form.get("code_verifier", "")
        digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if grant["method"] != "S256" or not verifier or digest != grant["challenge"]:
            return 400, {"error": "invalid_grant", "error_description": "code_verifier does not match"}
        user = dict(grant["user"])  # type: ignore[arg-type]
        id_claims = {**user, **({"nonce": grant["nonce"]} if grant["nonce"] else {}), **self.id_token_extra}
        return 200, {"access_token": self.access_token(**user), "token_type": "Bearer", "expires_in": 300,
                     "id_token": self.sign(id_claims, self.client_id)}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
