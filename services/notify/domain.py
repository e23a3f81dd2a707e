"""Who should hear of an event. Pure Python."""

from __future__ import annotations

from typing import Any


def booking_recipients(event: dict[str, Any]) -> list[dict[str, str]]:
    """The people a booking event concerns: its owner, and the lab's managers while it is pending."""
    data = event.get("data") or {}
    user = data.get("user") or {}
    people = [user] if user.get("email") else []
    if event.get("type") == "booking.created" and data.get("status") == "pending":
        people += [m for m in (data.get("lab") or {}).get("managers", []) if m.get("email")]
    return [{"sub": p.get("sub", ""), "name": p.get("name", ""), "email": p["email"]} for p in people]
