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
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import requests

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


class HttpWebhookClient:
    """POSTs with ``requests``: a pooled session per thread, a timeout, no redirects followed."""

    def __init__(self, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.trust_env = False
            self._local.session = session
        return session

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> Outcome:
        """One POST; 2xx is success, anything else (or no answer) a failure to retry."""
        began, t = now(), time.perf_counter()
        try:
            resp = self._session().post(url, data=body, headers=headers, timeout=self.timeout,
                                        allow_redirects=False)
            resp.close()
        except requests.RequestException as exc:
            return Outcome(False, _ms(t), error=f"{type(exc).__name__}: {exc}"[:500], started_at=began)
        ok = 200 <= resp.status_code < 300
        return Outcome(ok, _ms(t), resp.status_code, None if ok else f"HTTP {resp.status_code}", started_at=began)


def mail_transport(settings: Settings) -> MailTransport:
    """SMTP when configured, else the local Maildir under the data directory."""
    if settings.smtp_url:
        return SmtpTransport(settings.smtp_url, settings.delivery_timeout)
    return MaildirTransport(Path(settings.data_dir) / "mail")
