"""The production shape: every API under gunicorn, every relay and consumer its own process.

PostgreSQL and RabbitMQ from the machine (a fresh database and a vhost of its own); the services
talk only through events, so everything a test sees at booking's port got there through
inventory's outbox, its relay, RabbitMQ and booking's consumer.
"""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import uuid

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests import infra
from tests.e2e.helpers import (
    GUNICORN,
    PYTHON,
    Api,
    Processes,
    clean_env,
    expect,
    expect_problem,
    free_port,
    next_weekday,
    wait_until,
)

pytestmark = pytest.mark.e2e

STARTUP_SECONDS = 45
EVENT_SECONDS = 20
SERVICES = ("inventory", "booking", "notify")
CONSUMERS = ("booking", "notify")


class Deployment:
    """Migrated database, three gunicorn APIs, three relays and two consumers."""

    def __init__(self, procs: Processes, database_url: str, broker_url: str) -> None:
        self.procs = procs
        tag = uuid.uuid4().hex[:8]
        self.env = clean_env(
            LABSHARE_DEV_MODE="1",
            LABSHARE_DATABASE_URL=database_url,
            LABSHARE_BROKER_URL=broker_url,
            LABSHARE_EXCHANGE=f"labshare.events.e2e.{tag}",
            LABSHARE_QUEUE_PREFIX=f"e2e{tag}",
            LABSHARE_RELAY_INTERVAL="0.1",
        )
        migrate = procs.start("migrate", [PYTHON, "-m", "services", "migrate"], self.env)
        migrate.expected_exit = True
        code = migrate.popen.wait(60)
        assert code == 0, migrate.report()

        self.ports = {name: free_port() for name in SERVICES}
        self.apis = {name: Api(f"http://127.0.0.1:{port}") for name, port in self.ports.items()}
        for name, port in self.ports.items():
            # prometheus-client's multiprocess mode, as deploy/gunicorn.conf.py documents it
            metrics_dir = procs.log_dir.parent / f"metrics-{name}"
            metrics_dir.mkdir(parents=True, exist_ok=True)
            procs.start(f"{name}-api", [GUNICORN, "-w", "2", "-b", f"127.0.0.1:{port}", "--graceful-timeout", "5",
                                        f"services.{name}.app:create_app()"],
                        {**self.env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
        for name in SERVICES:
            procs.start(f"{name}-relay", [PYTHON, "-m", f"services.{name}", "relay"], self.env)
        self.consumers = {name: self.start_consumer(name) for name in CONSUMERS}
        for name, api in self.apis.items():
            wait_until(api.healthy, STARTUP_SECONDS, f"{name} (gunicorn) to answer /healthz with 200", procs)

    def start_consumer(self, name: str):
        self.metrics_ports = getattr(self, "metrics_ports", {})
        self.metrics_ports[name] = free_port()
        return self.procs.start(f"{name}-consumer", [PYTHON, "-m", f"services.{name}", "consume", "--metrics-port",
                                                     str(self.metrics_ports[name]), "--metrics-host", "127.0.0.1"],
                                self.env)

    @property
    def inventory(self) -> Api:
        return self.apis["inventory"]

    @property
    def booking(self) -> Api:
        return self.apis["booking"]

    def outbox_backlog(self, name: str) -> int:
        return expect(self.apis[name].get("/healthz"), 200)["outbox_backlog"]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    database_url = infra.fresh_database()
    try:
        vhost, broker_url = infra.create_vhost()
    except BaseException:
        infra.drop_database(database_url)
        raise
    procs = Processes(tmp_path_factory.mktemp("separate-processes") / "logs")
    try:
        yield Deployment(procs, database_url, broker_url)
    finally:
        procs.stop_all()
        infra.delete_vhost(vhost)
        infra.drop_database(database_url)


MANAGER = {"sub": "e2e-manager", "roles": ["researcher", "manager"], "org": "ntnu"}


def tokens(api: Api) -> dict[str, str]:
    return {
        "manager": api.token(MANAGER["sub"], MANAGER["roles"], MANAGER["org"]),
        "ada": api.token("ada"),
        "bob": api.token("bob", org="sintef"),
    }


def create_lab(api: Api, token: str) -> dict:
    body = {"name": f"E2E lab {uuid.uuid4().hex[:6]}", "org": "ntnu", "building": "Elgeseter 10",
            "timezone": "Europe/Oslo",
            "managers": [{"sub": MANAGER["sub"], "name": "E2E manager", "email": "e2e-manager@example.org"}]}
    return expect(api.post("/api/v1/labs", token, body), 201)


def create_resource(api: Api, token: str, lab_id: str) -> dict:
    body = {"lab_id": lab_id, "name": f"Confocal {uuid.uuid4().hex[:6]}", "kind": "equipment",
            "category": "microscopy/confocal",
            "policy": {"slot_minutes": 15, "min_minutes": 15, "max_minutes": 480,
                       "opening_hours": {d: [["08:00", "16:00"]] for d in ("mon", "tue", "wed", "thu", "fri")}},
            "rates": {"internal": 450, "external": 1200, "currency": "NOK"}}
    resource = expect(api.post("/api/v1/resources", token, body), 201)
    assert resource["status"] == "active"
    return resource


def booking_body(resource_id: str, start: dt.datetime, end: dt.datetime) -> dict:
    return {"resource_id": resource_id, "start": start.isoformat(), "end": end.isoformat(), "title": "Imaging"}


def test_book_clash_and_outage_across_processes(deployment):
    inv, book = deployment.inventory, deployment.booking
    tok = tokens(inv)

    lab = create_lab(inv, tok["manager"])
    resource = create_resource(inv, tok["manager"], lab["id"])
    wait_until(lambda: book.knows_resource(tok["ada"], resource["id"]), EVENT_SECONDS,
               "booking's port to learn the resource created at inventory's port", deployment.procs)

    start, end = next_weekday(1, 9), next_weekday(1, 11)
    booking = expect(book.post("/api/v1/bookings", tok["ada"], booking_body(resource["id"], start, end)), 201)
    assert booking["status"] == "confirmed" and booking["user"]["sub"] == "ada"

    clash = book.post("/api/v1/bookings", tok["bob"],
                      booking_body(resource["id"], start + dt.timedelta(hours=1), end + dt.timedelta(hours=1)))
    assert expect_problem(clash, 409)["conflicts"] == [{"start": booking["start"], "end": booking["end"]}]

    # Either gunicorn worker of booking sees the same state (several requests spread over both).
    for _ in range(6):
        mine = expect(book.get("/api/v1/bookings?mine=true", tok["ada"]), 200)
        assert booking["id"] in [b["id"] for b in mine["items"]]

    # An outage created at inventory cancels the booking at booking, through the events only.
    outage = {"start": (start + dt.timedelta(minutes=30)).isoformat(), "end": (end + dt.timedelta(hours=1)).isoformat(),
              "reason": "Laser service"}
    expect(inv.post(f"/api/v1/resources/{resource['id']}/outages", tok["manager"], outage), 201)

    def cancelled():
        current = expect(book.get(f"/api/v1/bookings/{booking['id']}", tok["ada"]), 200)
        return current if current["status"] == "cancelled" else None

    current = wait_until(cancelled, EVENT_SECONDS, "the outage to cancel the booking", deployment.procs)
    assert current["cancel_reason"] == "outage", current
    problem = expect_problem(book.post("/api/v1/bookings", tok["bob"], booking_body(resource["id"], start, end)), 422)
    assert "outage" in [v["rule"] for v in problem["violations"]], problem

    # Everything written to the outboxes was published.
    wait_until(lambda: all(deployment.outbox_backlog(name) == 0 for name in SERVICES), EVENT_SECONDS,
               "every outbox to drain", deployment.procs)


def test_nothing_is_lost_while_the_booking_consumer_is_down(deployment):
    inv, book = deployment.inventory, deployment.booking
    tok = tokens(inv)
    lab = create_lab(inv, tok["manager"])
    first = create_resource(inv, tok["manager"], lab["id"])
    wait_until(lambda: book.knows_resource(tok["ada"], first["id"]), EVENT_SECONDS,
               "booking to learn the first resource", deployment.procs)

    # The consumer dies without a chance to clean up.
    consumer = deployment.consumers["booking"]
    consumer.signal(signal.SIGKILL)
    consumer.expected_exit = True
    consumer.popen.wait(10)

    second = create_resource(inv, tok["manager"], lab["id"])
    # Inventory's relay publishes it to RabbitMQ while nobody consumes booking's queue ...
    wait_until(lambda: deployment.outbox_backlog("inventory") == 0, EVENT_SECONDS,
               "inventory's relay to publish the new resource", deployment.procs)
    # ... so booking does not know it yet.
    expect_problem(book.get(f"/api/v1/availability?resource_id={second['id']}", tok["ada"]), 404)

    deployment.consumers["booking"] = deployment.start_consumer("booking")
    wait_until(lambda: book.knows_resource(tok["ada"], second["id"]), EVENT_SECONDS,
               "the restarted consumer to deliver what was published while it was down", deployment.procs)

    start = next_weekday(2, 10)
    booking = expect(book.post("/api/v1/bookings", tok["ada"],
                               booking_body(second["id"], start, start + dt.timedelta(hours=1))), 201)
    assert booking["status"] == "confirmed"


def _sample(body: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


def test_metrics_add_up_every_gunicorn_worker_and_the_consumer_has_its_own(deployment):
    book = deployment.booking
    token = tokens(deployment.inventory)["ada"]
    route = {"service": "booking", "method": "GET", "route": "/api/v1/bookings", "status": "200"}

    def scraped() -> float:
        resp = book.get("/metrics")
        assert resp.status_code == 200, resp.text
        return _sample(resp.text, "labshare_http_requests_total", **route)

    before = scraped()
    for _ in range(10):
        book.http.close()  # a new connection each time, so both workers answer some
        expect(book.get("/api/v1/bookings?mine=true", token), 200)
    # Whichever worker answers the scrape, it reports the requests of both.
    assert {scraped() - before for _ in range(6)} == {10.0}

    health = expect(book.get("/healthz"), 200)
    assert health["status"] == "ok" and health["broker"] == "ok", health
    consumer = requests.get(f"http://127.0.0.1:{deployment.metrics_ports['booking']}/metrics", timeout=5).text
    assert _sample(consumer, "labshare_events_consumed_total", service="booking", type="resource.created") >= 1
    assert _sample(consumer, "labshare_consumer_queue_ready", service="booking") == 0
    assert _sample(consumer, "labshare_broker_up", service="booking") == 1


def test_every_process_stops_cleanly_on_sigterm(deployment):
    """What docker stop or systemd does: SIGTERM, and each process exits 0 within 10 s. (Runs last: it ends them.)"""
    running = [p for p in deployment.procs.procs if p.alive()]
    assert {p.name for p in running} == {*(f"{n}-api" for n in SERVICES), *(f"{n}-relay" for n in SERVICES),
                                         *(f"{n}-consumer" for n in CONSUMERS)}
    for proc in running:
        proc.expected_exit = True
        proc.signal(signal.SIGTERM)
    for proc in running:
        try:
            code = proc.popen.wait(10)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"{proc.name} ignored SIGTERM for 10 s\n{proc.report()}") from exc
        assert code == 0, proc.report()
