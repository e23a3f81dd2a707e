"""Calendar feeds over HTTP, on SQLite and on PostgreSQL + RabbitMQ, read with icalendar, ical.js and libical."""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from email.utils import format_datetime, parsedate_to_datetime

import recurring_ical_events
from sqlalchemy import event, select

from services.booking.store import FeedVersion, lab_feed_state
from shared.calendar import booking_uid
from tests.calendar_parsers import parse_icalendar, parse_icaljs, parse_libical
from tests.concurrency import Caller, race
from tests.harness import OSLO, next_weekday, rfc

ADA, BOB = "ada", "bob"
CALENDAR = "text/calendar; charset=utf-8"


def path_of(url: str) -> str:
    return "/" + url.split("://", 1)[1].split("/", 1)[1]


def feed(stack, path: str, **headers):
    resp = stack.get(path, headers=headers)
    assert resp.status_code in (200, 304), resp.get_data(as_text=True)
    return resp


def events_of(data: bytes) -> dict:
    return {str(e["UID"]): e for e in parse_icalendar(data).walk("VEVENT")}


def problem(resp, status: int) -> dict:
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.headers["Content-Type"] == "application/problem+json"
    return resp.get_json()


def user_feed_path(stack, who: str) -> str:
    resp = stack.post("/api/v1/feeds/token", who)
    assert resp.status_code == 201, resp.get_json()
    return path_of(resp.get_json()["url"])


def test_resource_feed_shows_busy_blocks_without_names(stack):
    lab = stack.make_lab(name="Cell imaging lab", building="Elgeseter 10")
    res = stack.make_resource(lab["id"], name="Zeiss LSM 980", policy={"requires_approval": True})
    lovelace = ("ada-lovelace", ("researcher",), "ntnu")  # a name no UUID's hex digits can spell
    pending = stack.book(lovelace, res["id"], next_weekday(1, 9), next_weekday(1, 10), title="Secret project",
                         project="NFR-1").get_json()
    confirmed = stack.book(stack.MANAGER, res["id"], next_weekday(1, 11), next_weekday(1, 12)).get_json()
    resp = feed(stack, f"/feeds/resources/{res['id']}.ics")
    assert resp.status_code == 200 and resp.headers["Content-Type"] == CALENDAR
    assert resp.headers["Cache-Control"].startswith("public, max-age=")
    assert re.fullmatch(r'"[^"]+"', resp.headers["ETag"]), "a strong ETag"
    assert parsedate_to_datetime(resp.headers["Last-Modified"])
    data = resp.get_data()
    for secret in (b"Secret project", b"NFR-1", b"lovelace", b"Lovelace", b"example.org", b"Lab Manager",
                   b"lab-manager"):
        assert secret not in data, secret
    events = events_of(data)
    uids = {booking_uid(pending["id"], stack.settings), booking_uid(confirmed["id"], stack.settings)}
    assert set(events) == uids
    first = events[booking_uid(pending["id"], stack.settings)]
    assert first["SUMMARY"] == "Booked" and first["STATUS"] == "TENTATIVE" and first["SEQUENCE"] == 0
    assert first["LOCATION"] == "Cell imaging lab, Elgeseter 10"
    assert first["DTSTART"].params["TZID"] == "Europe/Oslo"
    assert first["DTSTART"].dt == next_weekday(1, 9)
    assert events[booking_uid(confirmed["id"], stack.settings)]["STATUS"] == "CONFIRMED"
    (js,) = parse_icaljs(data)
    assert {e["uid"] for e in js["events"]} == uids
    assert {e["start"]["local"][11:16] for e in js["events"]} == {"09:00", "11:00"}
    assert {e["uid"] for e in parse_libical(data)["events"]} == uids


def test_labs_opt_in_to_show_titles(stack):
    lab = stack.make_lab(show_titles=True)
    res = stack.make_resource(lab["id"])
    b = stack.book(ADA, res["id"], next_weekday(1, 9), next_weekday(1, 10), title="Open day demo").get_json()
    uid = booking_uid(b["id"], stack.settings)
    assert events_of(feed(stack, f"/feeds/resources/{res['id']}.ics").get_data())[uid]["SUMMARY"] == "Open day demo"
    assert events_of(feed(stack, f"/feeds/labs/{lab['id']}.ics").get_data())[uid]["SUMMARY"] == "Open day demo"


def test_a_change_bumps_sequence_and_etag_and_conditional_requests_answer_304(stack):
    res = stack.make_resource()
    b = stack.book(ADA, res["id"], next_weekday(1, 9), next_weekday(1, 10)).get_json()
    path = f"/feeds/resources/{res['id']}.ics"
    # Within the second of a change, Last-Modified claims a second earlier (whole seconds could
    # not tell a later change in that second apart); a second on, it is the change's own time.
    time.sleep(1.1)
    first = feed(stack, path)
    etag, modified = first.headers["ETag"], first.headers["Last-Modified"]

    again = feed(stack, path, **{"If-None-Match": etag})
    assert again.status_code == 304 and again.get_data() == b"" and again.headers["ETag"] == etag
    assert again.headers["Cache-Control"] == first.headers["Cache-Control"]
    assert feed(stack, path, **{"If-None-Match": f'"other", W/{etag}'}).status_code == 304, "weak comparison"
    assert feed(stack, path, **{"If-None-Match": "*"}).status_code == 304
    assert feed(stack, path, **{"If-Modified-Since": format_datetime(dt.datetime.now(dt.UTC), usegmt=True)}
                ).status_code == 304
    assert feed(stack, path, **{"If-Modified-Since": modified}).status_code == 304
    assert feed(stack, path, **{"If-None-Match": '"other"', "If-Modified-Since": modified}).status_code == 200, (
        "If-None-Match decides when both are sent")

    moved = stack.patch(f"/api/v1/bookings/{b['id']}", ADA,
                        {"start": rfc(next_weekday(1, 13)), "end": rfc(next_weekday(1, 14))})
    assert moved.status_code == 200
    changed = feed(stack, path, **{"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"] != etag
    event_ = events_of(changed.get_data())[booking_uid(b["id"], stack.settings)]
    assert event_["SEQUENCE"] == 1 and event_["DTSTART"].dt == next_weekday(1, 13)
    assert feed(stack, path, **{"If-Modified-Since": modified}).status_code == 200
    assert feed(stack, path, **{"If-None-Match": changed.headers["ETag"]}).status_code == 304


def test_from_and_to_narrow_the_window_and_the_etag(stack):
    res = stack.make_resource()
    early = stack.book(ADA, res["id"], next_weekday(1, 9), next_weekday(1, 10)).get_json()
    late = stack.book(ADA, res["id"], next_weekday(1, 9, min_days=9), next_weekday(1, 10, min_days=9)).get_json()
    path = f"/feeds/resources/{res['id']}.ics"
    whole = feed(stack, path)
    split = next_weekday(1, 12).astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    before, after = feed(stack, f"{path}?to={split}"), feed(stack, f"{path}?from={split}")
    assert set(events_of(before.get_data())) == {booking_uid(early["id"], stack.settings)}
    assert set(events_of(after.get_data())) == {booking_uid(late["id"], stack.settings)}
    assert len({whole.headers["ETag"], before.headers["ETag"], after.headers["ETag"]}) == 3
    assert feed(stack, f"{path}?from={split}", **{"If-None-Match": whole.headers["ETag"]}).status_code == 200
    problem(stack.get(f"{path}?from={split}&to={split}"), 422)
    problem(stack.get(f"{path}?from=yesterday"), 422)


def test_cancellations_show_as_cancelled_in_every_feed(stack):
    lab = stack.make_lab()
    res = stack.make_resource(lab["id"])
    b = stack.book(ADA, res["id"], next_weekday(1, 9), next_weekday(1, 10)).get_json()
    mine = user_feed_path(stack, ADA)
    before = {p: feed(stack, p).headers["ETag"]
              for p in (f"/feeds/resources/{res['id']}.ics", f"/feeds/labs/{lab['id']}.ics", mine)}
    assert stack.post(f"/api/v1/bookings/{b['id']}/cancel", ADA).status_code == 200
    uid = booking_uid(b["id"], stack.settings)
    for path, etag in before.items():
        resp = feed(stack, path, **{"If-None-Match": etag})
        assert resp.status_code == 200, path
        event_ = events_of(resp.get_data())[uid]
        assert (event_["STATUS"], event_["SEQUENCE"], event_["TRANSP"]) == ("CANCELLED", 1, "TRANSPARENT"), path
        (js,) = parse_icaljs(resp.get_data())
        assert [(e["status"], e["sequence"]) for e in js["events"]] == [("CANCELLED", 1)]


def test_decisions_and_outages_bump_the_feeds(stack):
    lab = stack.make_lab()
    res = stack.make_resource(lab["id"], policy={"requires_approval": True})
    rid = res["id"]
    pending = stack.book(ADA, rid, next_weekday(2, 9), next_weekday(2, 10)).get_json()
    other = stack.book(BOB, rid, next_weekday(2, 11), next_weekday(2, 12)).get_json()
    path, fb_path = f"/feeds/resources/{rid}.ics", f"/feeds/resources/{rid}/freebusy.ics"
    etag = feed(stack, path).headers["ETag"]
    stack.post(f"/api/v1/bookings/{pending['id']}/approve", stack.MANAGER)
    approved = feed(stack, path, **{"If-None-Match": etag})
    assert approved.status_code == 200
    assert events_of(approved.get_data())[booking_uid(pending["id"], stack.settings)]["STATUS"] == "CONFIRMED"
    fb_etag = feed(stack, fb_path).headers["ETag"]
    stack.post(f"/api/v1/resources/{rid}/outages", stack.MANAGER,
               {"start": rfc(next_weekday(2, 10, 30)), "end": rfc(next_weekday(2, 16)), "reason": "Laser"})
    stack.eventually(lambda: feed(stack, path, **{"If-None-Match": approved.headers["ETag"]}).status_code == 200,
                     what="the outage to reach the feed")
    events = events_of(feed(stack, path).get_data())
    assert events[booking_uid(other["id"], stack.settings)]["STATUS"] == "CANCELLED"
    assert events[booking_uid(pending["id"], stack.settings)]["STATUS"] == "CONFIRMED"
    freebusy = feed(stack, fb_path, **{"If-None-Match": fb_etag})
    assert freebusy.status_code == 200
    (js,) = parse_icaljs(freebusy.get_data())
    utc = lambda d: d.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")  # noqa: E731
    assert js["freebusy"] == [
        {"fbtype": "BUSY", "start": utc(next_weekday(2, 9)), "end": utc(next_weekday(2, 10))},
        {"fbtype": "BUSY-UNAVAILABLE", "start": utc(next_weekday(2, 10, 30)), "end": utc(next_weekday(2, 16))},
    ]
    parse_libical(freebusy.get_data())


def test_lab_feed_covers_every_resource_and_follows_lab_changes(stack):
    lab = stack.make_lab(name="Imaging core")
    a = stack.make_resource(lab["id"], name="Scope A")
    b = stack.make_resource(lab["id"], name="Scope B", policy={"horizon_days": 200})
    elsewhere = stack.make_resource(name="Elsewhere")
    ba = stack.book(ADA, a["id"], next_weekday(1, 9), next_weekday(1, 10)).get_json()
    far = next_weekday(1, 9, min_days=150)
    bb = stack.book(BOB, b["id"], far, far + dt.timedelta(hours=1)).get_json()
    stack.book(ADA, elsewhere["id"], next_weekday(1, 9), next_weekday(1, 10))
    path = f"/feeds/labs/{lab['id']}.ics"
    first = feed(stack, path)
    cal = parse_icalendar(first.get_data())
    assert cal["X-WR-CALNAME"] == "Imaging core"
    events = {str(e["UID"]): e for e in cal.walk("VEVENT")}
    assert set(events) == {booking_uid(ba["id"], stack.settings), booking_uid(bb["id"], stack.settings)}, (
        "every resource of the lab, to the longest horizon among them")
    assert events[booking_uid(bb["id"], stack.settings)]["RESOURCES"] == "Scope B"
    mine = user_feed_path(stack, ADA)
    mine_etag = feed(stack, mine).headers["ETag"]
    assert stack.patch(f"/api/v1/labs/{lab['id']}", stack.MANAGER, {"name": "Imaging core facility",
                                                                    "building": "Bygg 5"}).status_code == 200
    stack.sync()
    renamed = feed(stack, path, **{"If-None-Match": first.headers["ETag"]})
    assert renamed.status_code == 200
    assert events_of(renamed.get_data())[booking_uid(ba["id"], stack.settings)]["LOCATION"] == (
        "Imaging core facility, Bygg 5")
    assert feed(stack, f"/feeds/resources/{a['id']}.ics").get_data().count(b"Imaging core facility") >= 1
    personal = feed(stack, mine, **{"If-None-Match": mine_etag})
    assert personal.status_code == 200 and b"Imaging core facility" in personal.get_data()


def test_personal_feed_token_rotation_and_details(stack):
    lab = stack.make_lab(name="Cell imaging lab", building="Elgeseter 10")
    res = stack.make_resource(lab["id"], name="Zeiss LSM 980")
    mine = stack.book(ADA, res["id"], next_weekday(1, 9), next_weekday(1, 10), title="Live-cell imaging",
                      project="NFR-12345").get_json()
    stack.book(BOB, res["id"], next_weekday(1, 11), next_weekday(1, 12), title="Bob's run")
    problem(stack.post("/api/v1/feeds/token"), 401)
    issued = stack.post("/api/v1/feeds/token", ADA)
    assert issued.status_code == 201
    body = issued.get_json()
    assert body["url"].startswith(stack.settings.public_url + "/feeds/users/") and body["url"].endswith(".ics")
    assert body["webcal_url"] == "webcal://" + body["url"].split("://", 1)[1]
    assert len(body["url"]) < 200
    token = body["url"].rsplit("/", 1)[1][:-4]
    assert len(token) >= 22, "at least 128 random bits"
    resp = feed(stack, path_of(body["url"]))
    assert resp.headers["Cache-Control"].startswith("private")
    data = resp.get_data()
    events = events_of(data)
    assert set(events) == {booking_uid(mine["id"], stack.settings)}, "only the holder's own bookings"
    event_ = events[booking_uid(mine["id"], stack.settings)]
    assert event_["SUMMARY"] == "Live-cell imaging" and event_["LOCATION"] == "Cell imaging lab, Elgeseter 10"
    assert "NFR-12345" in event_["DESCRIPTION"] and "Zeiss LSM 980" in event_["DESCRIPTION"]
    assert str(event_["URL"]).endswith(f"/api/v1/bookings/{mine['id']}")
    (js,) = parse_icaljs(data)
    assert js["events"][0]["summary"] == "Live-cell imaging"
    parse_libical(data)

    replaced = stack.post("/api/v1/feeds/token", ADA).get_json()
    assert replaced["url"] != body["url"]
    problem(stack.get(path_of(body["url"])), 404)
    assert feed(stack, path_of(replaced["url"])).status_code == 200
    problem(stack.get("/feeds/users/" + "A" * 43 + ".ics"), 404)
    problem(stack.get("/feeds/users/short.ics"), 404)
    assert stack.delete("/api/v1/feeds/token", ADA).status_code == 204
    problem(stack.get(path_of(replaced["url"])), 404)
    problem(stack.delete("/api/v1/feeds/token", ADA), 404)


def test_tokens_are_stored_hashed(stack):
    url = stack.post("/api/v1/feeds/token", ADA).get_json()["url"]
    token = url.rsplit("/", 1)[1][:-4]
    from services.booking.store import FeedToken

    with stack.runtimes["booking"].db.read() as session:
        stored = session.scalars(select(FeedToken.token_hash)).all()
    assert stored and token not in stored and all(len(h) == 64 for h in stored)


def test_retired_resources_answer_410_and_unknown_ids_404(stack):
    res = stack.make_resource()
    stack.book(ADA, res["id"], next_weekday(1, 9), next_weekday(1, 10))
    assert feed(stack, f"/feeds/resources/{res['id']}.ics").status_code == 200
    stack.patch(f"/api/v1/resources/{res['id']}", stack.MANAGER, {"status": "retired"})
    stack.sync()
    gone = problem(stack.get(f"/feeds/resources/{res['id']}.ics"), 410)
    assert "retired" in gone["detail"]
    problem(stack.get(f"/feeds/resources/{res['id']}/freebusy.ics"), 410)
    problem(stack.get("/feeds/resources/no-such-resource.ics"), 404)
    problem(stack.get("/feeds/labs/no-such-lab.ics"), 404)
    problem(stack.get("/feeds/resources/no-such-resource/freebusy.ics"), 404)


def test_a_conditional_request_reads_no_booking(stack):
    lab = stack.make_lab()
    res = stack.make_resource(lab["id"])
    stack.book(ADA, res["id"], next_weekday(1, 9), next_weekday(1, 10))
    paths = [f"/feeds/resources/{res['id']}.ics", f"/feeds/labs/{lab['id']}.ics", user_feed_path(stack, ADA),
             f"/feeds/resources/{res['id']}/freebusy.ics"]
    etags = {p: feed(stack, p).headers["ETag"] for p in paths}
    statements: list[str] = []
    engine = stack.runtimes["booking"].db.engine

    def record(conn, cursor, statement, *args):
        if threading.current_thread() is threading.main_thread():
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        for p in paths:
            assert feed(stack, p, **{"If-None-Match": etags[p]}).status_code == 304
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert statements, "the validators come from the database"
    assert not [s for s in statements if re.search(r"\bbookings\b", s)], statements


def test_a_series_keeps_local_time_across_daylight_saving_in_the_feed(stack):
    res = stack.make_resource(policy={"horizon_days": 400})
    start = next_weekday(1, 9)
    week, offset = start, start.utcoffset()
    weeks = 1
    while week.utcoffset() == offset:  # weekly until past the next clock change
        week += dt.timedelta(weeks=1)
        weeks += 1
    made = stack.book(ADA, res["id"], start, start + dt.timedelta(hours=2), rrule=f"FREQ=WEEKLY;COUNT={weeks + 1}")
    assert made.status_code == 201, made.get_json()
    data = feed(stack, f"/feeds/resources/{res['id']}.ics").get_data()
    cal = parse_icalendar(data)
    occurrences = recurring_ical_events.of(cal).between(start - dt.timedelta(days=1), week + dt.timedelta(weeks=2))
    assert len(occurrences) == weeks + 1
    assert {(o["DTSTART"].dt.astimezone(OSLO).strftime("%H:%M"), o["DTEND"].dt.astimezone(OSLO).strftime("%H:%M"))
            for o in occurrences} == {("09:00", "11:00")}
    assert len({o["DTSTART"].dt.astimezone(dt.UTC).hour for o in occurrences}) == 2, "the UTC hour moves"
    assert {str(o["UID"]) for o in occurrences} == {
        booking_uid(i, stack.settings) for i in made.get_json()["occurrences"]}
    (js,) = parse_icaljs(data)
    assert {e["start"]["local"][11:] for e in js["events"]} == {"09:00:00"}
    assert len({e["start"]["utc"][11:13] for e in js["events"]}) == 2
    lib = parse_libical(data)
    assert sorted(e["start"] for e in lib["events"]) == sorted(int(o["DTSTART"].dt.timestamp()) for o in occurrences)


def test_concurrent_bookings_in_one_lab_bump_its_feed_without_deadlock(stack):
    lab = stack.make_lab()
    resources = [stack.make_resource(lab["id"]) for _ in range(4)]
    callers = [Caller(stack.app, stack.token(f"feeder-{i}")) for i in range(12)]

    def job(i: int):
        start = next_weekday(1, 8 + i // 4)
        return callers[i].book(resources[i % 4]["id"], start, start + dt.timedelta(hours=1))

    replies = race([lambda i=i: job(i) for i in range(12)])
    assert [r.status for r in replies] == [201] * 12, replies
    with stack.runtimes["booking"].db.read() as session:
        versions = dict(session.execute(select(FeedVersion.key, FeedVersion.version).where(
            FeedVersion.scope == "resource")).all())
        lab_version = lab_feed_state(session, lab["id"])[1]
    assert lab_version >= 12
    assert all(versions[r["id"]] >= 3 for r in resources)
    data = feed(stack, f"/feeds/labs/{lab['id']}.ics").get_data()
    assert len(events_of(data)) == 12


def test_inventory_answers_carry_feed_links(stack):
    lab = stack.make_lab()
    res = stack.make_resource(lab["id"])
    base = stack.settings.public_url
    assert res["feed_url"] == f"{base}/feeds/resources/{res['id']}.ics"
    assert res["webcal_url"] == "webcal://" + res["feed_url"].split("://", 1)[1]
    got = stack.get(f"/api/v1/labs/{lab['id']}", ADA).get_json()
    assert got["feed_url"] == f"{base}/feeds/labs/{lab['id']}.ics" and got["webcal_url"].startswith("webcal://")
    listed = stack.get(f"/api/v1/resources?lab_id={lab['id']}", ADA).get_json()["items"]
    assert listed[0]["feed_url"] == res["feed_url"]
    assert feed(stack, path_of(res["feed_url"])).status_code == 200
    assert feed(stack, path_of(got["feed_url"])).status_code == 200
    assert len(res["feed_url"]) < 200 and len(got["feed_url"]) < 200
    from services.booking.store import LabView

    with stack.runtimes["booking"].db.read() as session:
        assert "feed_url" not in session.get(LabView, lab["id"]).data, "events carry the entity, not its links"


def test_feeds_are_in_the_openapi_document(stack):
    paths = stack.get("/api/v1/openapi/booking.json").get_json()["paths"]
    for path in ("/feeds/resources/{resource_id}.ics", "/feeds/labs/{lab_id}.ics", "/feeds/users/{token}.ics",
                 "/feeds/resources/{resource_id}/freebusy.ics", "/api/v1/feeds/token"):
        assert path in paths, path
    assert "security" not in paths["/feeds/labs/{lab_id}.ics"]["get"]
    assert [p["name"] for p in paths["/feeds/labs/{lab_id}.ics"]["get"]["parameters"]] == ["lab_id", "from", "to"]
    assert "text/calendar" in paths["/feeds/labs/{lab_id}.ics"]["get"]["responses"]["200"]["content"]
