"""Fixtures of the browser tests: one ``python -m services run`` and one headless Chromium for the whole run.

Both start only when a test asks for them. Without Chromium or the ``playwright`` package the tests that use them
skip, unless ``LABSHARE_REQUIRE_SERVICES=1``, when they fail.
"""

from __future__ import annotations

import os

import pytest

from tests.e2e.helpers import PYTHON, Api, Processes, clean_env, free_port, wait_until
from tests.e2e.web import CHROMIUM, CHROMIUM_ARGS, missing


@pytest.fixture(scope="session")
def origin(tmp_path_factory):
    """One ``python -m services run`` as ``make run`` starts it, on a free port and a fresh data directory."""
    reason = missing()
    if reason:
        if os.environ.get("LABSHARE_REQUIRE_SERVICES") == "1":
            pytest.fail(f"browser tests required but {reason}")
        pytest.skip(reason)
    run_dir = tmp_path_factory.mktemp("web")
    procs = Processes(run_dir / "logs")
    port = free_port()
    # One quick retry: a webhook whose receiver fails is turned off within a test.
    env = clean_env(LABSHARE_DEV_MODE="1", LABSHARE_PORT=str(port), LABSHARE_DATA_DIR=str(run_dir / "var"),
                    LABSHARE_RETRY_SECONDS="0.2")
    procs.start("labshare-run", [PYTHON, "-m", "services", "run"], env)
    api = Api(f"http://127.0.0.1:{port}")
    wait_until(api.healthy, 45, "labshare to answer /healthz", procs)
    yield api
    procs.stop_all()


@pytest.fixture(scope="session")
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
