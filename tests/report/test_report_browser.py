"""The report opens in headless Chromium with no console errors and every section visible; screenshot saved under
tests/artifacts/ for a person to look at."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from k3eval.report.build import SECTIONS

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync"]


def _need_browser():
    if not CHROMIUM.exists():
        msg = f"{CHROMIUM} not found (Debian package chromium)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.mark.browser
def test_report_in_chromium(full_report):
    _need_browser()
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(full_report.as_uri())
            page.wait_for_load_state("load")
            for sid, title in SECTIONS:
                heading = page.locator(f"section#{sid} > h2")
                assert heading.is_visible() and heading.inner_text() == title
            # every image decoded (broken data URIs have naturalWidth 0)
            widths = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
            assert widths and min(widths) > 0
            assert page.locator("#simulated-banner").is_visible()
            page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert all(u.startswith(("file:", "data:")) for u in requests), [u for u in requests if not u.startswith("d")]
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000
