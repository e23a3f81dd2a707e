"""What the booking feeds and the notify invitations must agree on."""

from __future__ import annotations

from urllib.parse import urlsplit

from shared.config import Settings


def booking_uid(booking_id: str, settings: Settings) -> str:
    """The iCalendar UID of a booking occurrence: stable for its life, the same in feeds and e-mail."""
    host = urlsplit(settings.public_url).hostname or "labshare"
    return f"{booking_id}@{host}"


def feed_url(settings: Settings, path: str) -> str:
    """The public address of a calendar feed, e.g. ``feed_url(s, "/feeds/labs/<id>.ics")``."""
    return settings.public_url.rstrip("/") + path


def webcal_url(url: str) -> str:
    """The same feed as a ``webcal://`` link, which calendar apps open as a subscription."""
    return "webcal://" + url.split("://", 1)[-1]


def feed_links(settings: Settings, kind: str, entity_id: str) -> dict[str, str]:
    """``feed_url`` and ``webcal_url`` of a public feed; ``kind`` is ``resources`` or ``labs``.

    The path scheme ``/feeds/{kind}/{id}.ics`` is part of the public contract, so
    inventory may compute it for the booking service's feeds without asking it.
    """
    url = feed_url(settings, f"/feeds/{kind}/{entity_id}.ics")
    return {"feed_url": url, "webcal_url": webcal_url(url)}
