"""Opening a report in Debian's Chromium through Playwright, for the report's browser tests: console errors,
requests, the first section, the width check at a given window size, and screenshots under tests/artifacts/."""

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


# Every table fits the page: no table (or its wrapper) scrolls sideways, none reaches past the window, and the page
# itself has no horizontal scroll. Returns the offenders as 'table-id: width' strings.
WIDTH_CHECK = """() => {
  const bad = [];
  const vw = document.documentElement.clientWidth;
  for (const t of document.querySelectorAll('table')) {
    const box = t.parentElement;
    const r = t.getBoundingClientRect();
    if (box.scrollWidth > box.clientWidth + 1 || r.right > vw + 1 || r.left < -1) {
      bad.push(`${t.id}: ${box.scrollWidth} > ${box.clientWidth} (right edge ${Math.round(r.right)} of ${vw})`);
    }
  }
  if (document.documentElement.scrollWidth > vw + 1) bad.push(`page: ${document.documentElement.scrollWidth}`);
  return bad;
}"""


def open_report(index: Path, shot: Path, width: int = 1440) -> dict:
    """Open a report in Chromium at `width` x 900, open every collapsed table, and return what the checks need:
    console errors, requests, the first section, image widths, the width offenders. Saves a screenshot."""
    _need_browser()
    from playwright.sync_api import sync_playwright

    shot.parent.mkdir(parents=True, exist_ok=True)
    out: dict = {"errors": [], "requests": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.on("console", lambda m: out["errors"].append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: out["errors"].append(str(e)))
            page.on("request", lambda r: out["requests"].append(r.url))
            page.goto(index.as_uri())
            page.wait_for_load_state("load")
            out["headings"] = {sid: page.locator(f"section#{sid} > h2").inner_text() for sid, _ in SECTIONS
                               if page.locator(f"section#{sid} > h2").is_visible()}
            out["first_section"] = page.eval_on_selector("main > section", "e => e.id")
            # the summary table is on screen as the page opens (no scrolling needed to read the verdicts)
            out["summary_top"] = page.eval_on_selector("#t-summary", "e => e.getBoundingClientRect().top") \
                if page.locator("#t-summary").count() else None
            out["summary_shot"] = page.locator("section#summary").screenshot()
            page.eval_on_selector_all("details", "els => els.forEach(d => d.open = true)")
            out["too_wide"] = page.evaluate(WIDTH_CHECK)
            out["n_tables"] = page.locator("table").count()
            out["img_widths"] = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
            out["banner"] = page.locator("#simulated-banner").is_visible()
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    return out


__all__ = ["ARTIFACTS", "SECTIONS", "open_report"]
