"""``make run`` as a user meets it: ``python -m services run`` on embedded defaults, driven over HTTP.

The process is started exactly as the Makefile starts it (LABSHARE_DEV_MODE=1, a port, a data
directory); the tests then get development tokens, browse the seeded demo data, book, clash, cancel,
provoke every documented error, let an outage cancel a booking through the event path, stop the
process with Ctrl-C and start it again on the same data.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import time
import uuid

import pytest

from tests.e2e.helpers import (
    PYTHON,
    Api,
    Processes,
    clean_env,
    expect,
    expect_problem,
    free_port,
    next_weekday,
    parse,
    utc,
    wait_until,
)

pytestmark = pytest.mark.e2e

STARTUP_SECONDS = 45
DEMO_LABS = 5
DEMO_RESOURCES = 12

# The demo users of the dev login (services/demo.py), as a user would type them.
ADA = {"sub": "ada", "name": "Ada Researcher", "email": "ada@ntnu.example.org", "org": "ntnu", "roles": ["researcher"]}
OLA = {"sub": "ola", "name": "Ola Startup", "email": "ola@pulsetech.example.org", "org": "pulsetech",
       "roles": ["researcher"]}
IMAGING_MANAGER = {"sub": "imaging-manager", "name": "Imaging lab manager",
                   "email": "imaging-manager@ntnu.example.org", "org": "ntnu", "roles": ["researcher", "manager"]}


class Labshare:
    """One ``python -m services run`` process and a client of its origin."""

    def __init__(self, procs: Processes, data_dir, name: str = "labshare-run") -> None:
        self.port = free_port()
        self.env = clean_env(LABSHARE_DEV_MODE="1", LABSHARE_PORT=str(self.port), LABSHARE_DATA_DIR=str(data_dir))
        self.procs = procs
        self.proc = procs.start(name, [PYTHON, "-m", "services", "run"], self.env)
        self.api = Api(f"http://127.0.0.1:{self.port}")
        wait_until(self.api.healthy, STARTUP_SECONDS, f"{name} to answer /healthz with 200", procs)
        self.tokens: dict[str, str] = {}

    def token(self, user: dict) -> str:
        """A development token for a demo user, from POST /api/v1/dev/token."""
        if user["sub"] not in self.tokens:
            resp = self.api.post("/api/v1/dev/token", json=user)
            self.tokens[user["sub"]] = expect(resp, 201)["token"]
        return self.tokens[user["sub"]]

    def interrupt(self, timeout: float = 10.0) -> int:
        """Ctrl-C: SIGINT, and the exit code within ``timeout`` seconds."""
        self.proc.signal(signal.SIGINT)
        try:
            code = self.proc.popen.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"labshare did not exit within {timeout}s of SIGINT\n{self.proc.report()}") from exc
        self.proc.expected_exit = True
        return code


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("make-run")


@pytest.fixture(scope="module")
def procs(run_dir):
    registry = Processes(run_dir / "logs")
    yield registry
    registry.stop_all()


@pytest.fixture(scope="module")
def labshare(procs, run_dir) -> Labshare:
    return Labshare(procs, run_dir / "var")


def all_items(api: Api, path: str, token: str) -> list[dict]:
    """Every item of a list endpoint, following ``next`` cursors."""
    items: list[dict] = []
    sep = "&" if "?" in path else "?"
    cursor = None
    while True:
        url = path + (f"{sep}cursor={cursor}" if cursor else "")
        body = expect(api.get(url, token), 200)
        assert set(body) >= {"items", "next"}, body
        items += body["items"]
        cursor = body["next"]
        if not cursor:
            return items


def resource_named(api: Api, token: str, name: str) -> dict:
    matches = [r for r in all_items(api, "/api/v1/resources?limit=500", token) if r["name"] == name]
    assert len(matches) == 1, f"expected one resource named {name!r}, found {len(matches)}"
    return matches[0]


def booking_body(resource_id: str, start: dt.datetime, end: dt.datetime, title: str = "Cell culture") -> dict:
    return {"resource_id": resource_id, "start": start.isoformat(), "end": end.isoformat(), "title": title,
            "project": "NFR-12345"}


def test_healthz_reports_every_service(labshare):
    resp = labshare.api.get("/healthz")
    body = expect(resp, 200)
    assert body["status"] == "ok", body
    assert set(body["services"]) == {"inventory", "booking", "notify"}, body
    for name, report in body["services"].items():
        assert report.get("status") == "ok", (name, report)


def test_researcher_books_a_wet_lab_bench(labshare):
    api = labshare.api
    ada, ola = labshare.token(ADA), labshare.token(OLA)

    # The seeded demo data is there: labs, and six wet lab benches in one category.
    labs = all_items(api, "/api/v1/labs", ada)
    assert {"Cell imaging lab", "Shared wet lab"} <= {lab["name"] for lab in labs}
    benches = all_items(api, "/api/v1/resources?category=wetlab/bench", ada)
    assert sorted(r["name"] for r in benches) == [f"Wet lab bench {n}" for n in range(1, 7)]
    bench = next(r for r in benches if r["name"] == "Wet lab bench 1")
    assert bench["status"] == "active"
    assert bench["policy"]["slot_minutes"] == 60
    assert bench["policy"]["opening_hours"]["mon"] == [["08:00", "16:00"]]
    assert "sat" not in (bench["policy"]["opening_hours"] or {})
    wait_until(lambda: api.knows_resource(ada, bench["id"]), 15, "booking to learn the seeded bench", labshare.procs)

    # Ada books Tuesday 09-10 Oslo time.
    start, end = next_weekday(1, 9), next_weekday(1, 10)
    resp = api.post("/api/v1/bookings", ada, booking_body(bench["id"], start, end))
    booking = expect(resp, 201)
    assert resp.headers["Location"].endswith(f"/api/v1/bookings/{booking['id']}")
    assert booking["status"] == "confirmed"
    assert booking["resource_id"] == bench["id"]
    assert booking["start"] == utc(start) and booking["end"] == utc(end), booking
    assert booking["user"]["sub"] == "ada" and booking["user"]["org"] == "ntnu"
    assert booking["title"] == "Cell culture" and booking["project"] == "NFR-12345"
    for member in ("created_at", "updated_at", "sequence"):
        assert member in booking, booking

    # It is among her bookings, and only busy time to Ola.
    mine = all_items(api, "/api/v1/bookings?mine=true", ada)
    assert booking["id"] in [b["id"] for b in mine]
    assert booking["id"] not in [b.get("id") for b in all_items(api, "/api/v1/bookings?mine=true", ola)]
    seen_by_ola = all_items(api, f"/api/v1/bookings?resource_id={bench['id']}", ola)
    busy = [b for b in seen_by_ola if b["start"] == booking["start"]]
    assert len(busy) == 1, seen_by_ola
    assert "title" not in busy[0] and "user" not in busy[0], busy[0]
    assert expect(api.get(f"/api/v1/bookings/{booking['id']}", ada), 200)["title"] == "Cell culture"

    # Ola wants 08-10 the same day on the same bench: 409 with the busy time only.
    clash = api.post("/api/v1/bookings", ola, booking_body(bench["id"], start - dt.timedelta(hours=1), end))
    problem = expect_problem(clash, 409)
    assert problem["conflicts"] == [{"start": booking["start"], "end": booking["end"]}], problem

    # Touching is allowed: 10-11 right after Ada.
    after = expect(api.post("/api/v1/bookings", ola, booking_body(bench["id"], end, end + dt.timedelta(hours=1))), 201)

    # Saturday is outside the opening hours: 422 naming the rule.
    saturday = next_weekday(5, 10)
    resp = api.post("/api/v1/bookings", ada, booking_body(bench["id"], saturday, saturday + dt.timedelta(hours=1)))
    problem = expect_problem(resp, 422)
    assert "opening_hours" in [v["rule"] for v in problem["violations"]], problem

    # Ada cancels; the time is free at once and Ola gets it.
    cancelled = expect(api.post(f"/api/v1/bookings/{booking['id']}/cancel", ada, {"reason": "plans changed"}), 200)
    assert cancelled["status"] == "cancelled"
    assert cancelled["sequence"] > booking["sequence"]
    availability = expect(api.get(
        f"/api/v1/availability?resource_id={bench['id']}&from={utc(start)}&to={utc(end)}", ola), 200)
    assert [(parse(b["start"]), parse(b["end"])) for b in availability["busy"]] == [], availability
    taken = expect(api.post("/api/v1/bookings", ola, booking_body(bench["id"], start, end)), 201)
    assert taken["status"] == "confirmed" and taken["user"]["sub"] == "ola"
    for b in (taken, after):
        expect(api.post(f"/api/v1/bookings/{b['id']}/cancel", ola, {}), 200)


def test_errors_are_problem_documents(labshare):
    api = labshare.api
    ada = labshare.token(ADA)
    bench = resource_named(api, ada, "Wet lab bench 3")
    start = next_weekday(2, 9)

    # Malformed JSON: 400.
    resp = api.request("POST", "/api/v1/bookings", ada, data=b'{"resource_id": ',
                       headers={"Content-Type": "application/json"})
    expect_problem(resp, 400)

    # JSON, but a naive timestamp: 422 with errors naming the field.
    body = booking_body(bench["id"], start, start + dt.timedelta(hours=1))
    body["start"] = start.replace(tzinfo=None).isoformat()
    problem = expect_problem(api.post("/api/v1/bookings", ada, body), 422)
    assert problem["errors"] and all(set(e) >= {"field", "message"} for e in problem["errors"]), problem
    assert any("start" in e["field"] for e in problem["errors"]), problem

    # Unknown ids: 404.
    expect_problem(api.get(f"/api/v1/bookings/{uuid.uuid4()}", ada), 404)
    expect_problem(api.get(f"/api/v1/resources/{uuid.uuid4()}", ada), 404)
    expect_problem(api.get(f"/api/v1/labs/{uuid.uuid4()}", ada), 404)

    # No token, or a forged one: 401.
    expect_problem(api.get("/api/v1/bookings?mine=true"), 401)
    valid = booking_body(bench["id"], start, start + dt.timedelta(hours=1))
    expect_problem(api.post("/api/v1/bookings", None, valid), 401)
    expect_problem(api.get("/api/v1/resources", "not-a-token"), 401)

    # A researcher may not create a lab: 403.
    lab = {"name": "Ada's own lab", "org": "ntnu", "building": "Elgeseter 10", "timezone": "Europe/Oslo",
           "managers": [{"sub": "ada", "name": "Ada", "email": "ada@ntnu.example.org"}]}
    expect_problem(api.post("/api/v1/labs", ada, lab), 403)

    # A body over 1 MiB: 413.
    big = json.dumps({**booking_body(bench["id"], start, start + dt.timedelta(hours=1)),
                      "title": "x" * (1024 * 1024 + 10)}).encode()
    resp = api.request("POST", "/api/v1/bookings", ada, data=big, headers={"Content-Type": "application/json"})
    expect_problem(resp, 413)

    # A path nobody serves is a problem document too, and the server is still healthy after all that.
    expect_problem(api.get("/api/v1/nothing-here", ada), 404)
    expect(api.get("/healthz"), 200)


def test_openapi_documents(labshare):
    api = labshare.api
    booking = expect(api.get("/api/v1/openapi/booking.json"), 200)
    assert booking["openapi"].startswith("3.1."), booking.get("openapi")
    assert booking["info"]["title"], booking["info"]
    assert {"/api/v1/bookings", "/api/v1/availability", "/api/v1/slots"} <= set(booking["paths"]), booking["paths"]
    assert "post" in booking["paths"]["/api/v1/bookings"]
    inventory = expect(api.get("/api/v1/openapi/inventory.json"), 200)
    assert inventory["openapi"].startswith("3.1."), inventory.get("openapi")
    assert {"/api/v1/labs", "/api/v1/resources"} <= set(inventory["paths"]), inventory["paths"]
    notify = expect(api.get("/api/v1/openapi/notify.json"), 200)
    assert notify["openapi"].startswith("3.1."), notify.get("openapi")
    expect_problem(api.get("/api/v1/openapi/nothing.json"), 404)


def test_outage_cancels_a_booking(labshare):
    api = labshare.api
    ada, manager = labshare.token(ADA), labshare.token(IMAGING_MANAGER)
    leica = resource_named(api, ada, "Leica Stellaris 8 confocal")
    wait_until(lambda: api.knows_resource(ada, leica["id"]), 15, "booking to learn the Leica", labshare.procs)

    start, end = next_weekday(3, 10), next_weekday(3, 12)
    booking = expect(api.post("/api/v1/bookings", ada, booking_body(leica["id"], start, end, "Live-cell imaging")), 201)
    assert booking["status"] == "confirmed"

    # Ada is no manager of the lab; the imaging manager is.
    outage = {"start": (start - dt.timedelta(hours=1)).isoformat(), "end": (start + dt.timedelta(hours=1)).isoformat(),
              "reason": "Laser service"}
    expect_problem(api.post(f"/api/v1/resources/{leica['id']}/outages", ada, outage), 403)
    created = expect(api.post(f"/api/v1/resources/{leica['id']}/outages", manager, outage), 201)
    assert created["id"]

    def cancelled():
        current = expect(api.get(f"/api/v1/bookings/{booking['id']}", ada), 200)
        return current if current["status"] == "cancelled" else None

    current = wait_until(cancelled, 15, "the outage to cancel the booking", labshare.procs)
    assert current["cancel_reason"] == "outage", current

    # Nobody may book inside the outage now.
    resp = api.post("/api/v1/bookings", ada, booking_body(leica["id"], start, start + dt.timedelta(minutes=30)))
    problem = expect_problem(resp, 422)
    assert "outage" in [v["rule"] for v in problem["violations"]], problem


def test_ctrl_c_stops_cleanly_and_restart_keeps_the_data(labshare, procs, run_dir):
    api = labshare.api
    ada = labshare.token(ADA)
    bench = resource_named(api, ada, "Wet lab bench 2")
    wait_until(lambda: api.knows_resource(ada, bench["id"]), 15, "booking to learn the bench", procs)
    start = next_weekday(4, 13)
    booking = expect(api.post("/api/v1/bookings", ada, booking_body(bench["id"], start, start + dt.timedelta(hours=2),
                                                                       "Kept across restarts")), 201)
    labs_before = all_items(api, "/api/v1/labs", ada)
    resources_before = all_items(api, "/api/v1/resources?limit=500", ada)
    assert len(labs_before) == DEMO_LABS, [lab["name"] for lab in labs_before]
    assert len(resources_before) == DEMO_RESOURCES, [r["name"] for r in resources_before]

    began = time.monotonic()
    code = labshare.interrupt(10)
    assert code == 0, labshare.proc.report()
    assert "labshare stopped" in labshare.proc.stdout(), labshare.proc.report()
    assert time.monotonic() - began < 10

    # Start it again on the same data directory.
    again = Labshare(procs, run_dir / "var", name="labshare-run-again")
    api2, ada2 = again.api, again.token(ADA)
    labs_after = all_items(api2, "/api/v1/labs", ada2)
    resources_after = all_items(api2, "/api/v1/resources?limit=500", ada2)
    assert sorted(lab["id"] for lab in labs_after) == sorted(lab["id"] for lab in labs_before), "demo labs duplicated"
    assert sorted(r["id"] for r in resources_after) == sorted(r["id"] for r in resources_before)
    kept = expect(api2.get(f"/api/v1/bookings/{booking['id']}", ada2), 200)
    assert kept["status"] == "confirmed" and kept["title"] == "Kept across restarts", kept
    assert booking["id"] in [b["id"] for b in all_items(api2, "/api/v1/bookings?mine=true", ada2)]
    problem = expect_problem(api2.post("/api/v1/bookings", again.token(OLA),
                                       booking_body(bench["id"], start, start + dt.timedelta(hours=1))), 409)
    assert problem["conflicts"] == [{"start": kept["start"], "end": kept["end"]}]

    assert again.interrupt(10) == 0, again.proc.report()
    assert "labshare stopped" in again.proc.stdout()
