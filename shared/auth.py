"""Bearer-token identity: OIDC (JWKS) in production, a local signing key in dev mode."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field

import jwt
from flask import Blueprint, Flask, current_app, g, request
from pydantic import BaseModel, ConfigDict, Field

from shared.config import Settings
from shared.errors import Forbidden, Unauthorized, ValidationFailed
from shared.http import json_response, parse_body

DEV_ISSUER = "labshare-dev"
DEV_AUDIENCE = "labshare"
ROLES = ("researcher", "manager", "admin")
VERIFIED_CACHE_SIZE = 4096


@dataclass(frozen=True)
class Principal:
    """The caller, as the token describes them."""

    sub: str
    name: str = ""
    email: str = ""
    org: str = ""
    roles: tuple[str, ...] = field(default_factory=tuple)

    @property
    def is_admin(self) -> bool:
        """Admins may do everything everywhere."""
        return "admin" in self.roles

    @property
    def is_manager(self) -> bool:
        """Holds the manager (or admin) role; which labs still depends on each lab's list."""
        return "manager" in self.roles or self.is_admin

    def snapshot(self) -> dict[str, str]:
        """The user as events and bookings carry them."""
        return {"sub": self.sub, "name": self.name, "org": self.org, "email": self.email}


class TokenVerifier:
    """Verifies bearer tokens once per request; keys are fetched once and cached."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._jwks: jwt.PyJWKClient | None = None
        self._lock = threading.Lock()
        # Verified tokens until they expire: a client sends the same token with every request.
        self._verified: dict[str, tuple[Principal, float]] = {}

    def _jwks_client(self) -> jwt.PyJWKClient:
        with self._lock:
            if self._jwks is None:
                issuer = (self.settings.oidc_issuer or "").rstrip("/")
                with urllib.request.urlopen(f"{issuer}/.well-known/openid-configuration", timeout=10) as r:
                    jwks_uri = json.load(r)["jwks_uri"]
                self._jwks = jwt.PyJWKClient(jwks_uri, cache_keys=True, lifespan=3600)
            return self._jwks

    def verify(self, token: str) -> Principal:
        """Decode and check a token (remembering a valid one until it expires); any fault is ``Unauthorized``."""
        cached = self._verified.get(token)
        if cached is not None and cached[1] > time.time():
            return cached[0]
        principal, expires = self._verify(token)
        with self._lock:
            if len(self._verified) >= VERIFIED_CACHE_SIZE:
                self._verified.clear()
            self._verified[token] = (principal, expires)
        return principal

    def _verify(self, token: str) -> tuple[Principal, float]:
        try:
            if self.settings.dev_mode and jwt.get_unverified_header(token).get("alg") == "HS256":
                claims = jwt.decode(
                    token,
                    self.settings.dev_secret,
                    algorithms=["HS256"],
                    audience=DEV_AUDIENCE,
                    issuer=DEV_ISSUER,
                    options={"require": ["exp", "sub"]},
                )
            elif self.settings.oidc_issuer:
                key = self._jwks_client().get_signing_key_from_jwt(token)
                claims = jwt.decode(
                    token,
                    key.key,
                    algorithms=["RS256", "ES256"],
                    audience=self.settings.oidc_audience,
                    issuer=self.settings.oidc_issuer,
                    options={"require": ["exp", "sub"]},
                )
            else:
                raise Unauthorized("No token issuer is configured (set LABSHARE_OIDC_ISSUER).")
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("The token has expired.") from exc
        except (jwt.PyJWTError, OSError, KeyError, ValueError) as exc:
            raise Unauthorized(f"The token is not valid: {exc}") from exc
        roles = claims.get("roles") or []
        if isinstance(roles, str):
            roles = roles.split()
        principal = Principal(
            sub=str(claims["sub"]),
            name=str(claims.get("name", "")),
            email=str(claims.get("email", "")),
            org=str(claims.get("org", "")),
            roles=tuple(r for r in roles if r in ROLES),
        )
        return principal, float(claims["exp"])


def install_auth(app: Flask, settings: Settings) -> None:
    """Attach a verifier; ``current_user()`` then reads the request's bearer token."""
    app.extensions["labshare.verifier"] = TokenVerifier(settings)
    if settings.dev_mode:
        app.register_blueprint(dev_blueprint)


def current_user() -> Principal:
    """The authenticated caller, or 401."""
    if "principal" in g:
        return g.principal
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Send 'Authorization: Bearer <token>'.")
    g.principal = current_app.extensions["labshare.verifier"].verify(token.strip())
    return g.principal


def require_role(*roles: str) -> Principal:
    """The caller, who must hold one of ``roles`` (admin always qualifies)."""
    user = current_user()
    if user.is_admin or any(r in user.roles for r in roles):
        return user
    raise Forbidden(f"This needs one of the roles: {', '.join(roles)}.")


def issue_dev_token(settings: Settings, claims: dict, hours: int = 12) -> str:
    """Sign a development token (dev mode only)."""
    now = dt.datetime.now(dt.UTC)
    payload = {
        **claims,
        "iss": DEV_ISSUER,
        "aud": DEV_AUDIENCE,
        "iat": now,
        "exp": now + dt.timedelta(hours=hours),
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(payload, settings.dev_secret, algorithm="HS256")


class DevTokenRequest(BaseModel):
    """Claims for a development token."""

    model_config = ConfigDict(extra="forbid")
    sub: str = Field(min_length=1, max_length=200)
    name: str = Field(default="", max_length=200)
    email: str = Field(default="", max_length=320)
    org: str = Field(default="", max_length=100)
    roles: list[str] = Field(default_factory=lambda: ["researcher"])


dev_blueprint = Blueprint("dev", __name__)


@dev_blueprint.post("/api/v1/dev/token")
def dev_token():
    """Issue a token for any identity; exists only in dev mode."""
    body = parse_body(DevTokenRequest)
    bad = [r for r in body.roles if r not in ROLES]
    if bad:
        raise ValidationFailed([{"field": "roles", "message": f"unknown role(s): {', '.join(bad)}"}])
    settings = current_app.extensions["labshare.settings"]
    return json_response({"token": issue_dev_token(settings, body.model_dump())}, 201)
