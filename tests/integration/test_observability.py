"""Request ids and traces, /healthz (ok, degraded, down) and /metrics, on embedded defaults."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import re
import signal
import urllib.request
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select, update
from werkzeug.test import Client

from services.gateway import Gateway
from services.inventory.app import build_runtime as build_inventory
from services.inventory.app import create_app as inventory_app
from shared.cli import JsonFormatter
from shared.config import Settings
from shared.events import make_event
from shared.migrate import upgrade
from shared.outbox import add_event
from shared.timeutil import now
from tests.e2e.helpers import PYTHON, Processes, clean_env, free_port, wait_until
from tests.harness import next_weekday, rfc

HEX32 = re.compile(r"^[0-9a-f]{32}$")


def service_client(stack, name: str) -> Client:
    """A client of one service's own app (``/metrics`` is not routed by the gateway)."""
    return Client(stack.app.apps[name])


def samples(body: str) -> list:
    return [s for family in text_string_to_metric_families(body) for s in family.samples]


def value(body: str, name: str, **labels) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(s.value for s in samples(body) if s.name == name and labels.items() <= s.labels.items())


def outbox_events(runtime) -> list[dict]:
    t = runtime.events.outbox
    with runtime.db.read() as session:
        return [json.loads(p) for p in session.scalars(select(t.c.payload).order_by(t.c.id))]


# -- request ids and traces -------------------------------------------------------------------------


def test_request_ids_are_kept_or_made_and_always_returned(sqlite_stack):
    resp = sqlite_stack.get("/api/v1/labs", "ada", headers={"X-Request-Id": "client-id-1"})
    assert resp.status_code == 200 and resp.headers["X-Request-Id"] == "client-id-1"
    made = sqlite_stack.get("/api/v1/labs", "ada").headers["X-Request-Id"]
    assert HEX32.match(made)
    odd = sqlite_stack.get("/api/v1/labs", "ada", headers={"X-Request-Id": 'bad id "quoted"'})
    assert HEX32.match(odd.headers["X-Request-Id"])
    problem = sqlite_stack.get("/api/v1/labs/nope", "ada", headers={"X-Request-Id": "client-id-2"})
    assert problem.status_code == 404 and problem.headers["X-Request-Id"] == "client-id-2"


def test_events_carry_the_request_trace_to_consumers_and_their_logs(sqlite_stack):
    stack = sqlite_stack
    captured = io.StringIO()
    handler = logging.StreamHandler(captured)
    handler.setFormatter(JsonFormatter())
    handler.setLevel(logging.INFO)
    logger = logging.getLogger("shared.messaging")
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        resource = stack.make_resource()
        start = next_weekday(2, 9)
        booking = stack.book("ada", resource["id"], start, start + dt.timedelta(hours=1)).get_json()
        request_id = uuid.uuid4().hex
        outage = stack.post(f"/api/v1/resources/{resource['id']}/outages", stack.MANAGER,
                            {"start": rfc(start), "end": rfc(start + dt.timedelta(hours=2)), "reason": "Laser"},
                            headers={"X-Request-Id": request_id})
        assert outage.status_code == 201
        booking_rt = stack.runtimes["booking"]

        def cancelled():
            return [e for e in outbox_events(booking_rt)
                    if e["type"] == "booking.cancelled" and e["data"]["id"] == booking["id"]]

        (event,) = stack.eventually(cancelled, what="the outage to cancel the booking")
        # The inventory request's trace id is its (32-hex) request id; booking's consumer continued it.
        (outage_event,) = [e for e in outbox_events(stack.runtimes["inventory"]) if e["type"] == "outage.created"]
        assert outage_event["traceparent"].split("-")[1] == request_id
        assert event["traceparent"].split("-")[1] == request_id
        assert event["traceparent"] != outage_event["traceparent"], "the consumer's span is a span of its own"
        stack.sync()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    handled = [line for line in lines if line.get("event_id") == outage_event["id"]]
    assert handled, lines
    assert handled[0]["event_traceparent"] == outage_event["traceparent"]
    assert handled[0]["trace_id"] == request_id and handled[0]["event_type"] == "outage.created"


def test_a_caller_traceparent_is_continued_and_other_request_ids_are_hashed(sqlite_stack):
    stack = sqlite_stack
    caller_trace = uuid.uuid4().hex
    stack.post("/api/v1/labs", stack.MANAGER, {"name": "Traced lab", "org": "ntnu", "timezone": "Europe/Oslo",
                                               "managers": []},
               headers={"traceparent": f"00-{caller_trace}-{'a' * 16}-01", "X-Request-Id": "req-1"})
    stack.post("/api/v1/labs", stack.MANAGER, {"name": "Plain lab", "org": "ntnu", "timezone": "Europe/Oslo",
                                               "managers": []}, headers={"X-Request-Id": "req-2"})
    events = {e["data"]["name"]: e for e in outbox_events(stack.runtimes["inventory"])}
    assert events["Traced lab"]["traceparent"].startswith(f"00-{caller_trace}-")
    plain = events["Plain lab"]["traceparent"].split("-")[1]
    assert HEX32.match(plain) and plain != caller_trace


def test_an_event_made_outside_any_request_starts_a_trace_of_its_own():
    first = make_event("inventory", "lab.created", {"id": "x"})["traceparent"]
    second = make_event("inventory", "lab.created", {"id": "x"})["traceparent"]
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", first)
    assert first.split("-")[1] != second.split("-")[1], "unrelated work gets unrelated traces"


# -- metrics ----------------------------------------------------------------------------------------------


def test_metrics_of_every_service_app(sqlite_stack):
    stack = sqlite_stack
    booking_metrics = service_client(stack, "booking")
    before = booking_metrics.get("/metrics").get_data(as_text=True)
    resource = stack.make_resource(policy={"max_minutes": 120})
    start = next_weekday(3, 9)
    assert stack.book("ada", resource["id"], start, start + dt.timedelta(hours=1)).status_code == 201
    assert stack.book("ola", resource["id"], start, start + dt.timedelta(hours=1)).status_code == 409
    assert stack.book("ola", resource["id"], start, start + dt.timedelta(hours=5)).status_code == 422
    stack.sync()

    resp = booking_metrics.get("/metrics")
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/plain; version=")
    after = resp.get_data(as_text=True)
    route = {"service": "booking", "method": "POST", "route": "/api/v1/bookings"}
    for status in ("201", "409", "422"):
        name = "labshare_http_requests_total"
        assert value(after, name, **route, status=status) - value(before, name, **route, status=status) == 1
    assert value(after, "labshare_http_request_duration_seconds_count", **route) >= 3
    assert value(after, "labshare_http_request_duration_seconds_bucket",
                 route="/api/v1/bookings/<booking_id>") >= 0  # route templates, not ids, are the labels
    assert not [s for s in samples(after) if "route" in s.labels and re.search(r"[0-9a-f]{8}-", s.labels["route"])]
    assert value(after, "labshare_outbox_backlog", service="booking") >= 0
    assert value(after, "labshare_outbox_oldest_unsent_age_seconds", service="booking") >= 0
    assert value(after, "labshare_broker_up", service="booking") == 1
    assert value(after, "labshare_consumer_queue_ready", service="booking") >= 0
    assert value(after, "labshare_events_consumed_total", service="booking", type="resource.created") >= 1
    assert value(after, "labshare_event_lag_seconds_count", service="booking", type="resource.created") >= 1
    inventory = service_client(stack, "inventory").get("/metrics").get_data(as_text=True)
    assert value(inventory, "labshare_events_published_total", service="inventory", type="resource.created") >= 1
    notify = service_client(stack, "notify").get("/metrics")
    assert notify.status_code == 200


# -- health -----------------------------------------------------------------------------------------------


def _inventory(tmp_path, **changes):
    settings = Settings(data_dir=str(tmp_path / "var"), exchange=f"labshare.events.{uuid.uuid4().hex[:8]}",
                        queue_prefix=f"h{uuid.uuid4().hex[:8]}", health_broker_interval=0.0, **changes)
    if settings.database_url is None:
        upgrade("inventory", settings)
    runtime = build_inventory(settings)
    return runtime, inventory_app(runtime=runtime)


def test_healthz_ok_degraded_and_down(tmp_path):
    ok_rt, ok_app = _inventory(tmp_path / "ok")
    body = Client(ok_app).get("/healthz").get_json()
    assert body["status"] == "ok" and body["broker"] == "ok" and body["outbox_backlog"] == 0

    # No broker: the API serves, and says so.
    _rt, no_broker = _inventory(tmp_path / "nobroker", broker_url=f"amqp://guest:guest@127.0.0.1:{free_port()}//")
    resp = Client(no_broker).get("/healthz")
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["status"] == "degraded" and resp.get_json()["broker"] == "unreachable"

    # An outbox nobody publishes: degraded once its oldest event is older than the limit.
    old_rt, old_app = _inventory(tmp_path / "old", health_outbox_age=30.0)
    with old_rt.db.begin() as session:
        add_event(session, old_rt.events.outbox, make_event("inventory", "lab.created", {"id": "l-1"}))
    assert Client(old_app).get("/healthz").get_json()["status"] == "ok"
    with old_rt.db.begin() as session:
        session.execute(update(old_rt.events.outbox).values(created_at=now() - dt.timedelta(seconds=45)))
    resp = Client(old_app).get("/healthz")
    body = resp.get_json()
    assert resp.status_code == 200 and body["status"] == "degraded", body
    assert body["outbox_backlog"] == 1 and 44 < body["outbox_oldest_age_seconds"] < 60
    metrics = Client(old_app).get("/metrics").get_data(as_text=True)
    assert value(metrics, "labshare_outbox_backlog", service="inventory") == 1
    assert value(metrics, "labshare_outbox_oldest_unsent_age_seconds", service="inventory") > 44

    # No database: down.
    _rt, no_db = _inventory(tmp_path / "nodb", database_url=f"postgresql://nobody@127.0.0.1:{free_port()}/none")
    resp = Client(no_db).get("/healthz")
    assert resp.status_code == 503 and resp.get_json()["status"] == "down"

    # The gateway of make run: 200 while services are only degraded, 503 when one is down.
    gateway = Client(Gateway({"inventory": ok_app, "booking": old_app}))
    resp = gateway.get("/healthz")
    assert resp.status_code == 200 and resp.get_json()["status"] == "degraded"
    gateway = Client(Gateway({"inventory": ok_app, "booking": old_app, "notify": no_db}))
    resp = gateway.get("/healthz")
    assert resp.status_code == 503 and resp.get_json()["status"] == "down"
    assert Client(Gateway({"inventory": ok_app})).get("/healthz").get_json()["status"] == "ok"


# -- a relay's own metrics port ---------------------------------------------------------------------------------


@pytest.mark.e2e
def test_relay_process_serves_metrics_on_its_port(tmp_path):
    env = clean_env(LABSHARE_DATA_DIR=str(tmp_path / "var"))
    procs = Processes(tmp_path / "logs")
    try:
        migrate = procs.start("migrate", [PYTHON, "-m", "services.inventory", "migrate"], env)
        migrate.expected_exit = True
        assert migrate.popen.wait(60) == 0, migrate.report()
        port = free_port()
        relay = procs.start("relay", [PYTHON, "-m", "services.inventory", "relay", "--metrics-port", str(port),
                                      "--metrics-host", "127.0.0.1"], env)

        def scrape() -> str | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                    return resp.read().decode()
            except OSError:
                return None

        body = wait_until(scrape, 30, "the relay's metrics port", procs)
        assert value(body, "labshare_outbox_backlog", service="inventory") == 0
        assert value(body, "labshare_broker_up", service="inventory") == 1
        assert "labshare_events_published_total" in body or "labshare_events_published" in body
        relay.expected_exit = True
        relay.signal(signal.SIGTERM)
        assert relay.popen.wait(15) == 0, relay.report()
    finally:
        procs.stop_all()
