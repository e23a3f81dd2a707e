"""Real servers on 127.0.0.1 for notify's tests and benchmark: an SMTP server and a webhook receiver."""

from __future__ import annotations

import email
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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
        return email.message_from_bytes(self.data, policy=policy.default)  # type: ignore[return-value]


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
