"""The demo page's fixtures: the real app on a loopback port and a headless Debian Chromium.

The browser is the system's /usr/bin/chromium (apt package ``chromium``, listed in
.ci/system-packages) driven by Playwright for Python; Playwright's own browser downloads are never
used. Without either, the tests skip and say what to install.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.client.live_server import fast_settings, live_server

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]


def chromium_path() -> str | None:
    for candidate in (os.environ.get("SCORECAM_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@pytest.fixture(scope="module")
def demo_url() -> Iterator[str]:
    """The whole app (API and page) on a free loopback port, as a browser would reach it."""
    with live_server(fast_settings()) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (see pyproject dev extras)")
    executable = chromium_path()
    if executable is None:
        pytest.skip("no Chromium at /usr/bin/chromium: apt-get install chromium (see .ci/system-packages)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page that records script errors and failed requests, for the tests to check.

    Chromium logs every 4xx response as a console error too; those are recorded as
    ``failed_requests`` (path and status) instead, so a test can tell expected answers apart.
    """
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.console_errors = []  # type: ignore[attr-defined]
    page.failed_requests = []  # type: ignore[attr-defined]

    def on_console(msg: Any) -> None:
        if msg.type == "error" and not msg.text.startswith("Failed to load resource"):
            page.console_errors.append(msg.text)

    def on_response(response: Any) -> None:
        if response.status >= 400:
            page.failed_requests.append((urlsplit(response.url).path, response.status))

    page.on("console", on_console)
    page.on("pageerror", lambda exc: page.console_errors.append(str(exc)))
    page.on("response", on_response)
    try:
        yield page
    finally:
        context.close()


@pytest.fixture(scope="session")
def artifact_dir() -> Path:
    """Where screenshots go: $SCORECAM_ARTIFACTS, else <tmp>/scorecam-artifacts (kept after the run)."""
    import tempfile

    path = Path(os.environ.get("SCORECAM_ARTIFACTS") or Path(tempfile.gettempdir()) / "scorecam-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path
