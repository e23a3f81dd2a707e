"""Events in: booking events become e-mails and reminders, inventory events teach notify who manages
what, and every event notify receives goes to the webhooks that asked for it.

Each handler runs in the consumer's transaction, with the event's inbox row:
the deliveries it queues are committed with it, or not at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import event as orm_event
from sqlalchemy.orm import Session

from services.notify import handlers as use_cases
from services.notify import store
from services.notify.domain import WAITLIST_MAILS, Person
from shared.messaging import EventHandler
from shared.service import Runtime
from shared.timeutil import now

if TYPE_CHECKING:
    from services.notify.app import NotifyRuntime


def on_lab(session: Session, event: dict[str, Any]) -> None:
    """``lab.created`` / ``lab.updated``: its managers (who may add its webhooks) and their addresses."""
    data = event["data"]
    store.upsert_lab(session, data)
    stamp = now()
    for manager in data.get("managers") or []:
        store.remember_person(session, Person.of(manager), stamp)


def on_resource(session: Session, event: dict[str, Any]) -> None:
    """``resource.*``: which lab the resource belongs to."""
    store.upsert_resource(session, event["data"])


class Routes(dict[str, EventHandler]):
    """Handlers by exact event type, and one for every other type notify's queue is bound to.

    The consumer looks a handler up with ``get``; types without one of their own
    (``waitlist.joined``, ``outage.*``, types added later) still reach the webhooks.
    """

    def __init__(self, exact: dict[str, EventHandler], other: EventHandler) -> None:
        super().__init__(exact)
        self.other = other

    def get(self, key: str, default: EventHandler | None = None) -> EventHandler | None:  # type: ignore[override]
        return super().get(key) or self.other


def handlers(rt: Runtime) -> dict[str, EventHandler]:
    """The event types notify acts on; every event it receives is also offered to the webhooks."""
    nrt: NotifyRuntime = rt  # type: ignore[assignment]

    def then_webhooks(own) -> EventHandler:
        def handle(session: Session, event: dict[str, Any]) -> None:
            if own is not None:
                own(session, event)
            use_cases.queue_webhooks(session, event, now())
            # Wake the delivery workers once this transaction has committed.
            orm_event.listen(session, "after_commit", lambda _s: nrt.wake(), once=True)

        return handle

    def booking(session: Session, event: dict[str, Any]) -> None:
        use_cases.on_booking_event(nrt, session, event)

    def waitlist(session: Session, event: dict[str, Any]) -> None:
        use_cases.on_waitlist_event(nrt, session, event)

    def other(session: Session, event: dict[str, Any]) -> None:
        # A booking event type without a rule of its own still keeps the booking's reminder in step.
        if str(event.get("type", "")).startswith("booking.") and "start" in (event.get("data") or {}):
            booking(session, event)

    exact = {
        **dict.fromkeys(
            ("booking.created", "booking.confirmed", "booking.updated", "booking.cancelled", "booking.declined",
             "booking.checked_in", "booking.no_show"), then_webhooks(booking)),
        **dict.fromkeys(WAITLIST_MAILS, then_webhooks(waitlist)),
        "lab.created": then_webhooks(on_lab),
        "lab.updated": then_webhooks(on_lab),
        "resource.created": then_webhooks(on_resource),
        "resource.updated": then_webhooks(on_resource),
        "resource.retired": then_webhooks(on_resource),
    }
    return Routes(exact, then_webhooks(other))
