"""The edges where notify touches the world: a mail transport and a webhook client.

Which mail transport is used follows the configuration: SMTP when
``LABSHARE_SMTP_URL`` is set (``smtp://`` plain, ``smtp://...?starttls=true``,
``smtps://`` implicit TLS; ``user:pass@`` logs in), otherwise a local Maildir
under ``<data_dir>/mail`` that any mail reader can open. Tests hand in fakes
with the same small interfaces.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import mailbox
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from services.notify import domain
from shared.config import Settings
from shared.timeutil import now


@dataclass(frozen=True)
class Outgoing:
    """One message for one envelope recipient, as the exact bytes to send."""

    sender: str
    recipient: str
    message: bytes


@dataclass(frozen=True)
class Outcome:
    """What one try of a delivery came to."""

    ok: bool
    duration_ms: float
    status_code: int | None = None
    error: str | None = None
    #: Retrying cannot help (the mail server refused the address for good).
    permanent: bool = False
    #: When the try began (None: when it was recorded).
    started_at: dt.datetime | None = None


class MailTransport(Protocol):
    """Sends e-mails; one outcome per message, in order."""

    def send(self, messages: Sequence[Outgoing]) -> list[Outcome]: ...


class WebhookClient(Protocol):
    """POSTs a body to a URL; never raises."""

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> Outcome: ...


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000


class MaildirTransport:
    """Delivers into a Maildir (``make run`` without a mail server): every message is a file in ``new/``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def send(self, messages: Sequence[Outgoing]) -> list[Outcome]:
        """Add each message to the mailbox, with the envelope recipient as ``Delivered-To``."""
        out = []
        with self._lock:
            box = mailbox.Maildir(self.path, create=True)
            for msg in messages:
                began, t = now(), time.perf_counter()
                try:
                    # Maildir files use the local line ending, not SMTP's CRLF.
                    box.add(b"Delivered-To: " + msg.recipient.encode() + b"\n" + msg.message.replace(b"\r\n", b"\n"))
                    out.append(Outcome(True, _ms(t), started_at=began))
                except OSError as exc:
                    out.append(Outcome(False, _ms(t), error=f"maildir: {exc}", started_at=began))
        return out


class SmtpTransport:
    """Sends over one SMTP connection per batch, with ``smtplib``."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps"):
            raise ValueError(f"LABSHARE_SMTP_URL must be smtp:// or smtps://, not {parts.scheme}://")
        self.implicit_tls = parts.scheme == "smtps"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (465 if self.implicit_tls else 25)
        self.user = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        query = parse_qs(parts.query)
        self.starttls = query.get("starttls", ["false"])[0].lower() in ("1", "true", "yes")
        self.timeout = timeout

    def _connect(self) -> smtplib.SMTP:
        if self.implicit_tls:
            conn: smtplib.SMTP = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout,
                                                  context=ssl.create_default_context())
        else:
            conn = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            if self.starttls:
                conn.starttls(context=ssl.create_default_context())
        if self.user:
            conn.login(self.user, self.password or "")
        return conn

    def send(self, messages: Sequence[Outgoing]) -> list[Outcome]:
        """Send each message; a failed connection fails them all (they are retried later)."""
        out: list[Outcome] = []
        began, t = now(), time.perf_counter()
        try:
            conn = self._connect()
        except (OSError, smtplib.SMTPException) as exc:
            return [Outcome(False, _ms(t), error=f"smtp connect: {exc}", started_at=began) for _ in messages]
        try:
            for i, msg in enumerate(messages):
                if i:
                    began, t = now(), time.perf_counter()
                try:
                    conn.sendmail(msg.sender, [msg.recipient], msg.message)
                    out.append(Outcome(True, _ms(t), 250, started_at=began))
                except smtplib.SMTPRecipientsRefused as exc:
                    code, reply = next(iter(exc.recipients.values()))
                    out.append(Outcome(False, _ms(t), code, f"smtp: {code} {_text(reply)}", permanent=code >= 500,
                                       started_at=began))
                except smtplib.SMTPResponseException as exc:
                    out.append(Outcome(False, _ms(t), exc.smtp_code, f"smtp: {exc.smtp_code} {_text(exc.smtp_error)}",
                                       permanent=exc.smtp_code >= 500, started_at=began))
                except (OSError, smtplib.SMTPException) as exc:
                    out.append(Outcome(False, _ms(t), error=f"smtp: {exc}", started_at=began))
                    out += [Outcome(False, 0.0, error=f"smtp: connection lost: {exc}") for _ in messages[i + 1:]]
                    break
        finally:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                conn.quit()
        return out


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class RefusedAddress(OSError):
    """A webhook's host is, or resolves to, an address webhooks may not be sent to."""


class _PublicOnly:
    """For urllib3's connections: look the host up once, refuse it unless every address it has is public,
    and connect to the address that was checked (so a name cannot answer differently in between)."""

    _dns_host: str
    port: int

    def _new_conn(self) -> socket.socket:
        host = self._dns_host
        try:
            infos = socket.getaddrinfo(host, self.port, type=socket.SOCK_STREAM)
        except socket.gaierror:
            return super()._new_conn()  # type: ignore[misc]  # urllib3 reports the failed lookup
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        for address in addresses:
            if kind := domain.address_kind(address):
                what = f"{host} is {kind}" if address == host else f"{host} resolves to {address}, {kind}"
                raise RefusedAddress(what)
        self._dns_host = addresses[0]
        try:
            return super()._new_conn()  # type: ignore[misc]
        finally:
            self._dns_host = host


class _PublicHTTPConnection(_PublicOnly, HTTPConnection):
    """urllib3's plain HTTP connection, to public addresses only."""


class _PublicHTTPSConnection(_PublicOnly, HTTPSConnection):
    """urllib3's TLS connection, to public addresses only (the certificate is still checked for the name)."""


class _PublicHTTPPool(HTTPConnectionPool):
    ConnectionCls = _PublicHTTPConnection


class _PublicHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _PublicHTTPSConnection


class PublicOnlyAdapter(HTTPAdapter):
    """requests' adapter whose connections go to public addresses only (TLS still checks the host name)."""

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _PublicHTTPPool, "https": _PublicHTTPSPool}


def _refusal(exc: BaseException) -> RefusedAddress | None:
    """The RefusedAddress somewhere inside what requests raised (urllib3 wraps it twice)."""
    todo, seen = [exc], set()
    while todo:
        e = todo.pop()
        if isinstance(e, RefusedAddress):
            return e
        if id(e) in seen:
            continue
        seen.add(id(e))
        todo += [x for x in (e.__cause__, e.__context__, getattr(e, "reason", None), *e.args)
                 if isinstance(x, BaseException)]
    return None


class HttpWebhookClient:
    """POSTs with ``requests``: a pooled session per thread, a timeout, no redirects followed; unless
    ``private_targets``, only to public addresses (checked when connecting, whatever the URL's host)."""

    def __init__(self, timeout: float = 10.0, private_targets: bool = True) -> None:
        self.timeout = timeout
        self.private_targets = private_targets
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.trust_env = False
            if not self.private_targets:
                session.mount("http://", PublicOnlyAdapter())
                session.mount("https://", PublicOnlyAdapter())
            self._local.session = session
        return session

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> Outcome:
        """One POST; 2xx is success, anything else (or no answer) a failure to retry; a refused address
        a failure for good."""
        began, t = now(), time.perf_counter()
        try:
            resp = self._session().post(url, data=body, headers=headers, timeout=self.timeout,
                                        allow_redirects=False)
            resp.close()
        except requests.RequestException as exc:
            if (refused := _refusal(exc)) is not None:
                return Outcome(False, _ms(t), error=f"refused: {refused} (webhooks go to public addresses only)",
                               permanent=True, started_at=began)
            return Outcome(False, _ms(t), error=f"{type(exc).__name__}: {exc}"[:500], started_at=began)
        ok = 200 <= resp.status_code < 300
        return Outcome(ok, _ms(t), resp.status_code, None if ok else f"HTTP {resp.status_code}", started_at=began)


def mail_transport(settings: Settings) -> MailTransport:
    """SMTP when configured, else the local Maildir under the data directory."""
    if settings.smtp_url:
        return SmtpTransport(settings.smtp_url, settings.delivery_timeout)
    return MaildirTransport(Path(settings.data_dir) / "mail")
