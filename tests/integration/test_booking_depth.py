"""Series, scoped changes, waitlists, no-shows, quotas, usage and utilisation over HTTP, on SQLite and on
PostgreSQL + RabbitMQ (the ``stack`` fixture), including races of cancellations and waitlist joins.

Times are relative to today (``next_weekday``). The no-show job is run by the test itself
(``Housekeeping.run_once``, what the background loop does every interval); a booking whose check-in
deadline passed long ago is made by moving a booking into the past in booking's own table, as a downtime
would leave it.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import io
import json
import random
from urllib.parse import quote

from sqlalchemy import select, update

from services.booking.app import build_runtime
from services.booking.store import Booking, WaitlistEntry
from services.booking.workers import Housekeeping
from tests.concurrency import Caller, assert_no_overlaps, assert_only, live_bookings, race
from tests.harness import OSLO, Stack, next_weekday, rfc

ADA, BOB, CARL = "ada", "bob", "carl"
SINTEF_BOB = ("bob", ("researcher",), "sintef")
H = dt.timedelta(hours=1)
MIN = dt.timedelta(minutes=1)


def q(value: dt.datetime) -> str:
    return quote(rfc(value), safe="")


def utc(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def problem(resp, status: int) -> dict:
    assert resp.status_code == status, (resp.status_code, resp.get_json())
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    return resp.get_json()


def rows(stack, **where) -> list[Booking]:
    with stack.runtimes["booking"].db.read() as s:
        stmt = select(Booking).order_by(Booking.start_at, Booking.id)
        for key, value in where.items():
            stmt = stmt.where(getattr(Booking, key) == value)
        return list(s.scalars(stmt))


def entries(stack, resource_id: str) -> list[WaitlistEntry]:
    with stack.runtimes["booking"].db.read() as s:
        return list(s.scalars(select(WaitlistEntry).where(WaitlistEntry.resource_id == resource_id)
                              .order_by(WaitlistEntry.created_at, WaitlistEntry.id)))


def outbox_types(stack) -> list[tuple[str, str]]:
    """(type, subject id) of every event booking wrote."""
    rt = stack.runtimes["booking"]
    with rt.db.read() as s:
        return [(t, json.loads(p)["data"].get("id")) for t, p in
                s.execute(select(rt.events.outbox.c.type, rt.events.outbox.c.payload).order_by(rt.events.outbox.c.id))]


def join(stack, who, resource_id, start, end, **extra):
    return stack.post("/api/v1/waitlist", who, {"resource_id": resource_id, "start": rfc(start), "end": rfc(end),
                                                **extra})


# -- series ---------------------------------------------------------------------------------------------


def test_a_series_is_all_or_nothing_or_skips_and_says_so(stack):
    res = stack.make_resource(policy={"horizon_days": 120})
    rid = res["id"]
    start = next_weekday(1, 9)
    blocker = stack.book(BOB, rid, start + 2 * dt.timedelta(weeks=1), start + dt.timedelta(weeks=2, hours=1))
    assert blocker.status_code == 201
    refused = problem(stack.book(ADA, rid, start, start + H, rrule="FREQ=WEEKLY;COUNT=6"), 409)
    assert [c["occurrence"]["start"] for c in refused["conflicts"]] == [blocker.get_json()["start"]]
    assert rows(stack, user_sub="ada") == []

    made = stack.book(ADA, rid, start, start + H, rrule="FREQ=WEEKLY;COUNT=6", on_conflict="skip")
    assert made.status_code == 201, made.get_json()
    body = made.get_json()
    assert len(body["occurrences"]) == 5 and body["series_id"]
    assert body["skipped"] == [{"start": blocker.get_json()["start"], "end": blocker.get_json()["end"],
                                "reason": "conflict", "conflicts": [{"start": blocker.get_json()["start"],
                                                                     "end": blocker.get_json()["end"]}]}]
    # Every occurrence keeps 09:00 in Oslo, whatever the UTC offset of its date.
    starts = [dt.datetime.fromisoformat(stack.get(f"/api/v1/bookings/{i}", ADA).get_json()["start"]
                                        .replace("Z", "+00:00")).astimezone(OSLO) for i in body["occurrences"]]
    assert {(s.hour, s.minute) for s in starts} == {(9, 0)}
    problem(stack.book(ADA, rid, start, start + H, rrule="FREQ=WEEKLY;COUNT=2", on_conflict="sometimes"), 422)


def test_scoped_changes_and_cancellations_of_a_series(stack):
    res = stack.make_resource(policy={"horizon_days": 120})
    rid = res["id"]
    start = next_weekday(2, 9)
    occ = stack.book(ADA, rid, start, start + H, rrule="FREQ=WEEKLY;COUNT=5").get_json()["occurrences"]
    feed = stack.get(f"/feeds/resources/{rid}.ics")
    third = start + dt.timedelta(weeks=2)
    moved = stack.patch(f"/api/v1/bookings/{occ[2]}", ADA, {"start": rfc(third + 2 * H), "end": rfc(third + 4 * H),
                                                            "scope": "following"})
    assert moved.status_code == 200, moved.get_json()
    assert moved.get_json()["updated"] == occ[2:]
    after = {r.id: r for r in rows(stack, user_sub="ada")}
    assert [after[i].start_at.astimezone(OSLO).hour for i in occ] == [9, 9, 11, 11, 11]
    assert [after[i].end_at - after[i].start_at for i in occ] == [H, H, 2 * H, 2 * H, 2 * H]
    assert [after[i].sequence for i in occ] == [0, 0, 1, 1, 1]
    # The feed changed: a new ETag, and each moved occurrence carries its new SEQUENCE under its old UID.
    changed = stack.get(f"/feeds/resources/{rid}.ics", headers={"If-None-Match": feed.headers["ETag"]})
    assert changed.status_code == 200
    assert changed.get_data(as_text=True).count("SEQUENCE:1") == 3
    # The move is all or nothing: one clash refuses it for every occurrence.
    stack.book(BOB, rid, start + dt.timedelta(weeks=4, hours=5), start + dt.timedelta(weeks=4, hours=6))
    problem(stack.patch(f"/api/v1/bookings/{occ[0]}", ADA, {"start": rfc(start + 3 * H), "end": rfc(start + 5 * H),
                                                            "scope": "all"}), 409)
    assert [r.sequence for r in rows(stack, user_sub="ada")] == [0, 0, 1, 1, 1]
    cancelled = stack.post(f"/api/v1/bookings/{occ[3]}/cancel", ADA, {"scope": "following", "reason": "Done"})
    assert cancelled.get_json()["cancelled"] == occ[3:]
    rest = stack.post(f"/api/v1/bookings/{occ[0]}/cancel", ADA, {"scope": "all"}).get_json()
    assert rest["cancelled"] == occ[:3]
    assert {r.status for r in rows(stack, user_sub="ada")} == {"cancelled"}
    types = [t for t, i in outbox_types(stack) if i in occ]
    assert types.count("booking.updated") == 3 and types.count("booking.cancelled") == 5
    problem(stack.post(f"/api/v1/bookings/{occ[0]}/cancel", ADA, {"scope": "all"}), 409)
    problem(stack.patch(f"/api/v1/bookings/{occ[0]}", ADA, {"scope": "some"}), 422)


def test_a_series_is_extended_and_shortened(stack):
    res = stack.make_resource(policy={"horizon_days": 120})
    rid = res["id"]
    start = next_weekday(3, 13)
    occ = stack.book(ADA, rid, start, start + H, rrule="FREQ=WEEKLY;COUNT=3").get_json()["occurrences"]
    longer = stack.post(f"/api/v1/bookings/{occ[0]}/series", ADA, {"rrule": "FREQ=WEEKLY;COUNT=5"})
    assert longer.status_code == 200, longer.get_json()
    body = longer.get_json()
    assert body["occurrences"][:3] == occ and len(body["booked"]) == 2 and body["cancelled"] == []
    got = stack.get(f"/api/v1/bookings/{occ[0]}", ADA).get_json()
    assert got["occurrences"] == body["occurrences"] and got["recurrence_id"] == got["start"]
    shorter = stack.post(f"/api/v1/bookings/{occ[0]}/series", ADA, {"rrule": "FREQ=WEEKLY;COUNT=2"}).get_json()
    assert shorter["cancelled"] == [occ[2], *body["booked"]] and shorter["occurrences"] == occ[:2]
    assert problem(stack.post(f"/api/v1/bookings/{occ[0]}/series", ADA, {"rrule": "FREQ=WEEKLY"}),
                   422)["violations"][0]["rule"] == "rrule"
    problem(stack.post(f"/api/v1/bookings/{occ[0]}/series", BOB, {"rrule": "FREQ=WEEKLY;COUNT=2"}), 403)


# -- quotas at the week's edges --------------------------------------------------------------------------


def test_the_quota_week_starts_at_monday_midnight_in_the_labs_zone(stack):
    res = stack.make_resource(policy={"max_hours_per_week": 3, "horizon_days": 30})
    rid = res["id"]
    sunday = next_weekday(6, 21, min_days=7)
    monday = sunday + dt.timedelta(hours=3)  # 00:00 on Monday, Oslo
    assert monday.astimezone(OSLO).weekday() == 0 and monday.astimezone(OSLO).hour == 0
    assert stack.book(ADA, rid, sunday - dt.timedelta(days=5), sunday - dt.timedelta(days=5) + 2 * H).status_code == 201
    # Sunday 23:00 to Monday 00:00 is the last hour of the old week: 3 h, allowed.
    assert stack.book(ADA, rid, monday - H, monday).status_code == 201
    # A quarter of an hour more in that week is refused; the same at Monday 00:00 is the new week.
    rules = problem(stack.book(ADA, rid, monday - 2 * H, monday - H - 45 * MIN), 422)["violations"]
    assert [v["rule"] for v in rules] == ["quota"]
    assert stack.book(ADA, rid, monday, monday + 3 * H).status_code == 201
    problem(stack.book(ADA, rid, monday + 4 * H, monday + 4 * H + 15 * MIN), 422)
    # A manager of the lab is not limited.
    assert stack.book(stack.MANAGER, rid, monday + 5 * H, monday + 9 * H).status_code == 201


# -- the waitlist -----------------------------------------------------------------------------------------


def test_waitlist_over_http(stack):
    res = stack.make_resource(policy={"max_minutes": 180})
    rid = res["id"]
    start = next_weekday(1, 10)
    free = problem(join(stack, BOB, rid, start, start + H), 409)
    assert free["type"].endswith("time-is-free")
    taken = stack.book(ADA, rid, start, start + H).get_json()
    joined = join(stack, BOB, rid, start, start + H, title="Backup run")
    assert joined.status_code == 201, joined.get_json()
    entry = joined.get_json()
    assert joined.headers["Location"] == f"/api/v1/waitlist/{entry['id']}"
    assert (entry["position"], entry["status"], entry["conflicts"]) == (1, "waiting", [
        {"start": taken["start"], "end": taken["end"]}])
    second = join(stack, CARL, rid, start, start + H).get_json()
    assert second["position"] == 2
    assert [v["rule"] for v in problem(join(stack, CARL, rid, start, start + 4 * H), 422)["violations"]] == [
        "max_minutes"]
    problem(join(stack, BOB, rid, start, start + H), 409)
    mine = stack.get("/api/v1/waitlist?mine=true", BOB).get_json()
    assert [e["id"] for e in mine["items"]] == [entry["id"]] and mine["next"] is None
    problem(stack.get(f"/api/v1/waitlist/{entry['id']}", CARL), 404)
    managed = stack.get(f"/api/v1/waitlist?resource_id={rid}", stack.MANAGER).get_json()["items"]
    assert {e["id"] for e in managed} == {entry["id"], second["id"]}

    assert stack.post(f"/api/v1/bookings/{taken['id']}/cancel", ADA, {}).status_code == 200
    got = stack.get(f"/api/v1/waitlist/{entry['id']}", BOB).get_json()
    assert got["status"] == "booked" and got["position"] is None
    booking = stack.get(f"/api/v1/bookings/{got['booking_id']}", BOB).get_json()
    assert (booking["status"], booking["title"], booking["user"]["sub"]) == ("confirmed", "Backup run", "bob")
    assert stack.get(f"/api/v1/waitlist/{second['id']}", CARL).get_json()["position"] == 1
    problem(stack.delete(f"/api/v1/waitlist/{entry['id']}", BOB), 409)
    assert stack.delete(f"/api/v1/waitlist/{second['id']}", CARL).status_code == 204
    assert stack.get("/api/v1/waitlist?mine=true&status=left", CARL).get_json()["items"][0]["id"] == second["id"]
    types = [t for t, _ in outbox_types(stack)]
    assert {"waitlist.joined", "waitlist.booked", "waitlist.left"} <= set(types)


def test_a_waiter_who_is_no_longer_qualified_is_skipped_and_told(stack):
    res = stack.make_resource(policy={"requires_qualification": True})
    rid = res["id"]
    for who in (ADA, BOB, CARL):
        stack.post(f"/api/v1/resources/{rid}/qualifications", stack.MANAGER, {"sub": who})
    stack.sync()
    start = next_weekday(3, 10)
    taken = stack.book(ADA, rid, start, start + H).get_json()
    bob = join(stack, BOB, rid, start, start + H).get_json()
    carl = join(stack, CARL, rid, start, start + H).get_json()
    stack.delete(f"/api/v1/resources/{rid}/qualifications/{BOB}", stack.MANAGER)
    stack.sync()
    stack.post(f"/api/v1/bookings/{taken['id']}/cancel", ADA, {})
    skipped = stack.get(f"/api/v1/waitlist/{bob['id']}", BOB).get_json()
    assert skipped["status"] == "skipped" and [v["rule"] for v in skipped["violations"]] == ["qualification"]
    assert stack.get(f"/api/v1/waitlist/{carl['id']}", CARL).get_json()["status"] == "booked"

    def told():
        items = stack.get("/api/v1/notifications?mine=true", BOB).get_json()["items"]
        return [n for n in items if n["subject"].startswith("Not booked:")]

    assert len(stack.eventually(told, what="notify to tell the skipped waiter")) == 1


def test_a_removed_outage_gives_its_time_to_the_waitlist(stack):
    res = stack.make_resource()
    rid = res["id"]
    start = next_weekday(2, 9)
    outage = stack.post(f"/api/v1/resources/{rid}/outages", stack.MANAGER,
                        {"start": rfc(start - H), "end": rfc(start + 3 * H), "reason": "Service"}).get_json()
    stack.sync()
    waiting = join(stack, BOB, rid, start, start + H)
    assert waiting.status_code == 201, waiting.get_json()
    assert stack.delete(f"/api/v1/resources/{rid}/outages/{outage['id']}", stack.MANAGER).status_code == 204
    stack.eventually(lambda: stack.get(f"/api/v1/waitlist/{waiting.get_json()['id']}", BOB).get_json()["status"]
                     == "booked", what="the waiter to get the time of the removed outage")


# -- no-shows -----------------------------------------------------------------------------------------------


def _into_the_past(stack, booking_id: str, days_ago: float, grace_minutes: int = 15) -> None:
    """Move a booking into the past with its check-in deadline unsettled, as a downtime would leave it."""
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(days=days_ago)
    with stack.runtimes["booking"].db.begin() as s:
        s.execute(update(Booking).where(Booking.id == booking_id).values(
            start_at=start, end_at=start + H, hold_until=start + H,
            checkin_due=start + dt.timedelta(minutes=grace_minutes)))


def test_no_shows_after_a_missed_run_and_the_freed_time(stack):
    res = stack.make_resource(policy={"checkin_required": True, "checkin_grace_minutes": 15})
    rid = res["id"]
    old = [stack.book(ADA, rid, next_weekday(4, 8 + i), next_weekday(4, 9 + i)).get_json()["id"] for i in range(3)]
    for i, booking_id in enumerate(old):
        _into_the_past(stack, booking_id, days_ago=3 + i)
    # One that is still ahead, with a waiter for its second half whose deadline we let pass now.
    ahead = stack.book(ADA, rid, next_weekday(2, 9), next_weekday(2, 12)).get_json()
    waiting = join(stack, BOB, rid, next_weekday(2, 10), next_weekday(2, 12)).get_json()
    with stack.runtimes["booking"].db.begin() as s:
        s.execute(update(Booking).where(Booking.id == ahead["id"]).values(
            checkin_due=dt.datetime.now(dt.UTC) - MIN))
    # The stack's own loop may take some of them first (it runs every interval): what counts is the outcome.
    Housekeeping(stack.runtimes["booking"]).run_once()
    by_id = {r.id: r for r in rows(stack, resource_id=rid)}
    assert {by_id[i].status for i in [*old, ahead["id"]]} == {"no_show"}
    got = stack.get(f"/api/v1/bookings/{ahead['id']}", ADA).get_json()
    assert (got["status"], got["sequence"]) == ("no_show", 1)
    assert stack.get(f"/api/v1/waitlist/{waiting['id']}", BOB).get_json()["status"] == "booked"
    assert stack.get(f"/api/v1/bookings?resource_id={rid}&status=no_show", ADA).get_json()["items"]
    assert [t for t, _ in outbox_types(stack)].count("booking.no_show") == 4
    assert Housekeeping(stack.runtimes["booking"]).run_once() == (0, 0)
    problem(stack.post(f"/api/v1/bookings/{ahead['id']}/check-in", ADA), 409)


def test_no_shows_are_settled_once_by_several_replicas(stack):
    res = stack.make_resource(policy={"checkin_required": True})
    others = [stack.make_resource(lab_id=res["lab_id"], policy={"checkin_required": True}) for _ in range(2)]
    ids = []
    for r in [res, *others]:
        for i in range(6):
            booking = stack.book(ADA, r["id"], next_weekday(3, 8 + i), next_weekday(3, 9 + i)).get_json()
            _into_the_past(stack, booking["id"], days_ago=1 + i / 10)
            ids.append(booking["id"])
    replicas = [build_runtime(stack.settings) for _ in range(4)]
    try:
        results = race([functools.partial(Housekeeping(rt).run_once) for rt in replicas])
    finally:
        for rt in replicas:
            rt.db.dispose()
    assert sum(n for n, _ in results) <= len(ids)  # the stack's own loop may have taken a few
    settled = {r.id: r for r in rows(stack, user_sub="ada")}
    assert all((settled[i].status, settled[i].sequence) == ("no_show", 1) for i in ids)
    no_shows = [i for t, i in outbox_types(stack) if t == "booking.no_show"]
    assert sorted(no_shows) == sorted(ids), "a booking was settled twice, or not at all"


# -- races: many cancellations and joins at once ----------------------------------------------------------


def test_concurrent_cancels_and_joins_never_give_one_window_to_two_waiters(stack):
    res = stack.make_resource()
    rid = res["id"]
    day = next_weekday(3, 8)
    hours = 8
    holders = [Caller(stack.app, stack.token(f"holder-{i}")) for i in range(hours)]
    held = []
    for i, c in enumerate(holders):
        reply = c.book(rid, day + i * H, day + (i + 1) * H)
        assert reply.status == 201, reply.body
        held.append(reply.booking_id)
    rng = random.Random(5)

    def window(i: int) -> tuple[dt.datetime, dt.datetime]:
        first = rng.randrange(hours)
        return day + first * H, day + min(hours, first + rng.choice((1, 1, 2))) * H

    early = [Caller(stack.app, stack.token(f"early-{i}")) for i in range(16)]
    for i, c in enumerate(early):
        s, e = window(i)
        reply = c.call("POST", "/api/v1/waitlist", {"resource_id": rid, "start": rfc(s), "end": rfc(e)})
        assert reply.status == 201, reply.body
    late = [Caller(stack.app, stack.token(f"late-{i}")) for i in range(12)]
    bookers = [Caller(stack.app, stack.token(f"booker-{i}")) for i in range(8)]
    late_windows = [window(i) for i in range(len(late))]
    booker_windows = [window(i) for i in range(len(bookers))]

    jobs = [functools.partial(holders[i].cancel, held[i], tag="cancel") for i in range(hours)]
    jobs += [functools.partial(late[i].call, "POST", "/api/v1/waitlist",
                               {"resource_id": rid, "start": rfc(s), "end": rfc(e)}, tag="join")
             for i, (s, e) in enumerate(late_windows)]
    jobs += [functools.partial(bookers[i].book, rid, s, e, tag="book") for i, (s, e) in enumerate(booker_windows)]
    replies = race(jobs)
    assert_only([r for r in replies if r.tag == "cancel"], {200})
    assert_only([r for r in replies if r.tag == "join"], {201, 409})
    assert_only([r for r in replies if r.tag == "book"], {201, 409})

    assert_no_overlaps(stack, {rid: 0})
    live = {r.id: r for r in live_bookings(stack, [rid])}
    queue = entries(stack, rid)
    given = [e for e in queue if e.status == "booked"]
    assert given, "nobody on the waitlist got anything"
    assert len({e.booking_id for e in given}) == len(given), "one booking went to two waiters"
    owners = {r.id: r for r in rows(stack, resource_id=rid)}
    for e in given:
        booking = live.get(e.booking_id)
        assert booking is not None, f"{e.id} was given a booking that is not live"
        assert (booking.start, booking.end, owners[e.booking_id].user_sub) == (e.start_at, e.end_at, e.user_sub)
    # No one is left waiting for time that is free, and among equal windows the first to join got it.
    for e in queue:
        if e.status == "waiting":
            assert any(b.start < e.end_at and e.start_at < b.hold_until for b in live.values()), (
                f"{e.user_sub} still waits for {e.start_at}..{e.end_at}, which is free")
    for e in given:
        earlier = [o for o in queue if (o.start_at, o.end_at) == (e.start_at, e.end_at)
                   and (o.created_at, o.id) < (e.created_at, e.id)]
        assert all(o.status != "waiting" for o in earlier), f"{e.user_sub} got a window an earlier waiter waits for"


def test_many_cancellations_of_one_window_at_once_promote_one_waiter(stack):
    """Twelve bookings make up one three-hour window; all are cancelled at once by their owners and a manager
    each, while twelve people wait for exactly that window: one of them gets it, the first to join."""
    res = stack.make_resource()
    rid = res["id"]
    start = next_weekday(4, 8)
    pieces = [Caller(stack.app, stack.token(f"piece-{i}")) for i in range(12)]
    held = [c.book(rid, start + 15 * i * MIN, start + 15 * (i + 1) * MIN).booking_id for i, c in enumerate(pieces)]
    assert all(held)
    waiters = [Caller(stack.app, stack.token(f"waiter-{i}")) for i in range(12)]
    joined = []
    for c in waiters:
        reply = c.call("POST", "/api/v1/waitlist", {"resource_id": rid, "start": rfc(start),
                                                    "end": rfc(start + 3 * H)})
        assert reply.status == 201, reply.body
        joined.append(reply.body["id"])
    manager = Caller(stack.app, stack.token(*Stack.MANAGER))
    jobs = [functools.partial(pieces[i].cancel, held[i], tag="owner") for i in range(12)]
    jobs += [functools.partial(manager.cancel, held[i], tag="manager") for i in range(12)]
    replies = race(jobs)
    assert_only(replies, {200, 409})
    assert sorted(r.status for r in replies).count(200) == 12
    queue = {e.id: e for e in entries(stack, rid)}
    assert [queue[i].status for i in joined] == ["booked"] + ["waiting"] * 11
    assert assert_no_overlaps(stack, {rid: 0}) == 1


# -- usage and utilisation ----------------------------------------------------------------------------------


def test_usage_as_json_and_csv_for_the_labs_managers(stack):
    lab = stack.make_lab()
    res = stack.make_resource(lab["id"], name="Zeiss LSM 980")
    rid = res["id"]
    day = next_weekday(1, 8)
    ada = [stack.book(ADA, rid, day + i * 2 * H, day + (i * 2 + 1) * H, project="NFR-1").get_json() for i in range(2)]
    ext = stack.book(SINTEF_BOB, rid, day + 5 * H, day + 7 * H + 30 * MIN, project="EXT-9").get_json()
    gone = stack.book(ADA, rid, day + 8 * H, day + 9 * H, project="NFR-1").get_json()
    stack.post(f"/api/v1/bookings/{gone['id']}/cancel", ADA, {})
    window = f"from={q(day - H)}&to={q(day + 7 * H)}"  # clips the external booking to 2 h
    body = stack.get(f"/api/v1/usage?lab_id={lab['id']}&{window}", stack.MANAGER).get_json()
    lines = [(x["org"], x["project"], x["bookings"], x["hours"], x["rate"], x["amount"], x["currency"])
             for x in body["items"]]
    assert lines == [("ntnu", "NFR-1", 2, 2.0, 450, 900.0, "NOK"), ("sintef", "EXT-9", 1, 2.0, 1200, 2400.0, "NOK")]
    assert body["items"][0]["resource_name"] == "Zeiss LSM 980" and body["from"] == utc(day - H)
    assert ada and ext
    resp = stack.get(f"/api/v1/usage?lab_id={lab['id']}&{window}&format=csv&org=sintef", stack.MANAGER)
    assert resp.status_code == 200 and resp.headers["Content-Type"] == "text/csv; charset=utf-8"
    table = list(csv.reader(io.StringIO(resp.get_data(as_text=True))))
    assert table == [["resource_id", "resource_name", "org", "project", "bookings", "hours", "rate", "amount",
                      "currency"], [rid, "Zeiss LSM 980", "sintef", "EXT-9", "1", "2.00", "1200", "2400.00", "NOK"]]
    assert stack.get(f"/api/v1/usage?resource_id={rid}&{window}", stack.MANAGER).get_json()["items"] == body["items"]
    assert stack.get(f"/api/v1/usage?{window}", ("root", ("admin",), "ntnu")).status_code == 200
    problem(stack.get(f"/api/v1/usage?lab_id={lab['id']}&{window}", ADA), 403)
    problem(stack.get(f"/api/v1/usage?{window}", ADA), 403)
    assert {e["field"] for e in problem(stack.get(f"/api/v1/usage?lab_id={lab['id']}", stack.MANAGER),
                                        422)["errors"]} == {"from", "to"}
    problem(stack.get(f"/api/v1/usage?lab_id={lab['id']}&{window}&format=xml", stack.MANAGER), 422)
    problem(stack.get(f"/api/v1/usage?lab_id=nope&{window}", stack.MANAGER), 404)


def test_utilisation_for_the_labs_managers(stack):
    lab = stack.make_lab()
    week = {d: [["08:00", "16:00"]] for d in ("mon", "tue", "wed", "thu", "fri")}
    res = stack.make_resource(lab["id"], policy={"opening_hours": week})
    monday = next_weekday(0, 0, min_days=7)
    assert stack.book(ADA, res["id"], monday + 8 * H, monday + 12 * H).status_code == 201
    window = f"lab_id={lab['id']}&from={q(monday)}&to={q(monday + dt.timedelta(days=7))}"
    body = stack.get(f"/api/v1/utilisation?{window}", stack.MANAGER).get_json()
    assert [(x["resource_id"], x["open_hours"], x["booked_hours"], x["utilisation"]) for x in body["items"]] == [
        (res["id"], 40.0, 4.0, 0.1)]
    problem(stack.get(f"/api/v1/utilisation?{window}", ADA), 403)
    problem(stack.get(f"/api/v1/utilisation?from={q(monday)}&to={q(monday + H)}", stack.MANAGER), 422)


def test_openapi_documents_the_new_paths(stack):
    doc = stack.get("/api/v1/openapi/booking.json").get_json()
    for path in ("/api/v1/waitlist", "/api/v1/waitlist/{entry_id}", "/api/v1/usage", "/api/v1/utilisation",
                 "/api/v1/bookings/{booking_id}/series"):
        assert path in doc["paths"], path
    schemas = doc["components"]["schemas"]
    assert set(schemas["BookingPatch"]["properties"]["scope"]["enum"]) == {"this", "following", "all"}
    assert set(schemas["BookingIn"]["properties"]["on_conflict"]["enum"]) == {"fail", "skip"}
