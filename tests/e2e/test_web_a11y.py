"""Accessibility of the web app in a real browser: axe-core on every main page, the keyboard alone, the focus.

axe-core (the engine of the browsers' accessibility linters) comes from the npm registry into ``tests/.node`` the
first time (see ``tests/npm.py``); nothing of it is committed. It checks the pages of both roles, in English and in
Norwegian, on a desktop and on a phone; any violation fails, reported with its rule, its help and the elements at
fault. Then a researcher finds and books a slot with Tab, typing and Enter alone, and every control of the main
pages shows a focus ring that stands out from what surrounds it. Without npm these tests skip, unless
``LABSHARE_REQUIRE_SERVICES=1``, when they fail.

The pages run against the one labshare of the browser tests (see ``conftest.py``); the bookings made here are on
Mondays, which no other browser test books, and none is in the periods whose usage they count.
"""

from __future__ import annotations

import datetime as dt
import re

import pytest

from tests.e2e.helpers import Api, expect, next_weekday, parse, wait_until
from tests.e2e.web import fill_booking_form, log_in, resource_id
from tests.npm import npm_file

pytestmark = pytest.mark.e2e

#: Rules switched off, each with why axe is wrong about this app. None so far.
DISABLED_RULES: dict[str, str] = {}

#: axe-core's version: rules come and go between minor versions, so a new one is taken on purpose.
AXE_VERSION = "4.14"

RUN_AXE = """async (disabled) => {
  const rules = Object.fromEntries(disabled.map((id) => [id, {enabled: false}]));
  const result = await axe.run(document, {resultTypes: ["violations"], rules});
  return result.violations.map((v) => ({
    id: v.id, impact: v.impact, help: v.help, url: v.helpUrl,
    nodes: v.nodes.map((n) => ({target: n.target.join(" "), html: n.html.slice(0, 200), why: n.failureSummary})),
  }));
}"""
IMPACTS = ("critical", "serious", "moderate", "minor")


@pytest.fixture(scope="session")
def axe_source() -> str:
    """axe.min.js from the npm registry (installed into tests/.node the first time)."""
    return npm_file("axe-core", AXE_VERSION, "axe.min.js", needs_node=False).read_text()


class Axe:
    """Runs axe-core on pages and keeps what it finds, so that a test reports every page's violations at once.

    Every violation counts, whatever its impact: "serious" and "critical" ones (a control without a name, text
    without enough contrast) stop some people outright; "moderate" ones (headings out of order, two landmarks of
    one name) make a page hard to find one's way in with a screen reader; the pages have none of either.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.found: list[tuple[int, str]] = []
        self.pages: list[str] = []

    def check(self, page, name: str) -> None:
        page.wait_for_load_state("load")
        if not page.evaluate("typeof window.axe === 'object'"):
            # evaluate() is not bound by the page's Content-Security-Policy, which allows no inline script.
            page.evaluate(self.source)
        self.pages.append(name)
        for v in page.evaluate(RUN_AXE, list(DISABLED_RULES)):
            nodes = "".join(f"\n    {n['target']}: {n['html']}\n      {' '.join(n['why'].split())}"
                            for n in v["nodes"][:5])
            more = f"\n    … and {len(v['nodes']) - 5} more" if len(v["nodes"]) > 5 else ""
            rank = IMPACTS.index(v["impact"]) if v["impact"] in IMPACTS else len(IMPACTS)
            self.found.append((rank, f"- {name} ({page.url}): [{v['impact']}] {v['id']}: {v['help']} "
                                     f"({v['url']}){nodes}{more}"))

    def assert_clean(self) -> None:
        assert self.pages, "no page was checked"
        assert not self.found, (
            f"axe-core found {len(self.found)} violation(s) on {len(self.pages)} pages:\n"
            + "\n".join(text for _rank, text in sorted(self.found, key=lambda f: f[0])))


@pytest.fixture
def axe(axe_source) -> Axe:
    return Axe(axe_source)


@pytest.fixture(scope="module")
def world(origin: Api) -> dict:
    """Bookings that fill the pages: Ada's weekly series on the Leica and her request for the sequencer."""
    ada = origin.token("ada", org="ntnu", name="Ada Researcher", email="ada@ntnu.example.org")
    leica = resource_id(origin, "Leica Stellaris 8 confocal")
    novaseq = resource_id(origin, "Illumina NovaSeq X sequencer")
    monday = next_weekday(0, 9, min_days=3)
    series = book(origin, ada, leica, monday, 1, title="Axe check", project="NFR-2", rrule="FREQ=WEEKLY;COUNT=3")
    pending = book(origin, ada, novaseq, next_weekday(0, 10, min_days=10), 2, title="Exome run")
    assert pending["status"] == "pending", pending
    return {"ada": ada, "leica": leica, "zeiss": resource_id(origin, "Zeiss LSM 980 confocal"), "monday": monday,
            "series": series, "pending": pending}


def book(api: Api, token: str, resource: str, start: dt.datetime, hours: float, **extra) -> dict:
    return expect(api.post("/api/v1/bookings", token, {
        "resource_id": resource, "start": start.isoformat(), "end": (start + dt.timedelta(hours=hours)).isoformat(),
        **extra}), 201)


def shown(locator) -> int:
    """How many elements ``locator`` finds, once the first one is there (the page may still be loading)."""
    locator.first.wait_for()
    return locator.count()


def week(world: dict) -> str:
    return f"/resources/{world['leica']}?week={world['monday'].date().isoformat()}"


def find_url(what: str, day: dt.datetime, minutes: int = 60) -> str:
    return f"/find?what={what}&minutes={minutes}&day={day.date().isoformat()}"


def test_the_researchers_pages_pass_axe(new_page, axe, world):
    page = new_page()
    page.goto("/login")
    axe.check(page, "login")
    log_in(page, "ada")
    if page.locator("#calendar button:has-text('Get my calendar link')").count():
        page.click("#calendar button:has-text('Get my calendar link')")
        page.locator("#feed-link").wait_for()
    assert shown(page.locator("#upcoming li", has_text="Axe check")) == 3
    assert shown(page.locator("#pending li", has_text="Illumina NovaSeq X sequencer")) == 1
    axe.check(page, "home")

    page.goto(find_url("cat%3Amicroscopy%2Fconfocal", world["monday"]))
    assert shown(page.locator("#slots li")) > 0
    axe.check(page, "find with results")

    page.goto(week(world))
    assert shown(page.locator("td.cell.busy")) >= 1  # Ada's hour on the Monday
    axe.check(page, "resource week")
    page.locator("td.cell.free a").first.click()
    page.wait_for_url(re.compile(r".*/book\?start=.*"))
    axe.check(page, "book form")

    page.goto(f"/bookings/{world['series']['id']}")
    assert shown(page.locator("#series li")) == 3
    axe.check(page, "booking of a series")

    fill_booking_form(page, world["leica"], world["monday"], "09:00", 60)
    assert "That time is taken" in page.locator("#when-error").inner_text()
    axe.check(page, "book form, refused")

    ola = new_page()
    log_in(ola, "ola")  # Ola is not trained on the Zeiss
    ola.goto(f"/resources/{world['zeiss']}/book")
    ola.fill("#date", next_weekday(5, 10, min_days=3).date().isoformat())
    ola.fill("#time", "10:00")
    ola.click("button:has-text('Book')")
    assert shown(ola.locator(".refusal")) >= 2
    axe.check(ola, "book form, refused twice")
    ola.goto(f"/resources/{world['leica']}/book")
    ola.fill("#date", world["monday"].date().isoformat())
    ola.fill("#time", "09:00")
    ola.select_option("#minutes", "60")
    ola.click("button:has-text('Book')")
    assert shown(ola.locator("#waitlist-offer")) == 1
    axe.check(ola, "book form, time taken, waitlist offered")
    ola.click("#waitlist-offer button")
    ola.wait_for_url(re.compile(r".*/#waitlist$"))
    assert shown(ola.locator("#waiting li")) >= 1
    axe.check(ola, "home with a waitlist")
    ola.goto("/bookings/no-such-booking")
    axe.check(ola, "error page")
    axe.assert_clean()


def test_the_managers_pages_pass_axe(new_page, axe, world, origin):
    page = new_page()
    log_in(page, "imaging-manager")
    axe.check(page, "manager's home")
    page.goto("/find")
    axe.check(page, "find")
    page.click("nav >> text=Manage")
    page.wait_for_url(re.compile(r".*/manage/?$"))
    axe.check(page, "manage")
    page.click("h2 >> text=Cell imaging lab")
    page.wait_for_url(re.compile(r".*/manage/labs/[^/]+$"))
    axe.check(page, "lab form")
    page.click("text=Add an instrument or room")
    page.wait_for_url(re.compile(r".*/resources/new$"))
    axe.check(page, "new resource form")

    page.goto(f"/manage/resources/{world['zeiss']}")
    assert shown(page.locator("#qualifications tbody tr")) >= 1
    axe.check(page, "resource form (policy editor, outages, training)")
    page.goto(f"/manage/resources/{world['leica']}")
    monday = world["monday"].date().isoformat()
    page.fill("#start_date", monday)
    page.fill("#start_time", "08:00")
    page.fill("#end_date", monday)
    page.fill("#end_time", "12:00")
    page.fill("#outage-reason", "Service visit")
    page.click("button:has-text('Check the effect')")
    assert page.locator("#effect").inner_text() == "1 booking will be cancelled and its owner told."
    axe.check(page, "outage confirm")  # and not confirmed

    page.goto(f"/bookings/{world['series']['id']}")
    axe.check(page, "someone else's booking")

    page.goto("/manage/usage")
    page.fill("#from", monday)
    page.fill("#to", (world["monday"] + dt.timedelta(days=14)).date().isoformat())
    page.click("button:has-text('Show')")
    assert shown(page.locator("svg.chart")) == 2
    axe.check(page, "usage with charts")
    page.fill("#from", "2020-01-02")
    page.fill("#to", "2020-01-01")
    page.click("button:has-text('Show')")
    assert shown(page.locator("#to-error")) == 1
    axe.check(page, "usage, refused period")

    page.goto("/manage/webhooks")
    axe.check(page, "webhooks")
    page.fill("#url", "http://127.0.0.1:9/closed")  # nothing listens on the discard port
    page.fill("#events", "booking.created")
    page.fill("#secret", "s3cret")
    page.select_option("#lab_id", label="Cell imaging lab")
    page.click("button:has-text('Add')")
    assert page.locator(".flash.ok").inner_text() == "Webhook added."
    axe.check(page, "webhooks, one added")
    page.locator("table.list tr", has_text="127.0.0.1:9").locator("a").click()
    page.wait_for_url(re.compile(r".*/manage/webhooks/[^/]+$"))
    hook = page.url
    book(origin, world["ada"], world["leica"], world["monday"] + dt.timedelta(hours=4), 1, title="Calls a hook")

    def turned_off():
        page.goto(hook)
        return page.locator("#hook-state").inner_text() == "Off (failed)"

    wait_until(turned_off, 20, "the failing webhook to be turned off")
    axe.check(page, "webhook, turned off")
    page.click("button:has-text('Turn it on again')")
    assert shown(page.locator("#delivery-list button:has-text('Send again')")) >= 1
    axe.check(page, "webhook, failed deliveries")
    page.goto("/manage/webhooks")
    page.locator("table.list tr", has_text="127.0.0.1:9").locator("button:has-text('Remove')").click()
    assert page.locator(".flash.ok").inner_text() == "Webhook removed."

    admin = new_page()
    log_in(admin, "admin")  # the arena's admin decides the sequencer's requests too
    admin.goto("/manage/approvals")
    assert shown(admin.locator("#approvals tbody tr")) >= 1
    axe.check(admin, "approvals")
    admin.goto(f"/bookings/{world['pending']['id']}")
    assert shown(admin.locator("button:has-text('Approve')")) == 1
    axe.check(admin, "a request to decide")
    axe.assert_clean()


def test_the_norwegian_pages_pass_axe(new_page, axe, world):
    page = new_page(locale="nb-NO")
    page.goto("/login")
    assert page.locator("html").get_attribute("lang") == "nb"
    axe.check(page, "login (nb)")
    log_in(page, "ada")
    axe.check(page, "home (nb)")
    page.goto(find_url("cat%3Amicroscopy%2Fconfocal", world["monday"]))
    assert shown(page.locator("#slots li")) > 0
    axe.check(page, "find with results (nb)")
    page.goto(week(world))
    axe.check(page, "resource week (nb)")
    page.goto(f"/bookings/{world['series']['id']}")
    axe.check(page, "booking (nb)")
    axe.assert_clean()


def test_the_pages_pass_axe_on_a_phone(new_page, axe, world):
    page = new_page(width=390, height=844)
    log_in(page, "ada")
    axe.check(page, "home (phone)")
    page.goto(find_url("cat%3Amicroscopy", world["monday"]))
    assert shown(page.locator("#slots li")) > 0
    axe.check(page, "find with results (phone)")
    page.goto(week(world))
    axe.check(page, "resource week (phone)")
    page.goto(f"/resources/{world['leica']}/book")
    axe.check(page, "book form (phone)")
    manager = new_page(width=390, height=844)
    log_in(manager, "imaging-manager")
    manager.goto(f"/manage/resources/{world['leica']}")
    axe.check(manager, "resource form (phone)")
    manager.goto("/manage/usage")
    manager.fill("#from", world["monday"].date().isoformat())
    manager.fill("#to", (world["monday"] + dt.timedelta(days=14)).date().isoformat())
    manager.click("button:has-text('Show')")
    assert shown(manager.locator("svg.chart")) == 2
    axe.check(manager, "usage (phone)")
    axe.assert_clean()


def focused(page) -> dict:
    """What has the keyboard focus: its tag, id, text and name, the ring drawn around it and the colours behind that."""
    return page.evaluate("""() => {
      const el = document.activeElement, style = getComputedStyle(el), box = el.getBoundingClientRect();
      // What is under the ring, above and below the middle of the element: the first colour that is not clear.
      const ring = parseFloat(style.outlineOffset) + parseFloat(style.outlineWidth) / 2, x = box.left + box.width / 2;
      const behind = [box.top - ring, box.bottom + ring].filter((y) => y >= 0 && y < innerHeight).map((y) => {
        for (const under of document.elementsFromPoint(x, y)) {
          const colour = getComputedStyle(under).backgroundColor;
          if (!colour.startsWith("rgba(") || !colour.endsWith(", 0)")) return colour;
        }
        return "rgb(255, 255, 255)";
      });
      return {tag: el.tagName.toLowerCase(), id: el.id, text: (el.textContent || "").trim().slice(0, 60),
              label: el.getAttribute("aria-label") || "", outline: style.outlineStyle,
              width: parseFloat(style.outlineWidth), colour: style.outlineColor, behind};
    }""")


def contrast(first: str, second: str) -> float:
    """The WCAG contrast ratio of two ``rgb(r, g, b)`` colours."""
    def luminance(colour: str) -> float:
        channels = [int(c) / 255 for c in re.findall(r"\d+", colour)[:3]]
        r, g, b = (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    light, dark = sorted((luminance(first), luminance(second)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def assert_ring(now: dict) -> None:
    """The focused element has a ring of at least 2 px, of 3:1 contrast or more against what is around it."""
    assert now["outline"] != "none" and now["width"] >= 2, f"the keyboard focus is not visible on {now}"
    faintest = min(contrast(now["colour"], colour) for colour in now["behind"])
    assert faintest >= 3, f"the focus ring is too faint ({faintest:.1f}:1) on {now}"


def tab_to(page, matches, what: str, limit: int = 60) -> dict:
    """Press Tab until the focused element ``matches``; each one on the way shows its ring."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        now = focused(page)
        if now["tag"] != "body":
            assert_ring(now)
        if matches(now):
            return now
    raise AssertionError(f"{what} cannot be reached with Tab (last focused: {focused(page)})")


def tab_through(page, limit: int = 400) -> int:
    """Tab through the whole page, checking each element's ring; returns how many Tabs it took."""
    for count in range(1, limit + 1):
        page.keyboard.press("Tab")
        now = focused(page)
        if now["tag"] == "body":  # past the last element
            return count
        assert_ring(now)
    raise AssertionError(f"Tab never left {page.url} ({limit} presses)")


def type_date(page, field: str, day: dt.date) -> None:
    """Type a day into the focused date field, whose parts come in the order of the browser's own language.

    A first date tells the order (1 February or January 2?); Shift+Tab goes back from the year to the first part.
    """
    page.keyboard.type("01022030")
    day_first = page.locator(field).input_value() == "2030-02-01"
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Shift+Tab")
    page.keyboard.type(day.strftime("%d%m%Y" if day_first else "%m%d%Y"))


def test_the_keyboard_focus_shows_everywhere(new_page, world):
    page = new_page()
    log_in(page, "ada")
    has_focus_style = page.evaluate("""() => [...document.styleSheets].some((sheet) =>
        [...sheet.cssRules].some((rule) => (rule.selectorText || "").includes(":focus-visible")))""")
    assert has_focus_style, "no :focus-visible style"
    for url in ("/", find_url("cat%3Amicroscopy%2Fconfocal", world["monday"]), week(world),
                f"/resources/{world['leica']}/book", f"/bookings/{world['series']['id']}"):
        page.goto(url)
        assert tab_through(page) > 5, url
    manager = new_page(width=390, height=844)
    log_in(manager, "imaging-manager")
    for url in ("/manage", f"/manage/resources/{world['leica']}"):
        manager.goto(url)
        assert tab_through(manager) > 5, url


def test_a_researcher_finds_and_books_a_slot_with_the_keyboard_only(new_page, origin):
    page = new_page()
    log_in(page, "ada")
    page.goto("/find")
    skip = tab_to(page, lambda f: True, "the first element")
    assert skip["text"] == "Skip to content", skip
    assert page.locator("a.skip").bounding_box()["x"] >= 0, "the skip link stays off screen when focused"
    page.keyboard.press("Enter")
    assert focused(page)["id"] == "main"

    tab_to(page, lambda f: f["id"] == "what", "the 'What' field")
    page.keyboard.type("testing/emc")  # a closed select picks the option one types
    assert page.locator("#what").input_value() == "cat:testing/emc"
    tab_to(page, lambda f: f["id"] == "minutes", "the 'How long' field")
    page.keyboard.press("ArrowDown")  # 1 hour → 1½ hours
    assert page.locator("#minutes").input_value() == "90"
    tab_to(page, lambda f: f["id"] == "day", "the 'When' field")
    monday = next_weekday(0, 0, min_days=4)
    type_date(page, "#day", monday.date())
    assert page.locator("#day").input_value() == monday.date().isoformat()
    tab_to(page, lambda f: f["text"] == "Find free times", "the search button")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r".*/find\?.*what=cat%3Atesting%2Femc.*"))

    first = page.locator("#slots li").first
    assert first.locator(".what").inner_text() == "Keysight EMC pre-compliance bench"
    slot = first.locator(".when").inner_text()
    assert slot.startswith(f"Mon {monday.day} "), slot
    book = tab_to(page, lambda f: f["label"].startswith("Book Keysight"), "the first slot's Book button")
    assert book["label"].endswith(slot), (book, slot)
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r".*/bookings/[^/]+$"))
    assert page.locator(".flash.ok").inner_text() == "Booked."
    assert page.locator("#status").inner_text() == "Confirmed"
    assert page.locator("dd.when").inner_text() == slot
    ada = origin.token("ada", org="ntnu", name="Ada Researcher")
    booking = expect(origin.get(f"/api/v1/bookings/{page.url.rsplit('/', 1)[1]}", ada), 200)
    assert booking["status"] == "confirmed", booking
    assert parse(booking["end"]) - parse(booking["start"]) == dt.timedelta(minutes=90), booking
