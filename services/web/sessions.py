"""Server-side sessions: the cookie holds only a signed random id; the data (the user's API token) stays here.

One JSON file per session under the data directory, written atomically. A
session lives ``session_seconds`` from its last change; expired files are
swept now and then. Several web replicas share the directory (and the secret
key) or sit behind sticky sessions.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

from flask import Flask, Request, Response
from flask.sessions import SessionInterface, SessionMixin
from itsdangerous import BadSignature, Signer
from werkzeug.datastructures import CallbackDict

COOKIE = "labshare_session"


class ServerSession(CallbackDict, SessionMixin):
    """The session's data, remembering whether it changed."""

    def __init__(self, initial: dict[str, Any] | None = None, sid: str | None = None, new: bool = False) -> None:
        def on_update(_self: CallbackDict) -> None:
            self.modified = True

        super().__init__(initial or {}, on_update)
        self.sid = sid
        self.previous_sid: str | None = None
        self.new = new
        self.modified = False

    def rotate(self) -> None:
        """A new id for the same data (at login, so that an id known before login is worth nothing after)."""
        self.previous_sid, self.sid = self.sid, None
        self.modified = True


class FileSessions(SessionInterface):
    """Flask sessions kept as files, one per session id."""

    def __init__(self, directory: Path, lifetime_seconds: int) -> None:
        self.directory = directory
        self.lifetime = lifetime_seconds
        self._last_sweep = 0.0

    def _path(self, sid: str) -> Path:
        # The file name is a hash of the id, so a listing of the directory reveals no usable id.
        return self.directory / (hashlib.sha256(sid.encode()).hexdigest() + ".json")

    def _signer(self, app: Flask) -> Signer:
        return Signer(app.secret_key, salt="labshare-web-session")

    def open_session(self, app: Flask, request: Request) -> ServerSession:
        raw = request.cookies.get(COOKIE)
        if raw:
            try:
                sid = self._signer(app).unsign(raw).decode()
            except BadSignature:
                sid = None
            if sid:
                data = self._load(sid)
                if data is not None:
                    return ServerSession(data, sid)
        return ServerSession(new=True)

    def _load(self, sid: str) -> dict[str, Any] | None:
        try:
            stored = json.loads(self._path(sid).read_text())
        except (OSError, ValueError):
            return None
        if stored.get("expires", 0) < time.time():
            with contextlib.suppress(OSError):
                self._path(sid).unlink()
            return None
        return stored.get("data") or {}

    def save_session(self, app: Flask, session: ServerSession, response: Response) -> None:  # type: ignore[override]
        secure = app.config["SESSION_COOKIE_SECURE"]
        if not session:
            for sid in (session.sid, session.previous_sid):
                if sid:
                    with contextlib.suppress(OSError):
                        self._path(sid).unlink()
            if session.sid or session.previous_sid:
                response.delete_cookie(COOKIE, path="/", secure=secure, httponly=True, samesite="Lax")
            return
        if not (session.modified or session.new or session.sid is None):
            return
        if session.sid is None:
            session.sid = secrets.token_urlsafe(32)
            if session.previous_sid:
                with contextlib.suppress(OSError):
                    self._path(session.previous_sid).unlink()
        self._write(session.sid, dict(session))
        response.set_cookie(
            COOKIE, self._signer(app).sign(session.sid.encode()).decode(), max_age=self.lifetime,
            path="/", secure=secure, httponly=True, samesite="Lax",
        )
        self._sweep()

    def _write(self, sid: str, data: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            json.dump({"expires": time.time() + self.lifetime, "data": data}, f)
        os.replace(tmp, self._path(sid))

    def _sweep(self) -> None:
        """Remove expired sessions, at most once a minute."""
        now = time.time()
        if now - self._last_sweep < 60:
            return
        self._last_sweep = now
        for path in self.directory.glob("*.json"):
            try:
                if path.stat().st_mtime + self.lifetime < now:
                    path.unlink()
            except OSError:
                continue
