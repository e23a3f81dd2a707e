"""Feed rendering, checked with the parsers calendar clients use: icalendar, ical.js and libical."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest
import recurring_ical_events

from services.booking import feed_render
from services.booking.feed_render import Entry, FeedInfo, Where
from tests.calendar_parsers import parse_icalendar, parse_icaljs, parse_libical, unix

UTC = dt.UTC
OSLO = zoneinfo.ZoneInfo("Europe/Oslo")
NEW_YORK = zoneinfo.ZoneInfo("America/New_York")
BASE = "https://labshare.example.org"
NOW = dt.datetime(2027, 3, 1, 12, 0, 30, tzinfo=UTC)
CHANGED = dt.datetime(2027, 2, 1, 10, 0, tzinfo=UTC)

SCOPE = Where("r-1", "Zeiss LSM 980 confocal", "lab-1", "Cell imaging lab", "Elgeseter 10", "Europe/Oslo", False)
BENCH = Where("r-2", "Wet bench 3", "lab-2", "Biolab, east", "Bygg 2", "America/New_York", False)
INFO = FeedInfo("Zeiss LSM 980 confocal (Cell imaging lab)", "When it is booked.", f"{BASE}/feeds/resources/r-1.ics")


def uid(booking_id: str) -> str:
    return f"{booking_id}@labshare.example.org"


def entry(booking_id: str, start: dt.datetime, hours: float = 2, *, resource: str = "r-1", status: str = "confirmed",
          sequence: int = 0, title: str = "Live-cell imaging", project: str = "NFR-12345") -> Entry:
    return Entry(booking_id, resource, title, project, start.astimezone(UTC),
                 (start + dt.timedelta(hours=hours)).astimezone(UTC), status, sequence, CHANGED)


def render(entries, places=None, personal=False, info=INFO, now=NOW) -> bytes:
    return feed_render.render_feed(info, entries, places or {"r-1": SCOPE, "r-2": BENCH}, personal=personal, uid=uid,
                                   base_url=BASE, now=now)


def weekly_across_dst() -> list[Entry]:
    """Tuesdays 09:00-11:00 in Oslo, from before to after the clocks go forward on 28 March 2027."""
    first = dt.datetime(2027, 3, 16, 9, 0, tzinfo=OSLO)
    return [entry(f"s-{i}", first + dt.timedelta(weeks=i)) for i in range(4)]


def vevents(cal):
    return {str(e["uid"]): e for e in cal.walk("VEVENT")}


def test_window_reaches_back_90_days_and_ahead_to_the_horizon_in_whole_days():
    win = feed_render.window(NOW, dt.timedelta(days=30))
    assert win.start == dt.datetime(2026, 12, 1, tzinfo=UTC)
    assert win.end == dt.datetime(2027, 4, 1, tzinfo=UTC)
    assert win.day == dt.date(2027, 3, 1)
    narrowed = feed_render.window(NOW, dt.timedelta(days=30), dt.datetime(2027, 3, 10, tzinfo=UTC),
                                  dt.datetime(2030, 1, 1, tzinfo=UTC))
    assert (narrowed.start, narrowed.end) == (dt.datetime(2027, 3, 10, tzinfo=UTC), win.end)
    assert feed_render.window(NOW, dt.timedelta(days=30), dt.datetime(2030, 1, 1, tzinfo=UTC)).end == dt.datetime(
        2030, 1, 1, tzinfo=UTC), "a window narrowed past its end is empty, not inverted"


def test_cancelled_bookings_stay_while_ahead_and_leave_once_past():
    ahead, past = NOW + dt.timedelta(hours=1), NOW - dt.timedelta(hours=1)
    assert feed_render.listed(entry("a", ahead, status="cancelled"), NOW)
    assert feed_render.listed(entry("b", ahead, status="declined"), NOW)
    assert not feed_render.listed(entry("c", past, status="cancelled"), NOW)
    assert not feed_render.listed(entry("d", past, status="no_show"), NOW)
    assert feed_render.listed(entry("e", past), NOW) and feed_render.listed(entry("f", past, status="pending"), NOW)
    assert [feed_render.ics_status(s) for s in ("confirmed", "pending", "cancelled", "declined", "no_show")] == [
        "CONFIRMED", "TENTATIVE", "CANCELLED", "CANCELLED", "CANCELLED"]


def test_resource_feed_has_every_property_the_contract_names():
    entries = [
        entry("b-confirmed", dt.datetime(2027, 3, 2, 9, 0, tzinfo=OSLO), sequence=3),
        entry("b-pending", dt.datetime(2027, 3, 3, 9, 0, tzinfo=OSLO), status="pending"),
        entry("b-cancelled", dt.datetime(2027, 3, 4, 9, 0, tzinfo=OSLO), status="cancelled", sequence=1),
        entry("b-gone", dt.datetime(2027, 2, 4, 9, 0, tzinfo=OSLO), status="cancelled", sequence=1),
    ]
    data = render(entries)
    cal = parse_icalendar(data)
    assert cal["METHOD"] == "PUBLISH" and cal["VERSION"] == "2.0" and cal["PRODID"]
    assert cal["NAME"] == cal["X-WR-CALNAME"] == INFO.name
    assert str(cal["URL"]) == INFO.url
    assert b"\r\nREFRESH-INTERVAL;VALUE=DURATION:PT15M\r\n" in data and b"\r\nX-PUBLISHED-TTL:PT15M\r\n" in data
    assert [str(tz["TZID"]) for tz in cal.walk("VTIMEZONE")] == ["Europe/Oslo"]
    events = vevents(cal)
    assert set(events) == {uid("b-confirmed"), uid("b-pending"), uid("b-cancelled")}, "past cancellations leave"
    confirmed = events[uid("b-confirmed")]
    assert confirmed["SUMMARY"] == "Booked" and confirmed["SEQUENCE"] == 3 and confirmed["STATUS"] == "CONFIRMED"
    assert confirmed["DTSTAMP"].dt == NOW.replace(microsecond=0)
    assert confirmed["LAST-MODIFIED"].dt == CHANGED
    assert confirmed["DTSTART"].params["TZID"] == "Europe/Oslo"
    assert confirmed["DTSTART"].dt == dt.datetime(2027, 3, 2, 9, 0, tzinfo=OSLO)
    assert confirmed["LOCATION"] == "Cell imaging lab, Elgeseter 10"
    assert confirmed["RESOURCES"] == "Zeiss LSM 980 confocal"
    assert events[uid("b-pending")]["STATUS"] == "TENTATIVE"
    assert events[uid("b-cancelled")]["STATUS"] == "CANCELLED" and events[uid("b-cancelled")]["SEQUENCE"] == 1
    assert b"Live-cell imaging" not in data and b"NFR-12345" not in data, "a public feed shows no titles"
    assert max(len(line) for line in data.split(b"\r\n")) <= 75, "lines are folded at 75 octets"

    (js,) = parse_icaljs(data)
    by_uid = {e["uid"]: e for e in js["events"]}
    assert set(by_uid) == set(events)
    assert by_uid[uid("b-confirmed")]["start"] == {"utc": "2027-03-02T08:00:00.000Z", "local": "2027-03-02T09:00:00",
                                                   "tzid": "Europe/Oslo"}
    assert by_uid[uid("b-confirmed")]["sequence"] == 3
    assert by_uid[uid("b-pending")]["status"] == "TENTATIVE"
    assert by_uid[uid("b-cancelled")]["status"] == "CANCELLED"
    assert by_uid[uid("b-confirmed")]["dtstamp"]["utc"] == "2027-03-01T12:00:30.000Z"

    lib = parse_libical(data)
    starts = {e["uid"]: e["start"] for e in lib["events"]}
    assert starts[uid("b-confirmed")] == unix(dt.datetime(2027, 3, 2, 8, 0, tzinfo=UTC))


def test_a_series_keeps_its_wall_clock_time_across_a_daylight_saving_change():
    data = render(weekly_across_dst())
    cal = parse_icalendar(data)
    occurrences = recurring_ical_events.of(cal).between(dt.datetime(2027, 3, 1, tzinfo=UTC),
                                                        dt.datetime(2027, 4, 30, tzinfo=UTC))
    assert len(occurrences) == 4
    local = [(o["DTSTART"].dt.astimezone(OSLO).strftime("%H:%M"), o["DTEND"].dt.astimezone(OSLO).strftime("%H:%M"))
             for o in occurrences]
    assert local == [("09:00", "11:00")] * 4
    utc_hours = [o["DTSTART"].dt.astimezone(UTC).hour for o in occurrences]
    assert utc_hours == [8, 8, 7, 7], "the UTC time moves when the clocks go forward"

    (js,) = parse_icaljs(data)
    assert [e["start"]["local"][11:] for e in js["events"]] == ["09:00:00"] * 4
    assert [e["start"]["utc"][11:13] for e in js["events"]] == ["08", "08", "07", "07"]

    lib = parse_libical(data)
    assert [e["start"] for e in lib["events"]] == [unix(e.start) for e in weekly_across_dst()]


def test_text_is_escaped_and_folded_by_the_library_and_read_back_exactly():
    title = "Calibration, laser; stage\\ \"quoted\"\nsecond line\t– æøå ÆØÅ 🔬 " + "long " * 40
    sent = title.replace("stage", "st\x00a\x07g\x1be\r")
    lab = Where("r-1", "Scope, big; one", "lab-1", "Lab; with, punctuation", "Bygg \"A\"", "Europe/Oslo", True)
    data = render([entry("b-1", dt.datetime(2027, 3, 2, 9, 0, tzinfo=OSLO), title=sent)], {"r-1": lab})
    assert max(len(line) for line in data.split(b"\r\n")) <= 75
    event = vevents(parse_icalendar(data))[uid("b-1")]
    assert event["SUMMARY"] == title.strip(), "the lab shows titles; libical would drop the blank at the end"
    title = title.strip()
    assert event["LOCATION"] == "Lab; with, punctuation, Bygg \"A\""
    assert event["RESOURCES"] == "Scope, big; one"
    (js,) = parse_icaljs(data)
    assert js["events"][0]["summary"] == title and js["events"][0]["location"] == event["LOCATION"]
    (lib_event,) = parse_libical(data)["events"]
    assert lib_event["summary"] == title and lib_event["location"] == event["LOCATION"]


def test_personal_feed_has_the_details_and_a_vtimezone_for_every_zone():
    entries = [
        entry("b-oslo", dt.datetime(2027, 3, 2, 9, 0, tzinfo=OSLO)),
        entry("b-ny", dt.datetime(2027, 3, 2, 9, 0, tzinfo=NEW_YORK), resource="r-2", title="", project="",
              status="pending"),
    ]
    data = render(entries, personal=True, info=FeedInfo("My lab bookings", "Yours.", f"{BASE}/feeds/users/t.ics"))
    cal = parse_icalendar(data)
    assert sorted(str(tz["TZID"]) for tz in cal.walk("VTIMEZONE")) == ["America/New_York", "Europe/Oslo"]
    events = vevents(cal)
    oslo, ny = events[uid("b-oslo")], events[uid("b-ny")]
    assert oslo["SUMMARY"] == "Live-cell imaging"
    assert oslo["DESCRIPTION"] == (
        "Resource: Zeiss LSM 980 confocal\nLab: Cell imaging lab\nProject: NFR-12345\n"
        f"{BASE}/api/v1/bookings/b-oslo")
    assert str(oslo["URL"]) == f"{BASE}/api/v1/bookings/b-oslo"
    assert ny["SUMMARY"] == "Wet bench 3", "untitled bookings are named after their resource"
    assert "approval" in ny["DESCRIPTION"] and ny["STATUS"] == "TENTATIVE"
    assert ny["DTSTART"].params["TZID"] == "America/New_York"
    (js,) = parse_icaljs(data)
    assert {e["start"]["tzid"] for e in js["events"]} == {"Europe/Oslo", "America/New_York"}
    assert {e["start"]["utc"] for e in js["events"]} == {"2027-03-02T08:00:00.000Z", "2027-03-02T14:00:00.000Z"}
    lib = parse_libical(data)
    assert sorted(e["start"] for e in lib["events"]) == sorted(unix(e.start) for e in entries)


def test_a_utc_lab_needs_no_vtimezone():
    place = Where("r-1", "Scope", "lab-1", "Lab", "", "UTC", False)
    data = render([entry("b-1", dt.datetime(2027, 3, 2, 9, 0, tzinfo=UTC))], {"r-1": place})
    cal = parse_icalendar(data)
    assert not list(cal.walk("VTIMEZONE"))
    assert b"\r\nDTSTART:20270302T090000Z\r\n" in data
    parse_icaljs(data)
    parse_libical(data)


def test_an_empty_feed_still_parses():
    data = render([])
    assert not list(parse_icalendar(data).walk("VEVENT"))
    assert parse_icaljs(data)[0]["events"] == []
    assert parse_libical(data)["events"] == []


def test_events_are_rendered_once_per_revision_and_stamped_per_feed():
    feed_render._vevent.cache_clear()
    entries = weekly_across_dst()
    first = render(entries, now=NOW)
    later = NOW + dt.timedelta(hours=2)
    second = render(entries, now=later)
    info = feed_render._vevent.cache_info()
    assert (info.misses, info.hits) == (4, 4)
    assert first.count(b"DTSTAMP:20270301T120030Z") == 4 and second.count(b"DTSTAMP:20270301T140030Z") == 4
    changed = [entries[0]._replace(sequence=1, status="cancelled")] + entries[1:]
    third = render(changed, now=later)
    assert feed_render._vevent.cache_info().misses == 5, "only the changed booking is rendered again"
    assert vevents(parse_icalendar(third))[uid("s-0")]["STATUS"] == "CANCELLED"


def test_freebusy_merges_periods_per_type_in_utc():
    win = feed_render.window(NOW, dt.timedelta(days=30), dt.datetime(2027, 3, 2, tzinfo=UTC))
    busy = [
        (dt.datetime(2027, 3, 2, 8, tzinfo=UTC), dt.datetime(2027, 3, 2, 9, tzinfo=UTC), "confirmed"),
        (dt.datetime(2027, 3, 2, 9, tzinfo=UTC), dt.datetime(2027, 3, 2, 10, tzinfo=UTC), "confirmed"),
        (dt.datetime(2027, 3, 3, 8, tzinfo=UTC), dt.datetime(2027, 3, 3, 9, tzinfo=UTC), "pending"),
        (dt.datetime(2027, 3, 1, 8, tzinfo=UTC), dt.datetime(2027, 3, 1, 9, tzinfo=UTC), "confirmed"),
    ]
    outages = [(dt.datetime(2027, 3, 5, tzinfo=UTC), dt.datetime(2027, 3, 6, tzinfo=UTC))]
    data = feed_render.render_freebusy(INFO, SCOPE, busy, outages, win, uid="fb-r-1@labshare.example.org",
                                       base_url=BASE, now=NOW)
    cal = parse_icalendar(data)
    (fb,) = cal.walk("VFREEBUSY")
    assert fb["DTSTART"].dt == win.start and fb["DTEND"].dt == win.end
    (js,) = parse_icaljs(data)
    assert js["freebusy"] == [
        {"fbtype": "BUSY", "start": "2027-03-02T08:00:00.000Z", "end": "2027-03-02T10:00:00.000Z"},
        {"fbtype": "BUSY-TENTATIVE", "start": "2027-03-03T08:00:00.000Z", "end": "2027-03-03T09:00:00.000Z"},
        {"fbtype": "BUSY-UNAVAILABLE", "start": "2027-03-05T00:00:00.000Z", "end": "2027-03-06T00:00:00.000Z"},
    ], "touching blocks merge; what lies before the window is left out"
    parse_libical(data)


@pytest.mark.parametrize("zone", ["Europe/Oslo", "America/Sao_Paulo", "Australia/Lord_Howe", "Asia/Kathmandu"])
def test_any_lab_zone_parses_everywhere(zone):
    tz = zoneinfo.ZoneInfo(zone)
    place = Where("r-1", "Scope", "lab-1", "Lab", "", zone, False)
    entries = [entry(f"b-{m}", dt.datetime(2027, m, 10, 9, 0, tzinfo=tz)) for m in range(1, 13)]
    data = render(entries, {"r-1": place}, now=dt.datetime(2027, 1, 1, tzinfo=UTC))
    cal = parse_icalendar(data)
    assert [e["DTSTART"].dt.astimezone(tz).hour for e in cal.walk("VEVENT")] == [9] * 12
    (js,) = parse_icaljs(data)
    assert [e["start"]["utc"] for e in js["events"]] == [
        e.start.strftime("%Y-%m-%dT%H:%M:%S.000Z") for e in entries]
    lib = parse_libical(data)
    assert [e["start"] for e in lib["events"]] == [unix(e.start) for e in entries]
