"""The event contract (docs: API.md, "Events"), as an outsider sees it on RabbitMQ.

A scripted scenario drives the real services (PostgreSQL, RabbitMQ, in this
process) over HTTP; a pika consumer (not kombu, which the services use) reads
every event from a queue of its own bound to the exchange and checks each one:
AMQP properties, the CloudEvents attributes and the snapshot in ``data``.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections import Counter
from typing import Any

import pytest

from tests.conftest import _drop_queues, postgres_settings
from tests.eventtap import Delivered, EventTap
from tests.harness import Stack, local

pytestmark = pytest.mark.integration

EXPECTED_TYPES = {
    "lab.created", "lab.updated", "resource.created", "resource.updated", "resource.retired",
    "outage.created", "outage.deleted", "qualification.granted", "qualification.revoked",
    "booking.created", "booking.confirmed", "booking.updated", "booking.cancelled", "booking.declined",
}
SOURCES = {"lab": "inventory", "resource": "inventory", "outage": "inventory", "qualification": "inventory",
           "booking": "booking", "notification": "notify"}
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-0[01]$")
ADA = ("ada", ("researcher",), "ntnu")


@pytest.fixture
def scenario(rabbit_vhost, pg_url):
    settings = postgres_settings(pg_url, rabbit_vhost)
    tap = EventTap(rabbit_vhost, settings.exchange)
    stack = Stack(settings)
    try:
        yield stack, tap, settings
    finally:
        stack.close()
        tap.close()
        _drop_queues(settings)


class Traced:
    """Requests that each carry a fresh ``X-Request-Id``, remembered by the event types they should cause."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.request_ids: dict[str, list[str]] = {}

    def call(self, method: str, path: str, who: Any, body: Any, status: int, causes: tuple[str, ...]) -> dict:
        request_id = uuid.uuid4().hex
        resp = self.stack.call(method, path, who, body, headers={"X-Request-Id": request_id})
        assert resp.status_code == status, (method, path, resp.status_code, resp.get_json())
        assert resp.headers["X-Request-Id"] == request_id
        for type_ in causes:
            self.request_ids.setdefault(type_, []).append(request_id)
        return resp.get_json() if resp.data else {}


def test_every_event_type_meets_the_contract(scenario):
    stack, tap, settings = scenario
    t = Traced(stack)
    mgr = Stack.MANAGER
    managers = [{"sub": "lab-manager", "name": "Lab Manager", "email": "lab-manager@example.org"}]

    lab = t.call("POST", "/api/v1/labs", mgr, {"name": "Contract lab", "org": "ntnu", "timezone": "Europe/Oslo",
                                                "managers": managers}, 201, ("lab.created",))
    t.call("PATCH", f"/api/v1/labs/{lab['id']}", mgr, {"building": "Elgeseter 12"}, 200, ("lab.updated",))
    resource = t.call("POST", "/api/v1/resources", mgr, {"lab_id": lab["id"], "name": "Contract confocal",
                                                         "kind": "equipment", "category": "microscopy/confocal"},
                      201, ("resource.created",))
    t.call("PATCH", f"/api/v1/resources/{resource['id']}", mgr, {"description": "Now with Airyscan"}, 200,
           ("resource.updated",))
    gated = t.call("POST", "/api/v1/resources", mgr, {"lab_id": lab["id"], "name": "Contract sorter",
                                                      "kind": "equipment", "category": "cytometry/sorter",
                                                      "policy": {"requires_approval": True}},
                   201, ("resource.created",))
    t.call("POST", f"/api/v1/resources/{resource['id']}/qualifications", mgr, {"sub": "ada"}, 201,
           ("qualification.granted",))
    t.call("DELETE", f"/api/v1/resources/{resource['id']}/qualifications/ada", mgr, None, 204,
           ("qualification.revoked",))
    stack.booking_knows(resource["id"])
    stack.booking_knows(gated["id"])

    start = local(5, 9)
    slot = {"start": start.isoformat(), "end": (start + dt.timedelta(hours=1)).isoformat()}
    booking = t.call("POST", "/api/v1/bookings", ADA, {"resource_id": resource["id"], **slot, "title": "Imaging"},
                     201, ("booking.created", "booking.confirmed"))
    t.call("PATCH", f"/api/v1/bookings/{booking['id']}", ADA, {"title": "Live-cell imaging"}, 200,
           ("booking.updated",))
    t.call("POST", f"/api/v1/bookings/{booking['id']}/cancel", ADA, {"reason": "plans changed"}, 200,
           ("booking.cancelled",))
    pending = t.call("POST", "/api/v1/bookings", ADA, {"resource_id": gated["id"], **slot}, 201, ("booking.created",))
    assert pending["status"] == "pending"
    t.call("POST", f"/api/v1/bookings/{pending['id']}/decline", mgr, {"reason": "sorter reserved"}, 200,
           ("booking.declined",))
    # An outage over a confirmed booking: booking's consumer cancels it, in the outage request's trace.
    victim = t.call("POST", "/api/v1/bookings", ADA, {"resource_id": resource["id"], **slot}, 201,
                    ("booking.created", "booking.confirmed"))
    outage = t.call("POST", f"/api/v1/resources/{resource['id']}/outages", mgr,
                    {**slot, "reason": "Laser service"}, 201, ("outage.created", "booking.cancelled"))
    t.call("DELETE", f"/api/v1/resources/{resource['id']}/outages/{outage['id']}", mgr, None, 204,
           ("outage.deleted",))
    t.call("PATCH", f"/api/v1/resources/{gated['id']}", mgr, {"status": "retired"}, 200,
           ("resource.updated", "resource.retired"))

    expected = Counter({k: len(v) for k, v in t.request_ids.items()})
    seen = tap.wait_for(lambda s: Counter(d.routing_key for d in s) >= expected, 30, f"the events {dict(expected)}")
    kinds = {d.routing_key for d in seen}
    assert kinds >= EXPECTED_TYPES, EXPECTED_TYPES - kinds

    ids = [d.event["id"] for d in seen]
    assert len(ids) == len(set(ids)), "every event has an id of its own"
    for delivered in seen:
        check_envelope(delivered, settings.exchange)
        check_snapshot(delivered.event, email_of={"ada": "ada@example.org"})

    by_type: dict[str, list[dict]] = {}
    for d in seen:
        by_type.setdefault(d.routing_key, []).append(d.event)
    # Each request's events carry its trace: the 32-hex request id is the trace id.
    for type_, request_ids in t.request_ids.items():
        traces = Counter(TRACEPARENT.match(e["traceparent"]).group(1) for e in by_type[type_])
        assert traces == Counter(request_ids), type_
    cancelled = {e["data"]["id"]: e["data"] for e in by_type["booking.cancelled"]}
    assert cancelled[victim["id"]]["cancel_reason"] == "outage"
    assert cancelled[booking["id"]]["status"] == "cancelled"
    assert {e["data"]["id"] for e in by_type["booking.declined"]} == {pending["id"]}
    assert by_type["resource.retired"][0]["data"]["status"] == "retired"
    versions = [e["data"]["version"] for e in by_type["lab.created"] + by_type["lab.updated"]]
    assert versions == sorted(versions) and versions[0] < versions[-1]


def check_envelope(d: Delivered, exchange: str) -> None:
    """AMQP properties and the CloudEvents 1.0 attributes (structured JSON mode)."""
    event = d.event
    assert d.exchange == exchange
    assert d.properties.content_type == "application/cloudevents+json", d.properties
    assert d.properties.delivery_mode == 2, "persistent"
    assert d.routing_key == event["type"]
    assert event["specversion"] == "1.0"
    assert isinstance(event["id"], str) and event["id"]
    family = event["type"].split(".")[0]
    assert event["source"] == f"/labshare/{SOURCES[family]}", event
    assert RFC3339.match(event["time"]), event["time"]
    dt.datetime.fromisoformat(event["time"].replace("Z", "+00:00"))
    assert event["datacontenttype"] == "application/json"
    assert isinstance(event["data"], dict) and event["data"]
    assert TRACEPARENT.match(event["traceparent"]), event.get("traceparent")


def check_snapshot(event: dict, email_of: dict[str, str]) -> None:
    """``data`` is the whole entity after the change."""
    data, family = event["data"], event["type"].split(".")[0]
    if family == "lab":
        assert {"id", "name", "org", "timezone", "managers", "version"} <= set(data), data
        assert isinstance(data["version"], int)
        assert all(m.get("email") for m in data["managers"])
    elif family == "resource":
        assert {"id", "lab_id", "name", "kind", "category", "status", "policy", "version"} <= set(data), data
        assert isinstance(data["version"], int)
    elif family == "outage":
        assert {"id", "resource_id", "start", "end"} <= set(data), data
    elif family == "qualification":
        assert {"resource_id", "sub"} <= set(data), data
    elif family == "booking":
        assert {"id", "resource_id", "start", "end", "status", "user", "sequence"} <= set(data), data
        assert data["user"]["email"] == email_of[data["user"]["sub"]], data["user"]
        assert data["lab"]["managers"] and all(m.get("email") for m in data["lab"]["managers"])
        status = {"booking.confirmed": "confirmed", "booking.cancelled": "cancelled",
                  "booking.declined": "declined"}.get(event["type"])
        if status:
            assert data["status"] == status, (event["type"], data["status"])
