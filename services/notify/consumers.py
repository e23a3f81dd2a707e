"""Events in: every booking event is logged with the people it concerns."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.orm import Session

from services.notify.domain import booking_recipients
from shared.messaging import EventHandler
from shared.service import Runtime

log = logging.getLogger("labshare.notify")

BOOKING_EVENTS = (
    "booking.created",
    "booking.confirmed",
    "booking.updated",
    "booking.cancelled",
    "booking.declined",
    "booking.checked_in",
)


def log_booking_event(session: Session, event: dict[str, Any]) -> None:
    """Record that a booking event reached notify, and for whom it is."""
    to = ", ".join(p["email"] for p in booking_recipients(event)) or "nobody"
    log.info("%s %s for %s", event["type"], event.get("subject", ""), to)


def handlers(rt: Runtime) -> dict[str, EventHandler]:
    """The event types notify acts on; its queue binds more (see ``SUBSCRIPTIONS``) for later use."""
    return dict.fromkeys(BOOKING_EVENTS, log_booking_event)

