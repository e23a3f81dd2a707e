"""Notify HTTP API: parse → handler → serialize."""

from __future__ import annotations

from typing import Annotated

from flask import Blueprint, Response, request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from services.notify import handlers
from services.notify.domain import MAX_REMINDER, MIN_REMINDER
from shared.auth import current_user
from shared.http import json_response, page, page_params, parse_body, query_bool, query_choice
from shared.openapi import ApiDoc
from shared.service import runtime_of

doc = ApiDoc(
    "labshare notify",
    "E-mail with calendar invitations, reminders, webhooks, and the log of every delivery.",
)
bp = Blueprint("notify", __name__)

STATUSES = ("pending", "sending", "sent", "dead", "cancelled")
CHANNELS = ("email", "webhook")


@bp.before_request
def _authenticate() -> None:
    """Every route here needs a valid bearer token, checked before the body is read."""
    current_user()


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


EventPattern = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]


class WebhookIn(Strict):
    """A webhook: matching events are POSTed to ``url``, signed with ``secret``.

    ``events`` are event types or fnmatch patterns (``booking.*``, ``*``). A
    manager's webhook carries the events of ``lab_id``, or without it of every
    lab that lists them as manager; an admin's without ``lab_id`` carries all.
    """

    url: str = Field(min_length=1, max_length=2000)
    events: list[EventPattern] = Field(min_length=1, max_length=50)
    secret: str = Field(min_length=1, max_length=500)
    lab_id: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)] | None = None


class PreferencesIn(Strict):
    """``reminder_minutes`` before each booking's start (null: no reminders)."""

    reminder_minutes: int | None = Field(ge=MIN_REMINDER, le=MAX_REMINDER)


def _listed(items: list[dict], limit: int) -> Response:
    return json_response(page(items, limit, lambda x: [x["created_at"], x["id"]]))


# -- webhooks ---------------------------------------------------------------------------------------


@doc.op("post", "/api/v1/webhooks", "Add a webhook", body=WebhookIn, status=201)
@bp.post("/api/v1/webhooks")
def create_webhook() -> Response:
    """Managers for their labs, admins for any lab or all events; 422 lists what is wrong with the URL."""
    body = parse_body(WebhookIn)
    hook = handlers.create_webhook(runtime_of(), current_user(), body.model_dump())
    return json_response(hook, 201, {"Location": f"/api/v1/webhooks/{hook['id']}"})


@doc.op("get", "/api/v1/webhooks", "List webhooks", query=("limit", "cursor"))
@bp.get("/api/v1/webhooks")
def list_webhooks() -> Response:
    """The caller's webhooks; an admin's list holds everyone's. Secrets are never shown."""
    limit, cursor = page_params()
    return _listed(handlers.list_webhooks(runtime_of(), current_user(), limit, cursor), limit)


@doc.op("get", "/api/v1/webhooks/{webhook_id}", "Get a webhook")
@bp.get("/api/v1/webhooks/<webhook_id>")
def get_webhook(webhook_id: str) -> Response:
    """For its owner, the managers of its lab and admins."""
    return json_response(handlers.get_webhook(runtime_of(), current_user(), webhook_id))


@doc.op("delete", "/api/v1/webhooks/{webhook_id}", "Delete a webhook", status=204)
@bp.delete("/api/v1/webhooks/<webhook_id>")
def delete_webhook(webhook_id: str) -> Response:
    """Deliveries still waiting are withdrawn."""
    handlers.delete_webhook(runtime_of(), current_user(), webhook_id)
    return Response(status=204)


@doc.op("post", "/api/v1/webhooks/{webhook_id}/enable", "Re-enable a disabled webhook")
@bp.post("/api/v1/webhooks/<webhook_id>/enable")
def enable_webhook(webhook_id: str) -> Response:
    """A webhook is disabled after a delivery failed through its whole retry schedule."""
    return json_response(handlers.enable_webhook(runtime_of(), current_user(), webhook_id))


@doc.op("get", "/api/v1/webhooks/{webhook_id}/deliveries", "A webhook's deliveries",
        query=("status", "limit", "cursor"))
@bp.get("/api/v1/webhooks/<webhook_id>/deliveries")
def webhook_deliveries(webhook_id: str) -> Response:
    """Newest first, each with ``log``: every attempt's time, status code, duration and error."""
    limit, cursor = page_params()
    status = query_choice("status", STATUSES)
    items = handlers.webhook_deliveries(runtime_of(), current_user(), webhook_id, status, limit, cursor)
    return _listed(items, limit)


@doc.op("post", "/api/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/replay", "Replay a dead delivery")
@bp.post("/api/v1/webhooks/<webhook_id>/deliveries/<delivery_id>/replay")
def replay_webhook_delivery(webhook_id: str, delivery_id: str) -> Response:
    """The webhook's owner (or an admin) sends a dead delivery again, with a fresh retry schedule."""
    return json_response(handlers.replay(runtime_of(), current_user(), delivery_id, webhook_id))


# -- notifications ----------------------------------------------------------------------------------


@doc.op("get", "/api/v1/notifications", "What was sent",
        query=("mine", "channel", "status", "booking_id", "limit", "cursor"))
@bp.get("/api/v1/notifications")
def list_notifications() -> Response:
    """What was sent to the caller (``mine=true``); admins without ``mine`` see every delivery.

    Each item: ``channel``, ``kind``, ``subject``, ``event_type``, ``booking_id``,
    ``status`` (pending, sending, sent, dead, cancelled), ``attempts``, ``sent_at``.
    """
    limit, cursor = page_params()
    items = handlers.list_notifications(
        runtime_of(), current_user(), mine=query_bool("mine"), channel=query_choice("channel", CHANNELS),
        status=query_choice("status", STATUSES), booking_id=request.args.get("booking_id") or None,
        limit=limit, after=cursor,
    )
    return _listed(items, limit)


@doc.op("get", "/api/v1/notifications/preferences", "Your notification preferences")
@bp.get("/api/v1/notifications/preferences")
def get_preferences() -> Response:
    """``reminder_minutes`` (the service default until you choose)."""
    return json_response(handlers.get_preferences(runtime_of(), current_user()))


@doc.op("put", "/api/v1/notifications/preferences", "Set your notification preferences", body=PreferencesIn)
@bp.put("/api/v1/notifications/preferences")
def put_preferences() -> Response:
    """Reminders of your coming bookings move at once to the new lead time."""
    body = parse_body(PreferencesIn)
    return json_response(handlers.set_preferences(runtime_of(), current_user(), body.reminder_minutes))


@doc.op("get", "/api/v1/notifications/dead", "Deliveries that failed for good (admins)", query=("limit", "cursor"))
@bp.get("/api/v1/notifications/dead")
def dead_notifications() -> Response:
    """Each with its attempts; ``POST /api/v1/notifications/{id}/replay`` sends one again."""
    limit, cursor = page_params()
    return _listed(handlers.dead_notifications(runtime_of(), current_user(), limit, cursor), limit)


@doc.op("get", "/api/v1/notifications/{notification_id}", "One delivery with its attempts")
@bp.get("/api/v1/notifications/<notification_id>")
def get_notification(notification_id: str) -> Response:
    """For its recipient, its webhook's owner and admins."""
    return json_response(handlers.get_notification(runtime_of(), current_user(), notification_id))


@doc.op("post", "/api/v1/notifications/{notification_id}/replay", "Replay a dead delivery")
@bp.post("/api/v1/notifications/<notification_id>/replay")
def replay_notification(notification_id: str) -> Response:
    """Admins replay any dead delivery, a webhook's owner those of their webhook."""
    return json_response(handlers.replay(runtime_of(), current_user(), notification_id))
