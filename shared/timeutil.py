"""Time at the edges: RFC 3339 in, UTC ``Z`` out, aware datetimes everywhere in between."""

from __future__ import annotations

import datetime as dt

UTC = dt.UTC


def now() -> dt.datetime:
    """The current time, aware, UTC."""
    return dt.datetime.now(UTC)


def parse_rfc3339(value: str) -> dt.datetime:
    """Parse an RFC 3339 timestamp; a missing offset raises ``ValueError``."""
    parsed = dt.datetime.fromisoformat(value.strip().replace("z", "Z"))
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError("timestamp must include an offset, e.g. 2026-12-01T09:00:00+01:00 or ...Z")
    return parsed.astimezone(UTC)


def iso(value: dt.datetime | None) -> str | None:
    """Format an aware datetime as UTC with ``Z`` (seconds, plus microseconds when present)."""
    if value is None:
        return None
    value = value.astimezone(UTC)
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ" if value.microsecond else "%Y-%m-%dT%H:%M:%SZ"
    return value.strftime(fmt)
