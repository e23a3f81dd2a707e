"""Booking's use cases through its real wiring (``build_runtime``, the consumer's handlers, the housekeeping
jobs) on a SQLite file, with a fixed clock.

Inventory's facts arrive as the events its consumer would apply; the clock is
``shared.timeutil.now`` as the booking modules see it, set by each test.

Calendar facts used below (2027): 1 March is a Monday; Europe/Oslo springs forward on Sunday 28 March and
falls back on Sunday 31 October.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from services.booking import consumers, handlers, reports, waitlist
from services.booking.app import build_runtime
from services.booking.store import Booking, FeedVersion, WaitlistEntry
from shared.auth import Principal
from shared.config import Settings
from shared.errors import Conflict, InvalidState, PolicyViolation
from shared.migrate import upgrade

UTC = dt.UTC
OSLO = ZoneInfo("Europe/Oslo")
NOW = dt.datetime(2027, 3, 1, 6, 0, tzinfo=UTC)  # Monday 1 March 2027, 07:00 in Oslo

ADA = Principal("ada", "Ada", "ada@example.org", "ntnu", ("researcher",))
BOB = Principal("bob", "Bob", "bob@example.org", "sintef", ("researcher",))
CARL = Principal("carl", "Carl", "carl@example.org", "stolav", ("researcher",))
DORA = Principal("dora", "Dora", "dora@example.org", "ntnu", ("researcher",))
MANAGER = Principal("mgr", "Manager", "mgr@example.org", "ntnu", ("researcher", "manager"))
LAB = "lab-1"
WORKDAYS = ("mon", "tue", "wed", "thu", "fri")


def oslo(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> dt.datetime:
    return dt.datetime(y, mo, d, h, mi, tzinfo=OSLO).astimezone(UTC)


def wall(value: str) -> str:
    """A UTC ``...Z`` string as Oslo wall-clock ``YYYY-MM-DD HH:MM``."""
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(OSLO).strftime("%Y-%m-%d %H:%M")


class Clock:
    """``now`` for the booking modules, set by the test."""

    current: Clock | None = None

    def __init__(self, monkeypatch, start: dt.datetime) -> None:
        self.value = start
        for module in (handlers, waitlist, consumers):
            monkeypatch.setattr(module, "now", lambda: self.value)
        Clock.current = self

    def set(self, value: dt.datetime) -> None:
        self.value = value

    def tick(self) -> None:
        """A second later: who joined a waitlist first is decided by the time they joined."""
        self.value += dt.timedelta(seconds=1)


@pytest.fixture
def clock(monkeypatch) -> Clock:
    return Clock(monkeypatch, NOW)


@pytest.fixture
def rt(tmp_path, clock):
    settings = Settings(data_dir=str(tmp_path), public_url="https://labshare.example.org")
    upgrade("booking", settings)
    runtime = build_runtime(settings)
    apply(runtime, "lab.created", {"id": LAB, "name": "Cell imaging lab", "org": "ntnu", "timezone": "Europe/Oslo",
                                   "managers": [{"sub": "mgr", "name": "Manager", "email": "mgr@example.org"}],
                                   "version": 1})
    yield runtime
    runtime.db.dispose()


def apply(rt, type_: str, data: dict) -> None:
    """Apply an inventory event as booking's consumer would."""
    handler = consumers.handlers(rt)[type_]
    with rt.db.begin() as session:
        handler(session, {"id": str(uuid.uuid4()), "type": type_, "data": data})


def make_resource(rt, version: int = 1, rid: str | None = None, **policy) -> str:
    rid = rid or f"res-{uuid.uuid4().hex[:6]}"
    apply(rt, "resource.created", {
        "id": rid, "lab_id": LAB, "name": f"Instrument {rid}", "category": "microscopy/confocal",
        "status": "active", "policy": {"horizon_days": 400, **policy},
        "rates": {"internal": 450, "external": 1200, "currency": "NOK"}, "version": version})
    return rid


def book(rt, user, rid, start, end, **extra) -> dict:
    return handlers.create_booking(rt, user, {"resource_id": rid, "start": start, "end": end, "title": "Imaging",
                                              "project": extra.pop("project", "P-1"), **extra})


def rows(rt, **where) -> list[Booking]:
    with rt.db.read() as s:
        stmt = select(Booking).order_by(Booking.start_at)
        for key, value in where.items():
            stmt = stmt.where(getattr(Booking, key) == value)
        return list(s.scalars(stmt))


def entry(rt, entry_id: str) -> WaitlistEntry:
    with rt.db.read() as s:
        return s.get(WaitlistEntry, entry_id)


def events(rt) -> list[tuple[str, dict]]:
    """Every event in the outbox, in order: (type, data)."""
    outbox = rt.events.outbox
    with rt.db.read() as s:
        return [(t, json.loads(p)["data"]) for t, p in s.execute(select(outbox.c.type, outbox.c.payload)
                                                                 .order_by(outbox.c.id))]


def mark(rt) -> int:
    """The outbox position now: ``events(rt)[mark(rt):]`` are the events made since."""
    return len(events(rt))


def feed_version(rt, scope: str, key: str) -> int:
    with rt.db.read() as s:
        row = s.get(FeedVersion, (scope, key))
        return row.version if row else 0


def join(rt, user, rid, start, end) -> dict:
    Clock.current.tick()
    return waitlist.join(rt, user, {"resource_id": rid, "start": start, "end": end, "title": "Waiting"})


# -- series: all or nothing, or skip -----------------------------------------------------------------


def test_a_series_that_clashes_anywhere_writes_nothing(rt):
    rid = make_resource(rt)
    blocker = book(rt, BOB, rid, oslo(2027, 3, 16, 9), oslo(2027, 3, 16, 10))
    before = mark(rt)
    with pytest.raises(Conflict) as refused:
        book(rt, ADA, rid, oslo(2027, 3, 2, 9), oslo(2027, 3, 2, 11), rrule="FREQ=WEEKLY;COUNT=6")
    conflicts = refused.value.extra["conflicts"]
    assert [wall(c["occurrence"]["start"]) for c in conflicts] == ["2027-03-16 09:00"]
    assert [(c["start"], c["end"]) for c in conflicts] == [(blocker["start"], blocker["end"])]
    assert [r.id for r in rows(rt, resource_id=rid)] == [blocker["id"]]
    assert events(rt)[before:] == []


def test_a_series_breaking_rules_lists_every_affected_occurrence(rt):
    rid = make_resource(rt, opening_hours={d: [["08:00", "16:00"]] for d in WORKDAYS}, max_minutes=120)
    with pytest.raises(PolicyViolation) as refused:
        book(rt, ADA, rid, oslo(2027, 3, 3, 9), oslo(2027, 3, 3, 10), rrule="FREQ=DAILY;COUNT=7")
    found = [(v["rule"], wall(v["occurrence"]["start"])) for v in refused.value.violations]
    assert found == [("opening_hours", "2027-03-06 09:00"), ("opening_hours", "2027-03-07 09:00")]
    assert rows(rt, resource_id=rid) == []


def test_skip_books_the_rest_and_says_what_was_skipped_and_why(rt):
    rid = make_resource(rt, opening_hours={d: [["08:00", "16:00"]] for d in WORKDAYS}, max_hours_per_week=4)
    blocker = book(rt, BOB, rid, oslo(2027, 3, 3, 9, 30), oslo(2027, 3, 3, 10, 30))
    before = mark(rt)
    # Daily 09:00-11:00 from Monday 1 March for 8 days: Wed clashes, Sat/Sun are closed, and the quota of
    # 4 h a week fits Mon + Tue; Thu and Fri are over it; the next Monday starts a new week.
    result = book(rt, ADA, rid, oslo(2027, 3, 1, 9), oslo(2027, 3, 1, 11), rrule="FREQ=DAILY;COUNT=8",
                  on_conflict="skip")
    booked = rows(rt, series_id=result["series_id"])
    assert [wall(r.start_at.strftime("%Y-%m-%dT%H:%M:%SZ")) for r in booked] == [
        "2027-03-01 09:00", "2027-03-02 09:00", "2027-03-08 09:00"]
    assert result["occurrences"] == [r.id for r in booked]
    skipped = {wall(s["start"]): s for s in result["skipped"]}
    assert {day: s["reason"] for day, s in skipped.items()} == {
        "2027-03-03 09:00": "conflict", "2027-03-04 09:00": "quota", "2027-03-05 09:00": "quota",
        "2027-03-06 09:00": "opening_hours", "2027-03-07 09:00": "opening_hours"}
    assert skipped["2027-03-03 09:00"]["conflicts"] == [{"start": blocker["start"], "end": blocker["end"]}]
    assert [v["rule"] for v in skipped["2027-03-04 09:00"]["violations"]] == ["quota"]
    created = [d["id"] for t, d in events(rt)[before:] if t == "booking.created"]
    assert created == result["occurrences"]


def test_skip_with_nothing_left_refuses_as_all_or_nothing_would(rt):
    rid = make_resource(rt)
    book(rt, BOB, rid, oslo(2027, 3, 2, 8), oslo(2027, 3, 2, 12), rrule="FREQ=WEEKLY;COUNT=3")
    with pytest.raises(Conflict) as refused:
        book(rt, ADA, rid, oslo(2027, 3, 2, 9), oslo(2027, 3, 2, 10), rrule="FREQ=WEEKLY;COUNT=3",
             on_conflict="skip")
    assert len(refused.value.extra["conflicts"]) == 3
    assert len(rows(rt, user_sub="ada")) == 0


# -- scoped changes -----------------------------------------------------------------------------------


def weekly(rt, rid, user=ADA, count=4, day=(2027, 3, 16), hours=(9, 10), rule=None):
    start, end = oslo(*day, hours[0]), oslo(*day, hours[1])
    result = book(rt, user, rid, start, end, rrule=rule or f"FREQ=WEEKLY;COUNT={count}")
    return result["occurrences"]


def local_times(rt, ids) -> list[tuple[str, str]]:
    by_id = {r.id: r for r in rows(rt)}
    return [(by_id[i].start_at.astimezone(OSLO).strftime("%m-%d %H:%M"),
             by_id[i].end_at.astimezone(OSLO).strftime("%H:%M")) for i in ids]


def test_following_moves_this_and_later_occurrences_by_the_same_wall_clock_amount_across_dst(rt):
    rid = make_resource(rt)
    occ = weekly(rt, rid)  # Tuesdays 16, 23, 30 March and 6 April, 09:00-10:00 Oslo; DST starts on 28 March
    before = mark(rt)
    resource_version = feed_version(rt, "resource", rid)
    answer = handlers.update_booking(rt, ADA, occ[1], {"start": oslo(2027, 3, 23, 10), "end": oslo(2027, 3, 23, 11, 30),
                                                        "title": "Moved", "scope": "following"})
    assert answer["updated"] == occ[1:]
    assert local_times(rt, occ) == [("03-16 09:00", "10:00"), ("03-23 10:00", "11:30"), ("03-30 10:00", "11:30"),
                                    ("04-06 10:00", "11:30")]
    by_id = {r.id: r for r in rows(rt)}
    # The UTC hour differs across the change: 09:00Z before, 08:00Z after.
    assert [by_id[i].start_at.hour for i in occ[1:]] == [9, 8, 8]
    assert [by_id[i].sequence for i in occ] == [0, 1, 1, 1]
    assert [by_id[i].title for i in occ] == ["Imaging", "Moved", "Moved", "Moved"]
    # Their slots moved with them, so a later change of the rule still finds them.
    assert [by_id[i].recurrence_id for i in occ[1:]] == [by_id[i].start_at for i in occ[1:]]
    updated = [(t, d["id"], d["sequence"]) for t, d in events(rt)[before:]]
    assert updated == [("booking.updated", i, 1) for i in occ[1:]]
    assert feed_version(rt, "resource", rid) == resource_version + 1
    assert feed_version(rt, "user", "ada") > 0


def test_all_changes_only_occurrences_that_have_not_started_and_are_live(rt, clock):
    rid = make_resource(rt)
    occ = weekly(rt, rid, count=5)
    handlers.cancel_booking(rt, ADA, occ[2], None)
    clock.set(oslo(2027, 3, 16, 9, 30))  # the first one is under way
    answer = handlers.update_booking(rt, ADA, occ[3], {"title": "Renamed", "scope": "all"})
    assert answer["updated"] == [occ[1], occ[3], occ[4]]
    titles = {r.id: (r.title, r.status) for r in rows(rt)}
    assert titles[occ[0]] == ("Imaging", "confirmed")
    assert titles[occ[2]] == ("Imaging", "cancelled")


def test_a_scoped_move_is_all_or_nothing(rt):
    rid = make_resource(rt, opening_hours={d: [["08:00", "16:00"]] for d in WORKDAYS})
    occ = weekly(rt, rid)
    blocker = book(rt, BOB, rid, oslo(2027, 3, 30, 11), oslo(2027, 3, 30, 12))
    with pytest.raises(Conflict) as refused:
        handlers.update_booking(rt, ADA, occ[0], {"start": oslo(2027, 3, 16, 11), "end": oslo(2027, 3, 16, 12),
                                                   "scope": "all"})
    assert refused.value.extra["conflicts"] == [{"start": blocker["start"], "end": blocker["end"],
                                                 "occurrence": {"start": blocker["start"], "end": blocker["end"]}}]
    with pytest.raises(PolicyViolation) as broken:
        handlers.update_booking(rt, ADA, occ[0], {"start": oslo(2027, 3, 16, 15), "end": oslo(2027, 3, 16, 17),
                                                   "scope": "following"})
    assert {v["rule"] for v in broken.value.violations} == {"opening_hours"}
    assert len(broken.value.violations) == 4
    assert [r.sequence for r in rows(rt, user_sub="ada")] == [0, 0, 0, 0]
    assert local_times(rt, occ)[0] == ("03-16 09:00", "10:00")


def test_occurrences_may_move_onto_each_others_places(rt):
    rid = make_resource(rt, max_minutes=2880)
    occ = weekly(rt, rid, count=5, rule="FREQ=DAILY;COUNT=5", day=(2027, 3, 2))
    # Each occurrence a day later: every one but the last lands on its neighbour's old place.
    handlers.update_booking(rt, ADA, occ[0], {"start": oslo(2027, 3, 3, 9), "end": oslo(2027, 3, 3, 10),
                                               "scope": "all"})
    assert [t for t, _ in local_times(rt, occ)] == ["03-03 09:00", "03-04 09:00", "03-05 09:00", "03-06 09:00",
                                                    "03-07 09:00"]
    # Stretching each to 25 hours would make them overlap one another: refused, with the clashes named.
    with pytest.raises(Conflict) as refused:
        handlers.update_booking(rt, ADA, occ[0], {"end": oslo(2027, 3, 4, 10), "scope": "all"})
    assert len(refused.value.extra["conflicts"]) == 4


def test_cancel_following_cancels_each_occurrence_and_offers_the_time(rt):
    rid = make_resource(rt)
    occ = weekly(rt, rid)
    waiting = join(rt, BOB, rid, oslo(2027, 3, 30, 9), oslo(2027, 3, 30, 10))
    before = mark(rt)
    answer = handlers.cancel_booking(rt, ADA, occ[1], "Project ended", scope="following")
    assert answer["cancelled"] == occ[1:]
    assert [r.status for r in rows(rt, user_sub="ada")] == ["confirmed", "cancelled", "cancelled", "cancelled"]
    assert entry(rt, waiting["id"]).status == "booked"
    types = [(t, d.get("id")) for t, d in events(rt)[before:]]
    assert types[:3] == [("booking.cancelled", i) for i in occ[1:]]
    given = entry(rt, waiting["id"]).booking_id
    assert types[3:] == [("booking.created", given), ("booking.confirmed", given), ("waitlist.booked", waiting["id"])]
    # Nothing live is left after this one: asking again is refused.
    with pytest.raises(InvalidState):
        handlers.cancel_booking(rt, ADA, occ[1], None, scope="following")


# -- extending and shortening a series ------------------------------------------------------------------


def test_a_series_is_extended_shortened_and_keeps_its_exceptions(rt):
    rid = make_resource(rt)
    occ = weekly(rt, rid)
    handlers.cancel_booking(rt, ADA, occ[1], None)  # an exception: not booked again
    handlers.update_booking(rt, ADA, occ[2], {"start": oslo(2027, 3, 30, 14), "end": oslo(2027, 3, 30, 15)})
    longer = handlers.replan_series(rt, ADA, occ[0], "FREQ=WEEKLY;COUNT=6")
    assert longer["cancelled"] == [] and len(longer["booked"]) == 2
    assert longer["occurrences"] == [occ[0], occ[2], occ[3], *longer["booked"]]
    assert [t for t, _ in local_times(rt, longer["occurrences"])] == [
        "03-16 09:00", "03-30 14:00", "04-06 09:00", "04-13 09:00", "04-20 09:00"]
    assert {r.rrule for r in rows(rt, user_sub="ada") if r.id in longer["booked"]} == {"FREQ=WEEKLY;COUNT=6"}
    shorter = handlers.replan_series(rt, ADA, occ[0], "FREQ=WEEKLY;UNTIL=20270331T000000Z")
    assert shorter["booked"] == []
    assert shorter["cancelled"] == [occ[3], *longer["booked"]]
    assert shorter["occurrences"] == [occ[0], occ[2]]


def test_extending_is_all_or_nothing_unless_skipped(rt):
    rid = make_resource(rt)
    occ = weekly(rt, rid, count=2)
    blocker = book(rt, BOB, rid, oslo(2027, 4, 6, 9), oslo(2027, 4, 6, 10))
    with pytest.raises(Conflict):
        handlers.replan_series(rt, ADA, occ[-1], "FREQ=WEEKLY;COUNT=4")
    assert len(rows(rt, user_sub="ada")) == 2
    answer = handlers.replan_series(rt, ADA, occ[-1], "FREQ=WEEKLY;COUNT=4", "skip")
    assert len(answer["booked"]) == 2 and answer["cancelled"] == []
    assert answer["skipped"] == [{"start": blocker["start"], "end": blocker["end"], "reason": "conflict",
                                  "conflicts": [{"start": blocker["start"], "end": blocker["end"]}]}]
    with pytest.raises(InvalidState):
        handlers.replan_series(rt, BOB, blocker["id"], "FREQ=WEEKLY;COUNT=2")


# -- the waitlist -----------------------------------------------------------------------------------------


def test_one_may_wait_only_for_time_that_is_taken(rt):
    rid = make_resource(rt, max_minutes=120)
    start, end = oslo(2027, 3, 2, 9), oslo(2027, 3, 2, 10)
    with pytest.raises(waitlist.TimeIsFree):
        join(rt, BOB, rid, start, end)
    book(rt, ADA, rid, start, end)
    first = join(rt, BOB, rid, start, end)
    assert (first["status"], first["position"]) == ("waiting", 1)
    assert join(rt, CARL, rid, oslo(2027, 3, 2, 9, 30), oslo(2027, 3, 2, 11))["position"] == 2
    with pytest.raises(InvalidState):
        join(rt, BOB, rid, start, end)
    with pytest.raises(PolicyViolation) as refused:
        join(rt, DORA, rid, start, oslo(2027, 3, 2, 13))
    assert [v["rule"] for v in refused.value.violations] == ["max_minutes"]
    assert [t for t, _ in events(rt)].count("waitlist.joined") == 2


def test_the_earliest_waiter_whose_whole_window_is_free_gets_it(rt):
    rid = make_resource(rt)
    first = book(rt, ADA, rid, oslo(2027, 3, 2, 9), oslo(2027, 3, 2, 10))
    second = book(rt, ADA, rid, oslo(2027, 3, 2, 10), oslo(2027, 3, 2, 11))
    wide = join(rt, BOB, rid, oslo(2027, 3, 2, 9), oslo(2027, 3, 2, 11))  # joined first, needs both hours
    narrow = join(rt, CARL, rid, oslo(2027, 3, 2, 9), oslo(2027, 3, 2, 10))
    same = join(rt, DORA, rid, oslo(2027, 3, 2, 9), oslo(2027, 3, 2, 10))
    handlers.cancel_booking(rt, ADA, first["id"], None)
    assert entry(rt, wide["id"]).status == "waiting"  # 10:00-11:00 is still taken
    assert entry(rt, narrow["id"]).status == "booked"
    assert entry(rt, same["id"]).status == "waiting"  # one window, one waiter
    given = {r.id: r for r in rows(rt, resource_id=rid)}[entry(rt, narrow["id"]).booking_id]
    assert (given.user_sub, given.status, given.title) == ("carl", "confirmed", "Waiting")
    handlers.cancel_booking(rt, ADA, second["id"], None)
    assert entry(rt, wide["id"]).status == "waiting"  # now Carl holds 09:00-10:00
    assert waitlist.get(rt, BOB, wide["id"])["position"] == 1


def test_a_waiter_the_rules_now_refuse_is_skipped_and_told(rt):
    rid = make_resource(rt, requires_qualification=True)
    for who in ("ada", "bob", "carl"):
        apply(rt, "qualification.granted", {"resource_id": rid, "sub": who})
    taken = book(rt, ADA, rid, oslo(2027, 3, 2, 9), oslo(2027, 3, 2, 10))
    bob = join(rt, BOB, rid, oslo(2027, 3, 2, 9), oslo(2027, 3, 2, 10))
    carl = join(rt, CARL, rid, oslo(2027, 3, 2, 9), oslo(2027, 3, 2, 10))
    apply(rt, "qualification.revoked", {"resource_id": rid, "sub": "bob"})
    before = mark(rt)
    handlers.cancel_booking(rt, ADA, taken["id"], None)
    skipped = entry(rt, bob["id"])
    assert skipped.status == "skipped" and [v["rule"] for v in skipped.violations] == ["qualification"]
    assert entry(rt, carl["id"]).status == "booked"
    told = [(t, d["id"]) for t, d in events(rt)[before:] if t.startswith("waitlist.")]
    assert told == [("waitlist.skipped", bob["id"]), ("waitlist.booked", carl["id"])]
    skipped_event = next(d for t, d in events(rt) if t == "waitlist.skipped")
    assert skipped_event["user"]["email"] == "bob@example.org" and skipped_event["violations"]


def test_where_approval_is_needed_the_waiter_is_offered_a_pending_booking(rt):
    rid = make_resource(rt, requires_approval=True)
    taken = book(rt, MANAGER, rid, oslo(2027, 3, 2, 9), oslo(2027, 3, 2, 10))
    bob = join(rt, BOB, rid, oslo(2027, 3, 2, 9), oslo(2027, 3, 2, 10))
    before = mark(rt)
    handlers.cancel_booking(rt, MANAGER, taken["id"], None)
    offered = entry(rt, bob["id"])
    assert offered.status == "offered"
    booking = {r.id: r for r in rows(rt)}[offered.booking_id]
    assert booking.status == "pending"
    assert [t for t, _ in events(rt)[before:]] == ["booking.cancelled", "booking.created", "waitlist.offered"]


def test_declines_moves_and_removed_outages_free_time_for_waiters(rt):
    rid = make_resource(rt, requires_approval=True)
    pending = book(rt, ADA, rid, oslo(2027, 3, 2, 9), oslo(2027, 3, 2, 10))
    bob = join(rt, BOB, rid, oslo(2027, 3, 2, 9), oslo(2027, 3, 2, 10))
    handlers.decline_booking(rt, MANAGER, pending["id"], "Service day")
    assert entry(rt, bob["id"]).status == "offered"

    other = make_resource(rt)
    moving = book(rt, ADA, other, oslo(2027, 3, 3, 9), oslo(2027, 3, 3, 10))
    carl = join(rt, CARL, other, oslo(2027, 3, 3, 9), oslo(2027, 3, 3, 10))
    handlers.update_booking(rt, ADA, moving["id"], {"start": oslo(2027, 3, 3, 13), "end": oslo(2027, 3, 3, 14)})
    assert entry(rt, carl["id"]).status == "booked"

    outage = {"id": "out-1", "resource_id": other, "start": "2027-03-04T06:00:00Z", "end": "2027-03-04T12:00:00Z"}
    apply(rt, "outage.created", outage)
    dora = join(rt, DORA, other, oslo(2027, 3, 4, 9), oslo(2027, 3, 4, 10))  # out of service: taken
    assert dora["status"] == "waiting"
    apply(rt, "outage.deleted", outage)
    assert entry(rt, dora["id"]).status == "booked"


def test_an_outage_cancellation_gives_what_it_leaves_free_to_waiters(rt):
    rid = make_resource(rt)
    taken = book(rt, ADA, rid, oslo(2027, 3, 2, 9), oslo(2027, 3, 2, 12))
    inside = join(rt, BOB, rid, oslo(2027, 3, 2, 9), oslo(2027, 3, 2, 10))
    outside = join(rt, CARL, rid, oslo(2027, 3, 2, 11), oslo(2027, 3, 2, 12))
    apply(rt, "outage.created", {"id": "out-2", "resource_id": rid, "start": "2027-03-02T08:00:00Z",
                                 "end": "2027-03-02T09:30:00Z"})
    assert {r.id: r.status for r in rows(rt)}[taken["id"]] == "cancelled"
    assert entry(rt, inside["id"]).status == "waiting"
    assert entry(rt, outside["id"]).status == "booked"


def test_entries_expire_when_their_start_passes(rt, clock):
    rid = make_resource(rt)
    taken = book(rt, ADA, rid, oslo(2027, 3, 2, 9), oslo(2027, 3, 2, 10))
    bob = join(rt, BOB, rid, oslo(2027, 3, 2, 9), oslo(2027, 3, 2, 10))
    later = join(rt, CARL, rid, oslo(2027, 3, 2, 9, 30), oslo(2027, 3, 2, 10))
    clock.set(oslo(2027, 3, 2, 9, 15))
    assert waitlist.expire_entries(rt) == 1
    assert entry(rt, bob["id"]).status == "expired"
    handlers.cancel_booking(rt, ADA, taken["id"], None)  # under way: only the later window can still be had
    assert entry(rt, later["id"]).status == "booked"
    clock.set(oslo(2027, 3, 9))
    assert waitlist.expire_entries(rt) == 0
    assert [t for t, _ in events(rt)].count("waitlist.expired") == 1


def test_leaving_the_waitlist(rt):
    rid = make_resource(rt)
    book(rt, ADA, rid, oslo(2027, 3, 2, 9), oslo(2027, 3, 2, 10))
    bob = join(rt, BOB, rid, oslo(2027, 3, 2, 9), oslo(2027, 3, 2, 10))
    carl = join(rt, CARL, rid, oslo(2027, 3, 2, 9), oslo(2027, 3, 2, 10))
    with pytest.raises(waitlist.NotFound):
        waitlist.leave(rt, CARL, bob["id"])
    waitlist.leave(rt, BOB, bob["id"])
    waitlist.leave(rt, BOB, bob["id"])  # already gone: nothing to do
    assert entry(rt, bob["id"]).status == "left"
    assert waitlist.get(rt, CARL, carl["id"])["position"] == 1
    waitlist.leave(rt, MANAGER, carl["id"])
    assert [t for t, _ in events(rt)].count("waitlist.left") == 2


# -- check-in and no-shows -----------------------------------------------------------------------------


def test_no_shows_are_settled_when_the_job_finally_runs_long_after(rt, clock):
    rid = make_resource(rt, checkin_required=True, checkin_grace_minutes=15)
    plain = make_resource(rt)
    came = book(rt, ADA, rid, oslo(2027, 3, 2, 9), oslo(2027, 3, 2, 10))
    missed = [book(rt, BOB, rid, oslo(2027, 3, 2 + i, 11), oslo(2027, 3, 2 + i, 12)) for i in range(3)]
    not_required = book(rt, CARL, plain, oslo(2027, 3, 2, 9), oslo(2027, 3, 2, 10))
    clock.set(oslo(2027, 3, 2, 9, 5))
    handlers.check_in(rt, ADA, came["id"])
    resource_version = feed_version(rt, "resource", rid)
    before = mark(rt)
    clock.set(oslo(2027, 3, 9))  # the job did not run for a week
    assert handlers.mark_no_shows(rt) == 3
    by_id = {r.id: r for r in rows(rt)}
    assert by_id[came["id"]].status == "confirmed"
    assert by_id[not_required["id"]].status == "confirmed"
    for b in missed:
        row = by_id[b["id"]]
        assert (row.status, row.sequence, row.checkin_due) == ("no_show", 1, None)
        assert row.hold_until == row.start_at + dt.timedelta(minutes=15)
        assert row.end_at - row.start_at == dt.timedelta(hours=1)  # billed for the whole booking
    assert [(t, d["id"], d["status"]) for t, d in events(rt)[before:]] == [
        ("booking.no_show", b["id"], "no_show") for b in missed]
    assert feed_version(rt, "resource", rid) == resource_version + 1
    assert handlers.mark_no_shows(rt) == 0


def test_a_no_show_frees_the_rest_of_its_time_for_the_waitlist(rt, clock):
    rid = make_resource(rt, checkin_required=True, checkin_grace_minutes=15)
    missed = book(rt, ADA, rid, oslo(2027, 3, 2, 9), oslo(2027, 3, 2, 12))
    bob = join(rt, BOB, rid, oslo(2027, 3, 2, 10), oslo(2027, 3, 2, 12))
    clock.set(oslo(2027, 3, 2, 9, 14))
    assert handlers.mark_no_shows(rt) == 0
    clock.set(oslo(2027, 3, 2, 9, 16))
    assert handlers.mark_no_shows(rt) == 1
    given = entry(rt, bob["id"])
    assert given.status == "booked"
    assert {r.id: r.status for r in rows(rt)}[missed["id"]] == "no_show"
    with pytest.raises(InvalidState):
        handlers.check_in(rt, ADA, missed["id"])


def test_a_pending_booking_past_its_deadline_is_no_no_show(rt, clock):
    rid = make_resource(rt, checkin_required=True, requires_approval=True)
    pending = book(rt, ADA, rid, oslo(2027, 3, 2, 9), oslo(2027, 3, 2, 10))
    clock.set(oslo(2027, 3, 3))
    assert handlers.mark_no_shows(rt) == 0
    row = {r.id: r for r in rows(rt)}[pending["id"]]
    assert (row.status, row.checkin_due) == ("pending", None)


def test_a_new_check_in_rule_applies_to_upcoming_bookings(rt, clock):
    rid = make_resource(rt)
    under_way = book(rt, ADA, rid, oslo(2027, 3, 1, 7, 30), oslo(2027, 3, 1, 9))
    upcoming = book(rt, ADA, rid, oslo(2027, 3, 2, 9), oslo(2027, 3, 2, 10))
    clock.set(oslo(2027, 3, 1, 8))
    make_resource(rt, version=2, rid=rid, checkin_required=True, checkin_grace_minutes=10)
    due = {r.id: r.checkin_due for r in rows(rt)}
    assert due[under_way["id"]] is None
    assert due[upcoming["id"]] == oslo(2027, 3, 2, 9, 10)
    make_resource(rt, version=3, rid=rid)
    assert {r.id: r.checkin_due for r in rows(rt)}[upcoming["id"]] is None


def test_cancelled_and_checked_in_bookings_leave_the_no_show_queue(rt, clock):
    rid = make_resource(rt, checkin_required=True)
    cancelled = book(rt, ADA, rid, oslo(2027, 3, 2, 9), oslo(2027, 3, 2, 10))
    handlers.cancel_booking(rt, ADA, cancelled["id"], None)
    assert {r.id: r.checkin_due for r in rows(rt)}[cancelled["id"]] is None


# -- usage ----------------------------------------------------------------------------------------------


def test_usage_bills_confirmed_and_no_show_hours_at_the_right_rate_clipped_to_the_window(rt, clock):
    rid = make_resource(rt, checkin_required=True)
    ada = [book(rt, ADA, rid, oslo(2027, 3, 2 + i, 9), oslo(2027, 3, 2 + i, 11), project="NFR-1") for i in range(3)]
    bob = book(rt, BOB, rid, oslo(2027, 3, 2, 12), oslo(2027, 3, 2, 13, 30), project="EXT-9")
    straddling = book(rt, BOB, rid, oslo(2027, 3, 5, 23), oslo(2027, 3, 6, 2), project="EXT-9")
    cancelled = book(rt, ADA, rid, oslo(2027, 3, 3, 13), oslo(2027, 3, 3, 14), project="NFR-1")
    handlers.cancel_booking(rt, ADA, cancelled["id"], None)
    for who, b in ((ADA, ada[0]), (ADA, ada[1]), (BOB, bob)):
        clock.set(dt.datetime.fromisoformat(b["start"].replace("Z", "+00:00")))
        handlers.check_in(rt, who, b["id"])
    clock.set(oslo(2027, 3, 10))
    assert handlers.mark_no_shows(rt) == 2  # Ada's third booking and the straddling one
    lines = reports.usage(rt, MANAGER, lab_id=LAB, resource_id=None, org=None,
                          start=oslo(2027, 3, 1), end=oslo(2027, 3, 6))
    assert [(x["org"], x["project"], x["bookings"], x["hours"], x["rate"], x["amount"], x["currency"])
            for x in lines] == [
        ("ntnu", "NFR-1", 3, 6.0, 450, 2700.0, "NOK"),  # internal: a no-show billed, the cancellation not
        ("sintef", "EXT-9", 2, 2.5, 1200, 3000.0, "NOK"),  # external: 1.5 h + the straddling one's 1 h
    ]
    assert reports.usage(rt, MANAGER, lab_id=LAB, resource_id=None, org="sintef", start=oslo(2027, 3, 1),
                         end=oslo(2027, 3, 6))[0]["bookings"] == 2
    csv_text = reports.usage_csv(lines)
    assert csv_text.splitlines() == [
        "resource_id,resource_name,org,project,bookings,hours,rate,amount,currency",
        f"{rid},Instrument {rid},ntnu,NFR-1,3,6.00,450,2700.00,NOK",
        f"{rid},Instrument {rid},sintef,EXT-9,2,2.50,1200,3000.00,NOK",
    ]
    assert {r.id: r.status for r in rows(rt)}[straddling["id"]] == "no_show"


def test_usage_and_utilisation_are_for_the_labs_managers(rt):
    make_resource(rt)
    with pytest.raises(reports.Forbidden):
        reports.usage(rt, ADA, lab_id=LAB, resource_id=None, org=None, start=NOW, end=NOW + dt.timedelta(days=1))
    with pytest.raises(reports.Forbidden):
        reports.usage(rt, ADA, lab_id=None, resource_id=None, org=None, start=NOW, end=NOW + dt.timedelta(days=1))
    with pytest.raises(reports.Forbidden):
        reports.utilisation(rt, BOB, LAB, NOW, NOW + dt.timedelta(days=1))
    admin = Principal("root", roles=("admin",))
    assert reports.usage(rt, admin, lab_id=None, resource_id=None, org=None, start=NOW,
                         end=NOW + dt.timedelta(days=1)) == []


def test_utilisation_is_booked_time_over_open_time_minus_outages(rt):
    rid = make_resource(rt, opening_hours={d: [["08:00", "16:00"]] for d in WORKDAYS})
    always = make_resource(rt)
    book(rt, ADA, rid, oslo(2027, 3, 2, 8), oslo(2027, 3, 2, 12))
    book(rt, ADA, always, oslo(2027, 3, 2, 8), oslo(2027, 3, 2, 14))
    apply(rt, "outage.created", {"id": "out-3", "resource_id": rid, "start": "2027-03-03T07:00:00Z",
                                 "end": "2027-03-03T15:00:00Z"})
    report = reports.utilisation(rt, MANAGER, LAB, oslo(2027, 3, 1), oslo(2027, 3, 8))
    by_id = {x["resource_id"]: x for x in report["items"]}
    assert (by_id[rid]["open_hours"], by_id[rid]["booked_hours"], by_id[rid]["utilisation"]) == (32.0, 4.0, 0.125)
    assert (by_id[always]["open_hours"], by_id[always]["booked_hours"]) == (168.0, 6.0)
