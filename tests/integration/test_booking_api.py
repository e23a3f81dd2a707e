"""Booking over HTTP: every policy rule, privacy, changes, decisions, outages, availability and slots."""

from __future__ import annotations

import datetime as dt
import time

import jwt
from sqlalchemy import text

from services.booking.app import create_app as create_booking_app
from shared import db
from shared.db import admin_engine
from tests import infra
from tests.conftest import _drop_queues, postgres_settings
from tests.harness import OSLO, Stack, local, next_weekday, rfc

ADA, BOB = "ada", "bob"


def rules(resp) -> list[str]:
    assert resp.status_code == 422, resp.get_json()
    return [v["rule"] for v in resp.get_json()["violations"]]


def test_create_returns_the_contract_fields(stack):
    res = stack.make_resource()
    start, end = next_weekday(1, 9), next_weekday(1, 11)
    resp = stack.book(ADA, res["id"], start, end, project="NFR-12345")
    assert resp.status_code == 201
    b = resp.get_json()
    assert resp.headers["Location"] == f"/api/v1/bookings/{b['id']}"
    assert b["status"] == "confirmed" and b["sequence"] == 0
    assert b["start"] == start.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert b["user"]["sub"] == "ada" and b["project"] == "NFR-12345"
    assert stack.get(f"/api/v1/bookings/{b['id']}", ADA).get_json()["title"] == "Imaging"


def test_touching_is_allowed_and_overlap_is_409(stack):
    res = stack.make_resource()
    a = stack.book(ADA, res["id"], next_weekday(1, 9), next_weekday(1, 10))
    assert a.status_code == 201
    assert stack.book(BOB, res["id"], next_weekday(1, 10), next_weekday(1, 11)).status_code == 201
    clash = stack.book(BOB, res["id"], next_weekday(1, 9, 30), next_weekday(1, 10, 30))
    assert clash.status_code == 409
    body = clash.get_json()
    assert body["type"].endswith("conflict") and len(body["conflicts"]) == 2
    assert set(body["conflicts"][0]) == {"start", "end"}


def test_buffer_keeps_a_gap(stack):
    res = stack.make_resource(policy={"buffer_minutes": 30})
    assert stack.book(ADA, res["id"], next_weekday(1, 9), next_weekday(1, 10)).status_code == 201
    assert stack.book(BOB, res["id"], next_weekday(1, 10), next_weekday(1, 11)).status_code == 409
    assert stack.book(BOB, res["id"], next_weekday(1, 10, 15), next_weekday(1, 11)).status_code == 409
    assert stack.book(BOB, res["id"], next_weekday(1, 10, 30), next_weekday(1, 11)).status_code == 201
    # A new booking's own buffer may not run into the next booking either.
    assert stack.book(ADA, res["id"], next_weekday(1, 8), next_weekday(1, 8, 45)).status_code == 409
    assert stack.book(ADA, res["id"], next_weekday(1, 8), next_weekday(1, 8, 30)).status_code == 201


def test_each_policy_rule_is_named(stack):
    res = stack.make_resource(policy={"slot_minutes": 30, "min_minutes": 60, "max_minutes": 120,
                                      "lead_minutes": 1440, "horizon_days": 14,
                                      "opening_hours": {d: [["08:00", "16:00"]] for d in
                                                        ("mon", "tue", "wed", "thu", "fri")}})
    rid = res["id"]
    assert rules(stack.book(ADA, rid, next_weekday(1, 9), next_weekday(1, 9, 30))) == ["min_minutes"]
    assert rules(stack.book(ADA, rid, next_weekday(1, 9), next_weekday(1, 12))) == ["max_minutes"]
    assert rules(stack.book(ADA, rid, next_weekday(1, 9, 15), next_weekday(1, 10, 15))) == ["slot_minutes"]
    tomorrow = local(0, 23) if local(0, 23) > dt.datetime.now(OSLO) else local(1, 23)
    assert "lead_minutes" in rules(stack.book(ADA, rid, tomorrow, tomorrow + dt.timedelta(hours=1)))
    far = next_weekday(1, 9, min_days=20)
    assert rules(stack.book(ADA, rid, far, far + dt.timedelta(hours=1))) == ["horizon_days"]
    assert rules(stack.book(ADA, rid, next_weekday(1, 15), next_weekday(1, 17))) == ["opening_hours"]
    assert rules(stack.book(ADA, rid, next_weekday(5, 9), next_weekday(5, 10))) == ["opening_hours"]
    several = rules(stack.book(ADA, rid, next_weekday(5, 9, 15), next_weekday(5, 9, 45)))
    assert set(several) == {"min_minutes", "slot_minutes", "opening_hours"}


def test_opening_hours_follow_the_labs_timezone_across_dst(stack):
    """08:00-16:00 Oslo time is 07:00-15:00 UTC in winter and 06:00-14:00 UTC in summer."""
    lab = stack.make_lab(timezone="America/New_York")
    res = stack.make_resource(lab["id"], policy={"horizon_days": 400, "slot_minutes": 60, "min_minutes": 60,
                                                 "opening_hours": {d: [["08:00", "16:00"]] for d in WEEK}})
    start = next_weekday(1, 9, min_days=3).astimezone(dt.UTC).replace(hour=13, minute=0)  # 08:00 EST or 09:00 EDT
    ny = start.astimezone(_NY)
    expected_ok = ny.hour >= 8 and (ny + dt.timedelta(hours=1)).hour <= 16
    early = start.replace(hour=12)  # 07:00 EST (closed) or 08:00 EDT (open)
    early_ok = early.astimezone(_NY).hour >= 8
    assert (stack.book(ADA, res["id"], start, start + dt.timedelta(hours=1)).status_code == 201) == expected_ok
    assert (stack.book(BOB, res["id"], early, early + dt.timedelta(hours=1)).status_code == 201) == early_ok


WEEK = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_NY = __import__("zoneinfo").ZoneInfo("America/New_York")


def test_status_outage_and_qualification_rules(stack):
    res = stack.make_resource(policy={"requires_qualification": True})
    rid = res["id"]
    start, end = next_weekday(2, 9), next_weekday(2, 10)
    assert rules(stack.book(ADA, rid, start, end)) == ["qualification"]
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    stack.post(f"/api/v1/resources/{rid}/qualifications", stack.MANAGER, {"sub": "ada", "expires": rfc(expires)})
    stack.sync()
    # Qualified until tomorrow only: a booking two days ahead is refused, the expiry is honoured.
    assert rules(stack.book(ADA, rid, start, end)) == ["qualification"]
    stack.post(f"/api/v1/resources/{rid}/qualifications", stack.MANAGER, {"sub": "ada"})
    stack.sync()
    assert stack.book(ADA, rid, start, end).status_code == 201
    # Managers of the lab are exempt from qualification.
    assert stack.book(stack.MANAGER, rid, next_weekday(2, 11), next_weekday(2, 12)).status_code == 201
    stack.post(f"/api/v1/resources/{rid}/outages", stack.MANAGER,
               {"start": rfc(next_weekday(3, 8)), "end": rfc(next_weekday(3, 12))})
    stack.sync()
    assert rules(stack.book(ADA, rid, next_weekday(3, 9), next_weekday(3, 10))) == ["outage"]
    stack.patch(f"/api/v1/resources/{rid}", stack.MANAGER, {"status": "maintenance"})
    stack.sync()
    assert rules(stack.book(ADA, rid, next_weekday(4, 9), next_weekday(4, 10))) == ["status"]


def test_quota_per_iso_week(stack):
    res = stack.make_resource(policy={"max_hours_per_week": 3})
    rid = res["id"]
    assert stack.book(ADA, rid, next_weekday(0, 9, min_days=7), next_weekday(0, 11, min_days=7)).status_code == 201
    assert stack.book(ADA, rid, next_weekday(2, 9, min_days=7), next_weekday(2, 10, min_days=7)).status_code == 201
    assert rules(stack.book(ADA, rid, next_weekday(3, 9, min_days=7), next_weekday(3, 9, 15, min_days=7))) == [
        "quota"]
    # Another week, another user, and managers are not limited.
    assert stack.book(ADA, rid, next_weekday(0, 9, min_days=14), next_weekday(0, 12, min_days=14)).status_code == 201
    assert stack.book(BOB, rid, next_weekday(3, 9, min_days=7), next_weekday(3, 12, min_days=7)).status_code == 201
    assert stack.book(stack.MANAGER, rid, next_weekday(4, 9, min_days=7),
                      next_weekday(4, 14, min_days=7)).status_code == 201


def test_approval_holds_the_slot_until_decided(stack):
    res = stack.make_resource(policy={"requires_approval": True})
    rid = res["id"]
    pending = stack.book(ADA, rid, next_weekday(1, 9), next_weekday(1, 10)).get_json()
    assert pending["status"] == "pending"
    assert stack.book(BOB, rid, next_weekday(1, 9), next_weekday(1, 10)).status_code == 409
    assert stack.post(f"/api/v1/bookings/{pending['id']}/approve", ADA).status_code == 403
    approved = stack.post(f"/api/v1/bookings/{pending['id']}/approve", stack.MANAGER).get_json()
    assert approved["status"] == "confirmed" and approved["sequence"] == 1
    assert stack.post(f"/api/v1/bookings/{pending['id']}/approve", stack.MANAGER).status_code == 409
    other = stack.book(BOB, rid, next_weekday(1, 11), next_weekday(1, 12)).get_json()
    declined = stack.post(f"/api/v1/bookings/{other['id']}/decline", stack.MANAGER, {"reason": "Service day"})
    assert declined.get_json()["status"] == "declined"
    assert declined.get_json()["cancel_reason"] == "Service day"
    assert stack.book(ADA, rid, next_weekday(1, 11), next_weekday(1, 12)).status_code == 201


def test_cancel_frees_time_and_change_follows_the_rules(stack):
    res = stack.make_resource(policy={"max_minutes": 180})
    rid = res["id"]
    b = stack.book(ADA, rid, next_weekday(1, 9), next_weekday(1, 10)).get_json()
    assert stack.post(f"/api/v1/bookings/{b['id']}/cancel", BOB).status_code == 403
    moved = stack.patch(f"/api/v1/bookings/{b['id']}", ADA,
                        {"start": rfc(next_weekday(1, 13)), "end": rfc(next_weekday(1, 14)), "title": "Moved"})
    assert moved.status_code == 200
    assert moved.get_json()["sequence"] == 1 and moved.get_json()["title"] == "Moved"
    assert rules(stack.patch(f"/api/v1/bookings/{b['id']}", ADA, {"end": rfc(next_weekday(1, 17))})) == [
        "max_minutes"]
    blocker = stack.book(BOB, rid, next_weekday(1, 15), next_weekday(1, 16)).get_json()
    assert stack.patch(f"/api/v1/bookings/{b['id']}", ADA, {"end": rfc(next_weekday(1, 15, 30))}).status_code == 409
    # A refused change leaves the booking as it was.
    assert stack.get(f"/api/v1/bookings/{b['id']}", ADA).get_json()["sequence"] == 1
    cancelled = stack.post(f"/api/v1/bookings/{blocker['id']}/cancel", BOB, {"reason": "Not needed"}).get_json()
    assert cancelled["status"] == "cancelled" and cancelled["cancel_reason"] == "Not needed"
    assert stack.post(f"/api/v1/bookings/{blocker['id']}/cancel", BOB).status_code == 409
    assert stack.patch(f"/api/v1/bookings/{b['id']}", ADA, {"end": rfc(next_weekday(1, 15))}).status_code == 200
    # A manager of the lab may cancel anyone's booking.
    assert stack.post(f"/api/v1/bookings/{b['id']}/cancel", stack.MANAGER).get_json()["status"] == "cancelled"


def test_others_see_only_busy_time(stack):
    res = stack.make_resource()
    b = stack.book(ADA, res["id"], next_weekday(1, 9), next_weekday(1, 10), title="Secret project").get_json()
    seen_by_bob = stack.get(f"/api/v1/bookings/{b['id']}", BOB).get_json()
    assert seen_by_bob == {"resource_id": res["id"], "start": b["start"], "end": b["end"], "status": "confirmed"}
    listed = stack.get(f"/api/v1/bookings?resource_id={res['id']}", BOB).get_json()["items"]
    assert listed == [seen_by_bob]
    assert stack.get(f"/api/v1/bookings?resource_id={res['id']}", stack.MANAGER).get_json()["items"][0][
        "title"] == "Secret project"
    assert stack.get("/api/v1/bookings?mine=true", BOB).get_json()["items"] == []
    assert [x["id"] for x in stack.get("/api/v1/bookings?mine=true", ADA).get_json()["items"]] == [b["id"]]


def test_list_filters_and_pages(stack):
    res = stack.make_resource()
    ids = [stack.book(ADA, res["id"], next_weekday(1, h), next_weekday(1, h + 1)).get_json()["id"]
           for h in (9, 10, 11)]
    stack.post(f"/api/v1/bookings/{ids[1]}/cancel", ADA)
    q = f"/api/v1/bookings?resource_id={res['id']}&mine=true"
    assert [x["id"] for x in stack.get(q + "&status=cancelled", ADA).get_json()["items"]] == [ids[1]]
    window = f"&from={rfc(next_weekday(1, 10, 30))}&to={rfc(next_weekday(1, 23))}"
    assert [x["id"] for x in stack.get(q + window, ADA).get_json()["items"]] == ids[1:]
    page1 = stack.get(q + "&limit=2", ADA).get_json()
    page2 = stack.get(q + f"&limit=2&cursor={page1['next']}", ADA).get_json()
    assert [x["id"] for x in page1["items"] + page2["items"]] == ids and page2["next"] is None


def test_outage_cancels_overlapping_bookings(stack):
    res = stack.make_resource(policy={"requires_approval": True})
    rid = res["id"]
    hit = stack.book(ADA, rid, next_weekday(1, 9), next_weekday(1, 10)).get_json()
    pending_hit = stack.book(BOB, rid, next_weekday(1, 11), next_weekday(1, 12)).get_json()
    spared = stack.book(ADA, rid, next_weekday(1, 14), next_weekday(1, 15)).get_json()
    stack.post(f"/api/v1/bookings/{hit['id']}/approve", stack.MANAGER)
    stack.post(f"/api/v1/resources/{rid}/outages", stack.MANAGER,
               {"start": rfc(next_weekday(1, 9, 30)), "end": rfc(next_weekday(1, 14)), "reason": "Laser broken"})

    def status(b, who):
        return stack.get(f"/api/v1/bookings/{b['id']}", who).get_json()

    stack.eventually(lambda: status(hit, ADA)["status"] == "cancelled", what="outage cancellation")
    assert status(hit, ADA)["cancel_reason"] == "outage"
    stack.eventually(lambda: status(pending_hit, BOB)["status"] == "cancelled", what="pending cancelled")
    assert status(spared, ADA)["status"] == "pending"


def test_availability_honours_hours_outages_and_buffers(stack):
    res = stack.make_resource(policy={"buffer_minutes": 15, "opening_hours": {d: [["08:00", "16:00"]] for d in WEEK}})
    rid = res["id"]
    stack.book(ADA, rid, next_weekday(1, 10), next_weekday(1, 11))
    stack.post(f"/api/v1/resources/{rid}/outages", stack.MANAGER,
               {"start": rfc(next_weekday(1, 13)), "end": rfc(next_weekday(1, 14))})
    q = f"/api/v1/availability?resource_id={rid}&from={rfc(next_weekday(1, 0))}&to={rfc(next_weekday(1, 23))}"

    def utc(d):
        return d.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    expected_free = [
        {"start": utc(next_weekday(1, 8)), "end": utc(next_weekday(1, 9, 45))},
        {"start": utc(next_weekday(1, 11, 15)), "end": utc(next_weekday(1, 13))},
        {"start": utc(next_weekday(1, 14)), "end": utc(next_weekday(1, 16))},
    ]
    body = stack.eventually(lambda: (b := stack.get(q, BOB).get_json())["free"] == expected_free and b,
                            what="availability with the outage")
    assert body["busy"] == [{"start": utc(next_weekday(1, 10)), "end": utc(next_weekday(1, 11))}]


def test_slots_find_the_earliest_free_resource_of_a_category(stack):
    lab = stack.make_lab()
    hours = {"opening_hours": {d: [["08:00", "16:00"]] for d in WEEK}, "slot_minutes": 60, "min_minutes": 60}
    a = stack.make_resource(lab["id"], name="Bench A", category="wetlab/bench", policy=hours)
    b = stack.make_resource(lab["id"], name="Bench B", category="wetlab/bench", policy=hours)
    stack.make_resource(lab["id"], name="Scope", category="microscopy/confocal", policy=hours)
    day = next_weekday(1, 8)
    stack.book(ADA, a["id"], day, day + dt.timedelta(hours=3))
    q = (f"/api/v1/slots?category=wetlab&duration_minutes=120&from={rfc(day)}"
         f"&to={rfc(day + dt.timedelta(hours=8))}&limit=3")
    items = stack.get(q, BOB).get_json()["items"]

    def utc(d):
        return d.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    assert items == [
        {"resource_id": b["id"], "start": utc(day), "end": utc(day + dt.timedelta(hours=2))},
        {"resource_id": b["id"], "start": utc(day + dt.timedelta(hours=1)), "end": utc(day + dt.timedelta(hours=3))},
        {"resource_id": b["id"], "start": utc(day + dt.timedelta(hours=2)), "end": utc(day + dt.timedelta(hours=4))},
    ]
    booked = stack.book(BOB, items[0]["resource_id"], day, day + dt.timedelta(hours=2))
    assert booked.status_code == 201
    assert stack.get(q, BOB).get_json()["items"][0] == {
        "resource_id": b["id"], "start": utc(day + dt.timedelta(hours=2)), "end": utc(day + dt.timedelta(hours=4))}
    assert stack.get("/api/v1/slots?category=wetlab", BOB).status_code == 422


def test_series_is_all_or_nothing(stack):
    res = stack.make_resource(policy={"horizon_days": 120})
    rid = res["id"]
    start = next_weekday(1, 9)
    blocker = stack.book(BOB, rid, start + dt.timedelta(weeks=2), start + dt.timedelta(weeks=2, hours=1))
    assert blocker.status_code == 201
    clash = stack.book(ADA, rid, start, start + dt.timedelta(hours=2), rrule="FREQ=WEEKLY;COUNT=4")
    assert clash.status_code == 409
    assert [c["occurrence"]["start"] for c in clash.get_json()["conflicts"]] == [
        (start + dt.timedelta(weeks=2)).astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")]
    assert stack.get(f"/api/v1/bookings?resource_id={rid}&mine=true", ADA).get_json()["items"] == []
    stack.post(f"/api/v1/bookings/{blocker.get_json()['id']}/cancel", BOB)
    made = stack.book(ADA, rid, start, start + dt.timedelta(hours=2), rrule="FREQ=WEEKLY;COUNT=4")
    assert made.status_code == 201
    series = made.get_json()
    assert series["series_id"] and len(series["occurrences"]) == 4
    occ = [stack.get(f"/api/v1/bookings/{i}", ADA).get_json() for i in series["occurrences"]]
    # Every occurrence keeps 09:00 local time, whatever the UTC offset that week.
    assert {dt.datetime.fromisoformat(o["start"]).astimezone(OSLO).hour for o in occ} == {9}
    assert rules(stack.book(ADA, rid, start, start + dt.timedelta(hours=1), rrule="FREQ=WEEKLY")) == ["rrule"]
    assert rules(stack.book(ADA, rid, start, start + dt.timedelta(hours=1), rrule="FREQ=DAILY;COUNT=400")) == [
        "rrule"]


def test_bad_input_is_problem_json_and_writes_nothing(stack):
    res = stack.make_resource()
    rid = res["id"]

    def problem(resp, status):
        assert resp.status_code == status, resp.get_data(as_text=True)
        assert resp.headers["Content-Type"] == "application/problem+json"
        body = resp.get_json()
        assert {"type", "title", "status", "detail"} <= set(body) and body["status"] == status
        return body

    problem(stack.post("/api/v1/bookings", ADA, data="{not json", content_type="application/json"), 400)
    naive = problem(stack.post("/api/v1/bookings", ADA, {"resource_id": rid, "start": "2030-01-01T09:00:00",
                                                         "end": "2030-01-01T10:00:00"}), 422)
    assert {e["field"] for e in naive["errors"]} == {"start", "end"}
    shape = problem(stack.post("/api/v1/bookings", ADA, {"resource_id": rid, "start": 5}), 422)
    assert {e["field"] for e in shape["errors"]} >= {"start", "end"}
    problem(stack.get("/api/v1/bookings/does-not-exist", ADA), 404)
    problem(stack.book(ADA, "no-such-resource", next_weekday(1, 9), next_weekday(1, 10)), 404)
    problem(stack.get("/api/v1/bookings"), 401)
    problem(stack.get("/api/v1/bookings", headers={"Authorization": "Bearer not-a-jwt"}), 401)
    expired = jwt.encode({"sub": "ada", "iss": "labshare-dev", "aud": "labshare", "exp": 1},
                         stack.settings.dev_secret, algorithm="HS256")
    assert "expired" in problem(stack.get("/api/v1/bookings", headers={"Authorization": f"Bearer {expired}"}),
                                401)["detail"]
    forged = jwt.encode({"sub": "ada", "iss": "labshare-dev", "aud": "labshare", "exp": 2**31},
                        "a-different-secret-that-labshare-never-issued", algorithm="HS256")
    problem(stack.get("/api/v1/bookings", headers={"Authorization": f"Bearer {forged}"}), 401)
    big = {"resource_id": rid, "start": rfc(next_weekday(1, 9)), "end": rfc(next_weekday(1, 10)),
           "title": "x" * (1024 * 1024 + 10)}
    problem(stack.post("/api/v1/bookings", ADA, big), 413)
    problem(stack.get("/api/v1/nothing-here", ADA), 404)
    problem(stack.call("PUT", "/api/v1/bookings", ADA), 405)
    assert stack.get(f"/api/v1/bookings?resource_id={rid}", ADA).get_json()["items"] == []


def test_openapi_documents(stack):
    for name in ("inventory", "booking", "notify"):
        doc = stack.get(f"/api/v1/openapi/{name}.json").get_json()
        assert doc["openapi"] == "3.1.0"
    booking_doc = stack.get("/api/v1/openapi/booking.json").get_json()
    assert "/api/v1/bookings" in booking_doc["paths"]
    assert booking_doc["paths"]["/api/v1/bookings"]["post"]["requestBody"]["content"]["application/json"]
    assert "BookingIn" in booking_doc["components"]["schemas"]


def test_dev_token_endpoint(stack):
    resp = stack.post("/api/v1/dev/token", None, {"sub": "eve", "name": "Eve", "email": "eve@example.org",
                                                   "org": "sintef", "roles": ["researcher"]})
    assert resp.status_code == 201
    token = resp.get_json()["token"]
    mine = stack.get("/api/v1/bookings?mine=true", headers={"Authorization": f"Bearer {token}"})
    assert mine.status_code == 200
    assert stack.post("/api/v1/dev/token", None, {"sub": "eve", "roles": ["emperor"]}).status_code == 422


def test_authentication_comes_before_validation(stack):
    resp = stack.post("/api/v1/bookings", None, {"resource_id": "x", "start": "2030-01-01T09:00:00"})
    assert resp.status_code == 401
    assert stack.post("/api/v1/labs", None, {"name": 5}).status_code == 401


def test_connections_the_server_dropped_are_replaced_before_use(pg_url, rabbit_vhost, tmp_path):
    """PostgreSQL drops every connection (a restart, a failover): after a pause, requests still succeed.

    The booking API runs alone here, as in a gunicorn worker (no relay or consumer
    in the process to meet a dead connection first). A pooled connection idle for
    more than a second is tested at checkout and replaced when dead, so neither a
    booking nor a read answers 500.
    """
    s = Stack(postgres_settings(pg_url, rabbit_vhost, str(tmp_path / "var")))
    try:
        lab = s.make_lab()
        res = s.make_resource(lab["id"])
        api = create_booking_app(s.settings).test_client()
        ada = s.auth("ada")
        start = next_weekday(1, 10)

        def book(hours: int):
            at = start + dt.timedelta(hours=hours)
            return api.post("/api/v1/bookings", headers=ada, json={
                "resource_id": res["id"], "start": rfc(at), "end": rfc(at + dt.timedelta(hours=1))})

        assert book(0).status_code == 201
        assert api.get(f"/api/v1/bookings?resource_id={res['id']}", headers=ada).status_code == 200
        engine = admin_engine(infra.PG_ADMIN_URL)
        with engine.connect() as conn:
            dropped = conn.execute(text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = :db AND pid <> pg_backend_pid()"), {"db": pg_url.rsplit("/", 1)[1]}).scalar_one()
        engine.dispose()
        assert dropped >= 1
        time.sleep(db.PING_AFTER_IDLE_SECONDS + 0.3)
        later = book(2)
        assert later.status_code == 201, later.get_json()
        listed = api.get(f"/api/v1/bookings?resource_id={res['id']}", headers=ada)
        assert listed.status_code == 200
        assert len(listed.get_json()["items"]) == 2
    finally:
        s.close()
        _drop_queues(s.settings)
