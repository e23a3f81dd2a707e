"""The web app in a real browser: headless Chromium (driven by Playwright) against ``python -m services run``.

A researcher finds a slot and books it, sees it at home and cancels it; a refused
booking shows the rule in plain words; a manager creates an instrument with opening
hours and schedules an outage that cancels a booking, after seeing the effect; the
Norwegian UI renders. Screenshots of the main pages go to var/screenshots/ (or
``LABSHARE_SCREENSHOT_DIR``; ``make screenshots`` refreshes the ones in docs/screenshots/).

Uses the machine's Chromium (``/usr/bin/chromium``), never a downloaded browser.
Without it or the ``playwright`` package these tests skip, unless
``LABSHARE_REQUIRE_SERVICES=1``, when they fail.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path

import pytest

from tests.e2e.helpers import (
    PYTHON,
    REPO,
    Api,
    Processes,
    clean_env,
    expect,
    free_port,
    next_weekday,
    wait_until,
)

pytestmark = pytest.mark.e2e

CHROMIUM = os.environ.get("LABSHARE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SHOTS = Path(os.environ.get("LABSHARE_SCREENSHOT_DIR") or REPO / "var" / "screenshots")
ADA = {"sub": "ada", "name": "Ada Researcher", "email": "ada@ntnu.example.org", "org": "ntnu", "roles": ["researcher"]}


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[test]')"
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    return None


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    """One ``python -m services run`` as ``make run`` starts it, on a free port and a fresh data directory."""
    reason = _missing()
    if reason:
        if os.environ.get("LABSHARE_REQUIRE_SERVICES") == "1":
            pytest.fail(f"browser tests required but {reason}")
        pytest.skip(reason)
    run_dir = tmp_path_factory.mktemp("web")
    procs = Processes(run_dir / "logs")
    port = free_port()
    env = clean_env(LABSHARE_DEV_MODE="1", LABSHARE_PORT=str(port), LABSHARE_DATA_DIR=str(run_dir / "var"))
    procs.start("labshare-run", [PYTHON, "-m", "services", "run"], env)
    api = Api(f"http://127.0.0.1:{port}")
    wait_until(api.healthy, 45, "labshare to answer /healthz", procs)
    yield api
    procs.stop_all()


@pytest.fixture(scope="module")
def browser(origin):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def new_page(browser, origin):
    """A page in a browser context of its own (its own cookies), English unless asked otherwise."""
    contexts = []

    def make(locale: str = "en-GB", width: int = 1200, height: int = 900):
        context = browser.new_context(locale=locale, viewport={"width": width, "height": height},
                                      base_url=origin.base)
        context.set_default_timeout(15_000)
        contexts.append(context)
        page = context.new_page()
        page.on("dialog", lambda dialog: dialog.accept())
        return page

    yield make
    for context in contexts:
        context.close()


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def log_in(page, user: str) -> None:
    page.goto("/login")
    page.click(f"button[name='user'][value='{user}']")
    page.wait_for_url(re.compile(r".*/$"))


def resource_id(api: Api, name: str) -> str:
    token = api.token("ada", org="ntnu")
    items = expect(api.get("/api/v1/resources?limit=500", token), 200)["items"]
    return next(r["id"] for r in items if r["name"] == name)


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
    page.goto(f"/resources/{zeiss}/book")
    page.fill("#date", saturday.date().isoformat())
    page.fill("#time", "10:00")
    page.select_option("#minutes", "60")
    page.click("button:has-text('Book')")
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
