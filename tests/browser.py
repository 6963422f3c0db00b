"""A real browser for the pages people look at: headless Chromium (Debian's `chromium`,
which scripts/services/install.sh installs), driven by Playwright.

`open_page` loads a page, waits for it to settle, keeps a full-page PNG screenshot,
and fails on any error in the page's console or an uncaught exception in its script.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass, field
from typing import Iterator

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium() -> str:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("no Chromium here: `make services` installs Debian's chromium")


@dataclass
class Page:
    text: str                      # the rendered page's visible text
    html: str                      # its DOM after the script ran
    screenshot: str
    console_errors: list[str] = field(default_factory=list)
    page: object = None            # the live Playwright page, inside the context only


@contextlib.contextmanager
def open_page(url: str, screenshot: str, *, cookies: list[dict] | None = None,
              timeout_s: float = 60) -> Iterator[Page]:
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            if cookies:
                context.add_cookies(cookies)
            page = context.new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}")
                    if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
            response = page.goto(url, wait_until="load", timeout=timeout_s * 1000)
            assert response is not None and response.ok, (url, response and response.status)
            page.screenshot(path=screenshot, full_page=True)
            result = Page(text=page.inner_text("body"), html=page.content(),
                          screenshot=screenshot, console_errors=errors, page=page)
            yield result
            assert not errors, f"errors in the page's console: {errors}"
        finally:
            browser.close()
