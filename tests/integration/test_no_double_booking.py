"""No double booking, under concurrency: many threads, several server processes, one database.

How these tests are built
-------------------------
- Every test runs twice through the ``stack`` fixture: on the embedded defaults (SQLite,
  in-process broker) and on PostgreSQL + RabbitMQ. The stack creates labs and resources
  through inventory, and the booking service learns of them from inventory's events.
- A *race* (``tests.concurrency.race``) starts one thread per request and releases them all
  from one barrier, so the requests are in flight at the same time. In-process, each thread
  has its own werkzeug test ``Client`` over the gateway; against real server processes each
  thread uses ``requests`` with a new connection per request.
- What a race must show: every answer is one of the statuses the contract allows for it
  (201/409 for a booking, 200/409 for a move or a cancel; never a 500), the number of
  winners is what the arithmetic of the slots says, and, read straight from booking's own
  table afterwards, no two live (confirmed/pending) bookings of one resource overlap on
  ``[start_at, hold_until)`` where ``hold_until = end + buffer_minutes``.
- Several processes: the booking service runs under gunicorn (3 worker processes, 8 threads
  each) on the database of the in-process stack, which ran the migrations and filled
  booking's read model; the access log records each request's worker pid, so the test checks
  that more than one process really took part. The server is always stopped at the end.

Time slots are on weekdays two or more days ahead (``next_weekday``); resources have no
opening hours, so only the clashes decide who wins.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from tests.concurrency import (
    BookingProcesses,
    Caller,
    HttpCaller,
    Reply,
    all_bookings,
    assert_conflicts_explain,
    assert_no_overlaps,
    assert_only,
    live_bookings,
    overlaps,
    race,
    statuses,
)
from tests.harness import Stack, next_weekday

THREADS = 24
MIN = dt.timedelta(minutes=1)


def callers(stack: Stack, n: int = THREADS, prefix: str = "racer") -> list[Caller]:
    """One in-process client per thread, each a different researcher."""
    return [Caller(stack.app, stack.token(f"{prefix}-{i}")) for i in range(n)]


def winners(replies: Sequence[Reply], ok: int = 201) -> list[Reply]:
    return [r for r in replies if r.status == ok]


# -- races that both the in-process and the multi-process tests run ---------------------------------


def identical_round(clients: Sequence[Any], resource_id: str, start: dt.datetime, end: dt.datetime) -> list[Reply]:
    """Everyone books the very same slot (half of them spell it in UTC): exactly one wins."""

    def job(i: int) -> Reply:
        s, e = (start, end) if i % 2 == 0 else (start.astimezone(dt.UTC), end.astimezone(dt.UTC))
        return clients[i].book(resource_id, s, e, tag="same")

    replies = race([functools.partial(job, i) for i in range(len(clients))])
    assert_only(replies, {201, 409})
    won = winners(replies)
    assert len(won) == 1, f"{len(won)} winners for one slot: {dict(statuses(replies))}"
    busy = [{"start": won[0].body["start"], "end": won[0].body["end"]}]
    for r in replies:
        if r.status == 409:
            assert r.body["conflicts"] == busy, r.body
    return replies


def shifted_round(clients: Sequence[Any], resource_id: str, base: dt.datetime) -> list[Reply]:
    """Thread i books from ``base + 15 min * i``, for 2 h (even i) or 45 min (odd i): a chain of overlaps.

    The winners never overlap each other, and every loser overlaps at least one winner.
    """

    def job(i: int) -> Reply:
        start = base + 15 * i * MIN
        return clients[i].book(resource_id, start, start + (120 if i % 2 == 0 else 45) * MIN, tag=f"shift-{i}")

    replies = race([functools.partial(job, i) for i in range(len(clients))])
    assert_only(replies, {201, 409})
    won = winners(replies)
    assert won, "nobody won"
    for a, b in itertools.combinations(won, 2):
        assert not overlaps((a.start, a.end), (b.start, b.end)), f"both won: {a} and {b}"
    for r in replies:
        if r.status == 409:
            assert any(overlaps((r.start, r.end), (w.start, w.end)) for w in won), f"refused without a clash: {r}"
            assert_conflicts_explain(r)
    return replies


BUFFER_GROUPS = {
    # with buffer_minutes=15: D holds until 10:00 (touches A: fine); A holds until 11:15, so B
    # (touching A's end) clashes with A; C starts exactly when B's hold ends (fine).
    "D": ((9, 0), (9, 45)),
    "A": ((10, 0), (11, 0)),
    "B": ((11, 0), (12, 0)),
    "C": ((12, 15), (13, 15)),
}


def buffer_round(clients: Sequence[Any], resource_id: str, weekday: int) -> list[Reply]:
    """Four groups race on a resource with a 15-minute buffer: D, C and one of A/B win."""
    names = list(BUFFER_GROUPS)

    def job(i: int) -> Reply:
        name = names[i % len(names)]
        (h1, m1), (h2, m2) = BUFFER_GROUPS[name]
        return clients[i].book(resource_id, next_weekday(weekday, h1, m1), next_weekday(weekday, h2, m2), tag=name)

    replies = race([functools.partial(job, i) for i in range(len(clients))])
    assert_only(replies, {201, 409})
    won = Counter(r.tag for r in winners(replies))
    assert won["D"] == 1 and won["C"] == 1 and won["A"] + won["B"] == 1, (
        f"winners per group {dict(won)}; expected D=1, C=1 and one of A/B"
    )
    for r in replies:
        if r.status == 409:
            assert_conflicts_explain(r, buffer=15 * MIN)
    return replies


def cancel_rebook_round(
    cancellers: Sequence[Any], rebookers: Sequence[Any], booking_id: str, resource_id: str,
    start: dt.datetime, end: dt.datetime,
) -> tuple[list[Reply], list[Reply], int]:
    """The holder and a manager cancel one booking at once while everyone else keeps trying to book its time.

    Each rebooker tries until someone has won, or once more after the cancel has
    answered. Exactly one cancel succeeds, and exactly one rebooker gets the slot.
    Returns (cancel replies, rebook replies, index of the winning rebooker).
    """
    cancelled, won = threading.Event(), threading.Event()
    deadline = time.monotonic() + 20

    def cancel(c: Any) -> list[Reply]:
        reply = c.cancel(booking_id, tag="cancel")
        cancelled.set()  # a 409 here also means the cancel has committed
        return [reply]

    def rebook(i: int) -> list[Reply]:
        out: list[Reply] = []
        while not won.is_set() and time.monotonic() < deadline:
            last_try = cancelled.is_set()
            reply = rebookers[i].book(resource_id, start, end, tag="rebook")
            reply.extra["who"] = i
            out.append(reply)
            if reply.status == 201:
                won.set()
                break
            if last_try or reply.status != 409:  # a 409 is the only other acceptable answer: stop at anything else
                break
            time.sleep(0.005)
        return out

    jobs = [functools.partial(cancel, c) for c in cancellers]
    jobs += [functools.partial(rebook, i) for i in range(len(rebookers))]
    results = race(jobs)
    cancels = [r for batch in results[: len(cancellers)] for r in batch]
    rebooks = [r for batch in results[len(cancellers):] for r in batch]
    assert_only(cancels, {200, 409})
    assert sorted(r.status for r in cancels) == [200] + [409] * (len(cancellers) - 1), cancels
    assert_only(rebooks, {201, 409})
    won_replies = winners(rebooks)
    assert len(won_replies) == 1, f"{len(won_replies)} rebookers got the freed slot: {dict(statuses(rebooks))}"
    for r in rebooks:
        if r.status == 409:
            assert isinstance(r.body.get("conflicts"), list), r.body
    return cancels, rebooks, won_replies[0].extra["who"]


# -- in-process: many threads through the gateway ----------------------------------------------------


def test_identical_slot_has_exactly_one_winner(stack):
    res = stack.make_resource()
    approval = stack.make_resource(policy={"requires_approval": True})  # pending bookings hold their time too
    clients = callers(stack)
    replies: list[Reply] = []
    for hour in (8, 10, 12, 14, 16):
        replies += identical_round(clients, res["id"], next_weekday(1, hour), next_weekday(1, hour + 2))
    pending: list[Reply] = []
    for hour in (8, 10):
        pending += identical_round(clients, approval["id"], next_weekday(1, hour), next_weekday(1, hour + 2))
    won = winners(replies)
    assert len(replies) == 5 * THREADS and len(won) == 5
    assert [w.body["status"] for w in winners(pending)] == ["pending", "pending"]
    live = live_bookings(stack, [res["id"], approval["id"]])
    assert {r.id for r in live} == {w.body["id"] for w in won + winners(pending)}
    assert assert_no_overlaps(stack, {res["id"]: 0, approval["id"]: 0}) == 7


def test_series_race_is_all_or_nothing(stack):
    """24 weekly series of 3 occurrences, 2 h each, shifted by an hour and a week: the winners' series are
    booked whole, nothing of a refused series is left behind, and no occurrences overlap."""
    res = stack.make_resource()
    clients = callers(stack)

    def job(i: int) -> Reply:
        start = next_weekday(1, 8 + i % 8) + dt.timedelta(weeks=i // 8)
        return clients[i].book(res["id"], start, start + 120 * MIN, tag=f"series-{i}", rrule="FREQ=WEEKLY;COUNT=3")

    replies = race([functools.partial(job, i) for i in range(THREADS)])
    assert_only(replies, {201, 409})
    won = winners(replies)
    assert won, "nobody won"
    occurrences = {occ for w in won for occ in w.body["occurrences"]}
    assert len(occurrences) == 3 * len(won)
    rows = all_bookings(stack, [res["id"]])
    assert {r.id for r in rows} == occurrences, "a refused series left rows behind, or a winner lost some"
    assert all(r.status == "confirmed" for r in rows)
    for r in replies:
        if r.status == 409:
            assert r.body.get("conflicts"), r.body
    assert assert_no_overlaps(stack, {res["id"]: 0}) == len(occurrences)


def test_overlapping_shifted_slots_never_overlap(stack):
    res = stack.make_resource()
    clients = callers(stack)
    won: list[Reply] = []
    for weekday in (1, 2, 3):
        won += winners(shifted_round(clients, res["id"], next_weekday(weekday, 8)))
    live = live_bookings(stack, [res["id"]])
    assert {r.id for r in live} == {w.body["id"] for w in won}
    assert assert_no_overlaps(stack, {res["id"]: 0}) == len(won)


def test_buffer_refuses_touching_bookings_under_race(stack):
    res = stack.make_resource(policy={"buffer_minutes": 15})
    clients = callers(stack)
    won: list[Reply] = []
    for weekday in (1, 2, 3):
        won += winners(buffer_round(clients, res["id"], weekday))
    assert len(won) == 9
    assert assert_no_overlaps(stack, {res["id"]: 15}) == 9
    live = sorted(live_bookings(stack, [res["id"]]), key=lambda r: r.start)
    for a, b in itertools.pairwise(live):
        if a.start.date() == b.start.date():
            assert b.start - a.end >= 15 * MIN, f"gap under the buffer: {a} then {b}"


def test_cancel_and_rebook_race(stack):
    res = stack.make_resource()
    clients = callers(stack)
    manager = Caller(stack.app, stack.token(*Stack.MANAGER))
    start, end = next_weekday(2, 10), next_weekday(2, 12)
    first = clients[0].book(res["id"], start, end)
    assert first.status == 201, first.body
    holder, booking_id = 0, first.body["id"]
    history = [booking_id]
    attempts = 0
    for _ in range(6):
        others = [i for i in range(THREADS) if i != holder]
        _, rebooks, who = cancel_rebook_round(
            [clients[holder], manager], [clients[i] for i in others], booking_id, res["id"], start, end
        )
        attempts += len(rebooks)
        holder = others[who]
        booking_id = winners(rebooks)[0].body["id"]
        history.append(booking_id)
    rows = {r.id: r for r in all_bookings(stack, [res["id"]])}
    assert set(rows) == set(history), "a losing attempt left a row behind"
    for old in history[:-1]:
        assert rows[old].status == "cancelled"
        assert rows[old].sequence == 1, "a booking was cancelled twice"
    assert rows[history[-1]].status == "confirmed"
    assert assert_no_overlaps(stack, {res["id"]: 0}) == 1
    assert attempts >= 6 * (THREADS - 1)


def test_concurrent_moves_into_one_free_slot(stack):
    res = stack.make_resource()
    movers = callers(stack, 12, "mover")
    creators = callers(stack, 12, "creator")
    original: dict[str, tuple[dt.datetime, dt.datetime]] = {}
    ids = []
    for i, c in enumerate(movers):
        s = next_weekday(3, 8) + 30 * i * MIN
        r = c.book(res["id"], s, s + 30 * MIN)
        assert r.status == 201, r.body
        ids.append(r.body["id"])
        original[r.body["id"]] = (s, s + 30 * MIN)

    # Round 1: 12 owners move their booking into one free hour while 12 others book that hour.
    target = (next_weekday(3, 15), next_weekday(3, 16))
    jobs = [functools.partial(movers[i].move, ids[i], *target, tag="move") for i in range(12)]
    jobs += [functools.partial(creators[i].book, res["id"], *target, tag="create") for i in range(12)]
    replies = race(jobs)
    moves = [r for r in replies if r.tag == "move"]
    creates = [r for r in replies if r.tag == "create"]
    assert_only(moves, {200, 409})
    assert_only(creates, {201, 409})
    won = winners(moves, 200) + winners(creates, 201)
    assert len(won) == 1, f"{len(won)} got the one free hour: moves {dict(statuses(moves))}, " \
                          f"creates {dict(statuses(creates))}"
    rows = {r.id: r for r in all_bookings(stack, [res["id"]])}
    for r in moves:
        if r.status == 409:
            assert (rows[r.booking_id].start, rows[r.booking_id].end) == original[r.booking_id]
            assert rows[r.booking_id].sequence == 0, "a refused move changed the booking"
        else:
            assert (rows[r.booking_id].start, rows[r.booking_id].end) == target

    # Round 2: every owner moves to one of a chain of overlapping hours (shifted by 15 minutes).
    base = next_weekday(3, 17)
    jobs = [functools.partial(movers[i].move, ids[i], base + 15 * i * MIN, base + (15 * i + 60) * MIN, tag="shift")
            for i in range(12)]
    before = {r.id: r for r in all_bookings(stack, [res["id"]])}
    replies = race(jobs)
    assert_only(replies, {200, 409})
    moved = winners(replies, 200)
    assert moved
    for a, b in itertools.combinations(moved, 2):
        assert not overlaps((a.start, a.end), (b.start, b.end)), f"both moved: {a} and {b}"
    after = {r.id: r for r in all_bookings(stack, [res["id"]])}
    for r in replies:
        if r.status == 409:
            assert any(overlaps((r.start, r.end), (w.start, w.end)) for w in moved), f"refused without a clash: {r}"
            assert (after[r.booking_id].start, after[r.booking_id].sequence) == (
                before[r.booking_id].start, before[r.booking_id].sequence)
    assert_no_overlaps(stack, {res["id"]: 0})


# -- several OS processes on one database ------------------------------------------------------------


def test_several_server_processes_never_double_book(stack, tmp_path):
    res = stack.make_resource()
    buffered = stack.make_resource(lab_id=res["lab_id"], policy={"buffer_minutes": 15})
    tokens = [stack.token(f"proc-{i}") for i in range(THREADS)]
    manager_token = stack.token(*Stack.MANAGER)
    replies: list[Reply] = []
    with BookingProcesses(stack.settings, tmp_path, workers=3, threads=8) as server:
        clients = [HttpCaller(server.base_url, t) for t in tokens]
        manager = HttpCaller(server.base_url, manager_token)
        for hour in (8, 10, 12, 14):
            replies += identical_round(clients, res["id"], next_weekday(4, hour), next_weekday(4, hour + 2))
        for weekday in (0, 1):
            replies += shifted_round(clients, res["id"], next_weekday(weekday, 8))
        for weekday in (2, 3):
            replies += buffer_round(clients, buffered["id"], weekday)
        # cancel + rebook across processes
        start, end = next_weekday(4, 18), next_weekday(4, 20)
        first = clients[0].book(res["id"], start, end)
        assert first.status == 201, first.body
        holder, booking_id = 0, first.body["id"]
        for _ in range(2):
            others = [i for i in range(THREADS) if i != holder]
            _, rebooks, who = cancel_rebook_round(
                [clients[holder], manager], [clients[i] for i in others], booking_id, res["id"], start, end
            )
            replies += rebooks
            holder, booking_id = others[who], winners(rebooks)[0].body["id"]

    pids = server.worker_pids("POST", "/api/v1/bookings")
    assert_only(replies, {201, 409})
    assert len(pids) >= 2, f"only {len(pids)} worker process(es) served the bookings: {dict(pids)}"
    won = winners(replies)
    live = live_bookings(stack, [res["id"], buffered["id"]])
    cancelled = {r.id for r in all_bookings(stack, [res["id"]]) if r.status == "cancelled"}
    assert len(cancelled) == 2
    assert {r.id for r in live} == ({w.body["id"] for w in won} | {first.body["id"]}) - cancelled
    assert assert_no_overlaps(stack, {res["id"]: 0, buffered["id"]: 15}) == len(live)
    assert sum(pids.values()) >= len(replies)
