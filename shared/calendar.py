"""What the booking feeds and the notify invitations must agree on."""

from __future__ import annotations

from urllib.parse import urlsplit

from shared.config import Settings


def booking_uid(booking_id: str, settings: Settings) -> str:
    """The iCalendar UID of a booking occurrence: stable for its life, the same in feeds and e-mail."""
    host = urlsplit(settings.public_url).hostname or "labshare"
    return f"{booking_id}@{host}"
