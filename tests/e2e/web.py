"""The web app in a real browser: the machine's Chromium, screenshots, and steps every browser test takes.

Uses the machine's Chromium (``/usr/bin/chromium``, or ``LABSHARE_CHROMIUM``), never a downloaded browser.
The fixtures (one ``python -m services run`` and one browser for the whole run) are in ``conftest.py``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tests.e2e.helpers import REPO, Api, expect

CHROMIUM = os.environ.get("LABSHARE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SHOTS = Path(os.environ.get("LABSHARE_SCREENSHOT_DIR") or REPO / "var" / "screenshots")


def missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[test]')"
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    return None


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


def fill_booking_form(page, resource: str, day, time: str, minutes: int, title: str | None = None,
                      weeks: int | None = None) -> None:
    """Open a resource's booking form, fill it in (``weeks`` repeats it weekly) and press Book."""
    page.goto(f"/resources/{resource}/book")
    page.fill("#date", day.date().isoformat())
    page.fill("#time", time)
    page.select_option("#minutes", str(minutes))
    if title is not None:
        page.fill("#title", title)
    if weeks is not None:
        page.check("#repeat")
        page.fill("#weeks", str(weeks))
    page.click("button:has-text('Book')")
