"""The web app in a real browser: headless Chromium (driven by Playwright) against ``python -m services run``.

A researcher finds a slot and books it, sees it at home and cancels it; a refused
booking shows the rule in plain words; a manager creates an instrument with opening
hours and schedules an outage that cancels a booking, after seeing the effect; the
Norwegian UI renders. Screenshots of the main pages go to var/screenshots/ (or
``LABSHARE_SCREENSHOT_DIR``; ``make screenshots`` refreshes the ones in docs/screenshots/).

Uses the machine's Chromium (``/usr/bin/chromium``), never a downloaded browser, and one
labshare for every browser test (see ``conftest.py``). Without Chromium or the
``playwright`` package these tests skip, unless ``LABSHARE_REQUIRE_SERVICES=1``, when they fail.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.e2e.helpers import Api, expect, next_weekday, wait_until
from tests.e2e.web import fill_booking_form, log_in, resource_id, shot

pytestmark = pytest.mark.e2e


def test_researcher_finds_a_slot_books_it_sees_it_at_home_and_cancels_it(new_page):
    page = new_page()
    log_in(page, "ada")
    shot(page, "home-empty")
    tuesday = next_weekday(1, 8)
    page.click("text=Find and book")
    page.select_option("#what", "cat:wetlab/bench")
    page.select_option("#minutes", "120")
    page.fill("#day", tuesday.date().isoformat())
    page.click("summary")
    page.select_option("#lab", label="Shared wet lab")
    page.click("button:has-text('Find free times')")
    first = page.locator("#slots li").first
    when = first.locator(".when").inner_text()
    assert when.endswith("08:00–10:00"), when
    what = first.locator(".what").inner_text()
    assert what.startswith("Wet lab bench")
    shot(page, "find")
    first.locator("button").click()

    page.wait_for_url(re.compile(r".*/bookings/[^/]+$"))
    assert page.locator(".flash.ok").inner_text() == "Booked."
    assert page.locator("#status").inner_text() == "Confirmed"
    booking_url = page.url
    shot(page, "booking")

    page.click("nav >> text=Home")
    upcoming = page.locator("#upcoming")
    assert what in upcoming.inner_text() and when in upcoming.inner_text()
    if page.locator("#calendar").count():  # the API offers personal feeds
        page.click("button:has-text('Get my calendar link')")
        assert page.locator("#feed-link").input_value().startswith("webcal://")
    shot(page, "home")

    page.goto(booking_url)
    page.fill("#reason", "Plans changed")
    page.click("button:has-text('Cancel booking')")
    assert page.locator("#status").inner_text() == "Cancelled"
    page.click("nav >> text=Home")
    assert page.locator("#upcoming").count() == 0 or what not in page.locator("#upcoming").inner_text()


def test_a_refused_booking_shows_the_rule_in_plain_words(new_page, origin):
    zeiss = resource_id(origin, "Zeiss LSM 980 confocal")
    page = new_page()
    log_in(page, "ola")  # Ola is not trained on the Zeiss
    saturday = next_weekday(5, 10)
    fill_booking_form(page, zeiss, saturday, "10:00", 60)
    when = page.locator("#when-error").inner_text()
    assert "That time is outside the opening hours (Mon–Fri 07:00–22:00; Sat–Sun closed)." in when
    assert "Only trained users may book Zeiss LSM 980 confocal" in page.locator(".refusal").all_inner_texts()[0]
    assert page.locator("#date").get_attribute("aria-invalid") == "true"
    shot(page, "refused")


def test_manager_creates_an_instrument_with_opening_hours_and_an_outage_that_cancels_a_booking(new_page, origin):
    page = new_page()
    log_in(page, "imaging-manager")
    page.click("nav >> text=Manage")
    shot(page, "manage")
    page.click("text=Add an instrument or room")
    page.fill("#name", "Nikon Ti2 widefield")
    page.fill("#category", "microscopy/widefield")
    page.fill("#slot_minutes", "30")
    page.fill("#min_minutes", "30")
    page.fill("#max_minutes", "240")
    for day in ("mon", "wed", "thu", "fri"):
        page.fill(f"#hours_{day}", "08:00-18:00")
    page.fill("#hours_tue", "08:00-12:00, 13:00-18:00")
    page.click("button:has-text('Create')")
    page.wait_for_url(re.compile(r".*/manage/resources/[^/]+$"))
    assert page.locator(".flash.ok").inner_text() == "Instrument created."
    nikon = page.url.rsplit("/", 1)[1]
    assert page.locator("#hours_tue").input_value() == "08:00-12:00, 13:00-18:00"

    # Ada books it (over the API; the researcher's path through the pages is tested above).
    ada = origin.token("ada", org="ntnu", name="Ada Researcher", email="ada@ntnu.example.org")
    wait_until(lambda: origin.knows_resource(ada, nikon), 15, "booking to learn the new instrument")
    wednesday = next_weekday(2, 10)
    booking = expect(origin.post("/api/v1/bookings", ada, {
        "resource_id": nikon, "start": wednesday.isoformat(), "end": (wednesday + dt.timedelta(hours=1)).isoformat(),
        "title": "Calcium imaging"}), 201)

    # The calendar shows the opening hours, the lunch break and the booking.
    page.goto(f"/resources/{nikon}?week={wednesday.date().isoformat()}")
    assert "Tue 08:00–12:00, 13:00–18:00" in page.locator("ul.hours").inner_text()
    assert page.locator("td.cell.busy").count() == 2  # 10:00-11:00 in 30-minute cells
    shot(page, "resource")

    page.goto(f"/manage/resources/{nikon}")
    page.fill("#start_date", wednesday.date().isoformat())
    page.fill("#start_time", "09:00")
    page.fill("#end_date", wednesday.date().isoformat())
    page.fill("#end_time", "12:00")
    page.fill("#outage-reason", "Laser alignment")
    page.click("button:has-text('Check the effect')")
    assert page.locator("#effect").inner_text() == "1 booking will be cancelled and its owner told."
    assert "Calcium imaging" in page.locator("ul.bookings").inner_text()
    shot(page, "outage-effect")
    page.click("button:has-text('Schedule the outage')")
    assert page.locator(".flash.ok").inner_text() == (
        "Outage scheduled. 1 booking is being cancelled and its owner told.")
    assert "Laser alignment" in page.locator("ul.outages").inner_text()

    def cancelled():
        current = expect(origin.get(f"/api/v1/bookings/{booking['id']}", ada), 200)
        return current if current["status"] == "cancelled" else None

    assert wait_until(cancelled, 15, "the outage to cancel Ada's booking")["cancel_reason"] == "outage"
    shot(page, "manage-resource")


def test_the_norwegian_ui_renders(new_page, origin):
    zeiss = resource_id(origin, "Zeiss LSM 980 confocal")
    page = new_page(locale="nb-NO")
    page.goto("/login")
    assert page.locator("h1").inner_text() == "Logg inn"
    assert page.locator("html").get_attribute("lang") == "nb"
    log_in(page, "ada")
    assert page.locator("#upcoming-h").inner_text() == "Dine kommende bookinger"
    page.goto(f"/resources/{zeiss}")
    rules = page.locator("#rules").inner_text()
    assert "Krever opplæring" in rules and "Book opptil 60 dager fram i tid." in rules
    assert page.locator("#week-h").inner_text().startswith("Uken fra ")
    assert "man.–fre. 07:00–22:00" in page.locator("ul.hours").inner_text()
    shot(page, "resource-nb")
    page.click("button[lang='en']")
    assert page.locator("#week-h").inner_text().startswith("Week of ")


def test_it_works_on_a_phone(new_page):
    page = new_page(width=390, height=844)
    log_in(page, "ada")
    page.goto("/find?what=cat%3Amicroscopy&minutes=60")
    assert page.locator("#slots li").count() > 0
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways on a phone ({width}px)"
    shot(page, "find-phone")


def day_text(moment: dt.datetime) -> str:
    """A day as the English pages write it ("Thu 5 Mar", with the year when it is not this year's)."""
    from babel.dates import format_skeleton

    skeleton = "MMMEd" if moment.year == dt.date.today().year else "yMMMEd"
    return format_skeleton(skeleton, moment.date(), locale="en_GB")


def book_over_api(api: Api, token: str, resource: str, start: dt.datetime, hours: float, **extra) -> dict:
    return expect(api.post("/api/v1/bookings", token, {
        "resource_id": resource, "start": start.isoformat(), "end": (start + dt.timedelta(hours=hours)).isoformat(),
        **extra}), 201)


def chart_bars(page, chart: str) -> dict[str, tuple[str, float]]:
    """Each bar of a chart as the user sees it: its label → (the value written at its end, its drawn width)."""
    bars = {}
    for bar in page.locator(f"svg#{chart} g.bar").all():
        label = bar.locator("text.label").text_content()
        bars[label] = (bar.locator("text.value").text_content(), bar.locator("rect").bounding_box()["width"])
    return bars


def test_a_manager_sees_usage_and_utilisation_as_charts_and_downloads_the_csv(new_page, origin):
    leica = resource_id(origin, "Leica Stellaris 8 confocal")
    facs = resource_id(origin, "BD FACSymphony A5 flow cytometer")
    ada = origin.token("ada", org="ntnu", name="Ada Researcher")
    ola = origin.token("ola", org="pulsetech", name="Ola Startup")
    day = next_weekday(2, 9, min_days=35)  # a Wednesday no other test books
    book_over_api(origin, ada, leica, day, 2, title="Live cells", project="NFR-1")
    book_over_api(origin, ola, leica, day.replace(hour=13), 1, title="Prototype")
    book_over_api(origin, ada, facs, day.replace(hour=10), 4, title="Panel", project="NFR-1")

    page = new_page()
    log_in(page, "imaging-manager")
    page.click("nav >> text=Manage")
    page.click("text=Usage and utilisation")
    page.select_option("#lab", label="Cell imaging lab")
    page.fill("#from", day.date().isoformat())
    page.fill("#to", day.date().isoformat())
    page.click("button:has-text('Show')")

    assert page.locator("#usage-h").inner_text() == f"Usage: Cell imaging lab, {day.day} {day:%b} {day.year}"
    usage = chart_bars(page, "usage-chart")
    assert list(usage)[:2] == ["BD FACSymphony A5 flow cytometer", "Leica Stellaris 8 confocal"]
    assert usage["BD FACSymphony A5 flow cytometer"][0] == "4 hrs"
    assert usage["Leica Stellaris 8 confocal"][0] == "3 hrs"
    assert usage["BD FACSymphony A5 flow cytometer"][1] / usage["Leica Stellaris 8 confocal"][1] == pytest.approx(
        4 / 3, rel=0.01)
    assert usage["Zeiss LSM 980 confocal"] == ("0 hrs", 0)
    assert page.locator("svg#usage-chart title").text_content().startswith("Hours booked per instrument, ")
    assert "Leica Stellaris 8 confocal: 3 hrs" in page.locator("svg#usage-chart desc").text_content()
    leica_row = page.locator("#usage-table tbody tr", has_text="Leica Stellaris 8 confocal").inner_text()
    # 2 hours at the internal 400 and 1 hour at the external 1100
    assert leica_row.split("\t") == ["Leica Stellaris 8 confocal", "2", "3 hrs", "NOK1,900.00"]
    util = chart_bars(page, "util-chart")
    assert util["Leica Stellaris 8 confocal"][0] == "20%"  # 3 of the 15 open hours
    assert util["BD FACSymphony A5 flow cytometer"][0] == "17%"  # 4 of 24: always open
    shot(page, "usage")
    page.set_viewport_size({"width": 390, "height": 844})
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the usage page scrolls sideways on a phone ({width}px)"
    page.set_viewport_size({"width": 1200, "height": 900})

    page.select_option("#by", "org")
    page.click("button:has-text('Show')")
    by_org = chart_bars(page, "usage-chart")
    assert [(org, text) for org, (text, _w) in by_org.items()] == [("ntnu", "6 hrs"), ("pulsetech", "1 hr")]

    with page.expect_download() as download:
        page.click("text=Download CSV")
    csv_file = download.value
    assert csv_file.suggested_filename == f"usage-cell-imaging-lab-{day.date()}-{day.date()}.csv"
    rows = list(csv.DictReader(io.StringIO(Path(csv_file.path()).read_text())))
    assert sorted((r["resource_name"], r["org"], r["project"], r["hours"], r["amount"]) for r in rows) == [
        ("BD FACSymphony A5 flow cytometer", "ntnu", "NFR-1", "4.00", "2400.00"),
        ("Leica Stellaris 8 confocal", "ntnu", "NFR-1", "2.00", "800.00"),
        ("Leica Stellaris 8 confocal", "pulsetech", "", "1.00", "1100.00"),
    ]

    page.fill("#from", (day + dt.timedelta(days=7)).date().isoformat())
    page.click("button:has-text('Show')")
    assert page.locator("#to-error").inner_text() == "The last day must be on or after the first day."
    assert page.locator("#to").get_attribute("aria-invalid") == "true"
    assert page.locator("h1").inner_text() == "Usage and utilisation"
    assert page.locator("svg.chart").count() == 0


def test_a_researcher_whose_time_is_taken_waits_for_it_and_gets_it_when_it_frees(new_page, origin):
    leica = resource_id(origin, "Leica Stellaris 8 confocal")
    ola = origin.token("ola", org="pulsetech", name="Ola Startup")
    thursday = next_weekday(3, 10, min_days=9)
    taken = book_over_api(origin, ola, leica, thursday, 2, title="Prototype run")
    other = book_over_api(origin, ola, leica, thursday.replace(hour=14), 1, title="Second run")
    when = f"{day_text(thursday)}, 10:00–12:00"

    page = new_page()
    log_in(page, "ada")
    fill_booking_form(page, leica, thursday, "10:00", 120, title="Waiting for the Leica")
    assert page.locator("#when-error").inner_text() == f"That time is taken: {when}."
    shot(page, "waitlist-offer")
    page.click("#waitlist-offer button:has-text('Join the waitlist')")
    page.wait_for_url(re.compile(r".*/#waitlist$"))
    assert page.locator(".flash.ok").inner_text().startswith(
        f"You are number 1 on the waitlist for Leica Stellaris 8 confocal, {when}.")
    entry = page.locator("#waiting li", has_text=when)
    assert "Leica Stellaris 8 confocal" in entry.inner_text() and "Number 1 in the queue" in entry.inner_text()
    shot(page, "waitlist")

    # Ola gives the time up: the first in the queue gets it, there and then.
    expect(origin.post(f"/api/v1/bookings/{taken['id']}/cancel", ola, {}), 200)
    page.goto("/")
    assert page.locator("#waiting li", has_text=when).count() == 0
    got = page.locator("#upcoming li", has_text=when)
    assert "Leica Stellaris 8 confocal" in got.inner_text() and "Waiting for the Leica" in got.inner_text()
    got.locator("a").click()
    assert page.locator("#status").inner_text() == "Confirmed"

    # Waiting for another taken time, then leaving the queue.
    later = f"{day_text(thursday)}, 14:00–15:00"
    fill_booking_form(page, leica, thursday, "14:00", 60)
    page.click("#waitlist-offer button:has-text('Join the waitlist')")
    assert "Number 1 in the queue" in page.locator("#waiting li", has_text=later).inner_text()
    page.locator("#waiting li", has_text=later).locator("button:has-text('Leave the waitlist')").click()
    assert page.locator(".flash.ok").inner_text() == "You have left the waitlist."
    assert page.locator("#waiting li", has_text=later).count() == 0
    expect(origin.post(f"/api/v1/bookings/{other['id']}/cancel", ola, {}), 200)
    page.goto("/")
    assert page.locator("#upcoming li", has_text=later).count() == 0, "who left the queue gets nothing"


def test_a_series_cancelled_from_its_third_week_on_keeps_the_first_two(new_page, origin):
    leica = resource_id(origin, "Leica Stellaris 8 confocal")
    first = next_weekday(1, 15, min_days=14)
    weeks = [first + dt.timedelta(weeks=n) for n in range(4)]
    texts = [f"{day_text(w)}, 15:00–16:00" for w in weeks]

    page = new_page()
    log_in(page, "ada")
    fill_booking_form(page, leica, first, "15:00", 60, title="Weekly imaging", weeks=4)
    assert page.locator(".flash.ok").inner_text() == "Booked: 4 weeks."
    series = page.locator("#series li")
    assert series.all_inner_texts() == [f"{t} Confirmed" for t in texts]

    series.nth(2).locator("a").click()
    assert page.locator("dd.when").inner_text() == texts[2]
    page.check("#cancel-scope-following")
    page.click("button:has-text('Cancel booking')")
    assert page.locator(".flash.ok").inner_text() == "Cancelled 2 bookings of the series."
    assert page.locator("#status").inner_text() == "Cancelled"
    assert page.locator("#series li").all_inner_texts() == [
        f"{texts[0]} Confirmed", f"{texts[1]} Confirmed", f"{texts[2]} Cancelled", f"{texts[3]} Cancelled"]
    shot(page, "series")

    page.click("nav >> text=Home")
    mine = page.locator("#upcoming li", has_text="Weekly imaging").locator(".when").all_inner_texts()
    assert mine == texts[:2]


@contextlib.contextmanager
def webhook_receiver():
    """A webhook receiver on 127.0.0.1 that answers ``state["status"]`` and keeps what it was sent."""
    state = {"status": 500, "received": []}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (the http.server name)
            state["received"].append(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            self.send_response(state["status"])
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/labshare", state
    finally:
        server.shutdown()
        server.server_close()


def test_a_manager_turns_a_failed_webhook_on_again_and_sends_its_failed_delivery_again(new_page, origin):
    stellaris = resource_id(origin, "Leica Stellaris 8 confocal")
    ada = origin.token("ada", org="ntnu", name="Ada Researcher")
    page = new_page()
    log_in(page, "imaging-manager")
    with webhook_receiver() as (url, receiver):
        page.goto("/manage/webhooks")
        page.fill("#url", url)
        page.fill("#events", "booking.created")
        page.fill("#secret", "s3cret")
        page.select_option("#lab_id", label="Cell imaging lab")
        page.click("button:has-text('Add')")
        assert page.locator(".flash.ok").inner_text() == "Webhook added."
        hook = page.locator("table.list tr", has_text=url)
        hook.locator("a").click()
        hook_url = page.url

        book_over_api(origin, ada, stellaris, next_weekday(4, 9, min_days=9), 1, title="Calls a webhook")

        def turned_off():
            page.goto(hook_url)
            return page.locator("#hook-state").inner_text() == "Off (failed)"

        wait_until(turned_off, 20, "the failing webhook to be turned off")
        assert len(receiver["received"]) == 2, "the first try and one retry"
        assert "Failed" in page.locator("#delivery-list tbody tr").first.inner_text()
        assert page.locator("button:has-text('Send again')").count() == 0
        shot(page, "webhook-off")

        page.click("button:has-text('Turn it on again')")
        assert page.locator(".flash.ok").inner_text() == "Webhook enabled again."
        assert page.locator("#hook-state").inner_text() == "On"
        receiver["status"] = 204
        page.locator("#delivery-list button:has-text('Send again')").first.click()
        assert page.locator(".flash.ok").inner_text() == "1 delivery is being sent again."

        def delivered():
            page.goto(hook_url)
            return "Delivered" in page.locator("#delivery-list tbody tr").first.inner_text()

        wait_until(delivered, 20, "the delivery sent again to arrive")
        assert len(receiver["received"]) == 3 and b"Calls a webhook" in receiver["received"][-1]
