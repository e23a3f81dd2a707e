"""Request parsing and response helpers shared by the services' blueprints."""

from __future__ import annotations

import base64
import datetime as dt
import json as _json
import re
from typing import Annotated, Any, TypeVar

from flask import Response, json, request
from pydantic import AwareDatetime, BaseModel, Field, ValidationError
from werkzeug.exceptions import BadRequest

from shared.errors import ValidationFailed
from shared.timeutil import parse_rfc3339

M = TypeVar("M", bound=BaseModel)

#: An RFC 3339 timestamp string with an offset (numbers and naive times are refused).
Timestamp = Annotated[AwareDatetime, Field(strict=True)]

_LOST_PLUS = re.compile(r"(\d) (\d\d:?\d\d)$")
MAX_LIMIT = 500
DEFAULT_LIMIT = 100


def _errors_from(exc: ValidationError) -> list[dict[str, str]]:
    out = []
    for err in exc.errors(include_url=False):
        field = ".".join(str(p) for p in err["loc"]) or "body"
        message = err["msg"]
        if err["type"] == "timezone_aware":
            message = "timestamp must include an offset, e.g. 2026-12-01T09:00:00+01:00 or ...Z"
        out.append({"field": field, "message": message})
    return out


def parse_body(model: type[M]) -> M:
    """Validate the JSON body against ``model``: 400 when not JSON, 422 with ``errors`` when wrong."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        raw = b"{}"
    try:
        _json.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"The body is not valid JSON: {exc}") from exc
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise ValidationFailed(_errors_from(exc)) from exc


def query_time(name: str, default: dt.datetime | None = None) -> dt.datetime | None:
    """A timestamp query parameter, 422 when it is not RFC 3339 with an offset."""
    value = request.args.get(name)
    if value is None or value == "":
        return default
    # An unencoded "+01:00" arrives as " 01:00"; read it as the offset it was meant to be.
    value = _LOST_PLUS.sub(r"\1+\2", value)
    try:
        return parse_rfc3339(value)
    except ValueError as exc:
        raise ValidationFailed([{"field": name, "message": str(exc)}]) from exc


def query_int(name: str, default: int | None, lo: int = 1, hi: int = 10**9) -> int | None:
    """An integer query parameter within ``[lo, hi]``."""
    value = request.args.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError as exc:
        raise ValidationFailed([{"field": name, "message": "must be an integer"}]) from exc
    if not lo <= number <= hi:
        raise ValidationFailed([{"field": name, "message": f"must be between {lo} and {hi}"}])
    return number


def query_bool(name: str) -> bool:
    """A boolean query parameter (``true``/``1``/``yes``)."""
    return request.args.get(name, "").lower() in {"1", "true", "yes"}


def query_choice(name: str, choices: tuple[str, ...]) -> str | None:
    """A query parameter restricted to ``choices``."""
    value = request.args.get(name)
    if value in (None, ""):
        return None
    if value not in choices:
        raise ValidationFailed([{"field": name, "message": f"must be one of {', '.join(choices)}"}])
    return value


def page_params() -> tuple[int, Any]:
    """``limit`` (max 500) and the decoded ``cursor`` of a list request."""
    limit = query_int("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    raw = request.args.get("cursor")
    cursor = None
    if raw:
        try:
            cursor = _json.loads(base64.urlsafe_b64decode(raw.encode() + b"=" * (-len(raw) % 4)))
        except ValueError as exc:
            raise ValidationFailed([{"field": "cursor", "message": "not a cursor from this API"}]) from exc
    return limit or DEFAULT_LIMIT, cursor


def encode_cursor(value: Any) -> str:
    """An opaque cursor for ``next``."""
    return base64.urlsafe_b64encode(_json.dumps(value).encode()).decode().rstrip("=")


def page(items: list[Any], limit: int, key) -> dict[str, Any]:
    """``{"items", "next"}`` from ``limit + 1`` fetched rows; ``key(row)`` makes the cursor."""
    more = len(items) > limit
    items = items[:limit]
    return {"items": items, "next": encode_cursor(key(items[-1])) if more and items else None}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response."""
    resp = Response(json.dumps(body), status=status, mimetype="application/json")
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp
