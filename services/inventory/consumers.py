"""Events in. Inventory is the source of its own facts and consumes no other service's events."""

from __future__ import annotations

from shared.messaging import EventHandler
from shared.service import Runtime


def handlers(rt: Runtime) -> dict[str, EventHandler]:
    """Inventory subscribes to nothing, so it has no handlers."""
    return {}
