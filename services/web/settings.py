"""The web app's settings: the shared ``LABSHARE_*`` ones plus its own, read once from the environment."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from shared.config import Settings

#: Used only in development mode, where nothing in the session is worth protecting from the developer.
DEV_SECRET_KEY = "labshare-web-development-only-key"


@dataclass(frozen=True)
class WebSettings:
    """What the web app needs: where the API is, how people log in, where sessions live."""

    api_url: str
    public_url: str
    data_dir: str
    dev_mode: bool
    secret_key: str
    oidc_issuer: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: str | None = None
    #: Seconds a login lasts (development tokens live 12 hours).
    session_seconds: int = 12 * 3600
    api_timeout: float = 15.0
    #: Peers whose X-Forwarded-For is believed (addresses, networks, or ``*`` for any): the gateway in
    #: front. gunicorn's ``forwarded_allow_ips`` comes from the same variable, with the same default.
    forwarded_allow_ips: tuple[str, ...] = ("127.0.0.1", "::1")

    @property
    def secure_cookies(self) -> bool:
        """Cookies are marked Secure when users reach the site over https."""
        return self.public_url.startswith("https://")

    @property
    def session_dir(self) -> Path:
        """Where server-side sessions are kept (one file each)."""
        return Path(self.data_dir) / "web-sessions"

    @classmethod
    def from_env(cls, base: Settings | None = None, env: Mapping[str, str] | None = None,
                 **overrides: object) -> WebSettings:
        """Read ``LABSHARE_API_URL``, ``LABSHARE_WEB_SECRET_KEY``, ``LABSHARE_OIDC_CLIENT_*`` and
        ``LABSHARE_FORWARDED_ALLOW_IPS`` (comma-separated)."""
        env = os.environ if env is None else env
        base = base or Settings.from_env(env)
        values: dict[str, object] = {
            "api_url": (env.get("LABSHARE_API_URL") or base.public_url).rstrip("/"),
            "public_url": base.public_url.rstrip("/"),
            "data_dir": base.data_dir,
            "dev_mode": base.dev_mode,
            "secret_key": env.get("LABSHARE_WEB_SECRET_KEY") or "",
            "oidc_issuer": base.oidc_issuer,
            "oidc_client_id": env.get("LABSHARE_OIDC_CLIENT_ID") or None,
            "oidc_client_secret": env.get("LABSHARE_OIDC_CLIENT_SECRET") or None,
        }
        allowed = tuple(a.strip() for a in env.get("LABSHARE_FORWARDED_ALLOW_IPS", "").split(",") if a.strip())
        if allowed:
            values["forwarded_allow_ips"] = allowed
        values.update(overrides)
        if not values["secret_key"]:
            values["secret_key"] = DEV_SECRET_KEY if values["dev_mode"] else _stored_key(Path(str(values["data_dir"])))
        return cls(**values)  # type: ignore[arg-type]


def _stored_key(data_dir: Path) -> str:
    """A random key kept in the data directory, so that sessions survive a restart of a single web process.

    Several web replicas must share ``LABSHARE_WEB_SECRET_KEY`` (and the session directory) instead.
    """
    path = data_dir / "web-secret-key"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(48))
    return path.read_text().strip()
