"""The report opens in headless Chromium at 1440 px with the summary first, every section visible, no console
errors, no table wider than the page; screenshot saved under tests/artifacts/ for a person to look at."""

from __future__ import annotations

import pytest
from report_browser import ARTIFACTS, SECTIONS, open_report


@pytest.mark.browser
def test_report_in_chromium(full_report):
    seen = open_report(full_report, ARTIFACTS / "report.png")
    assert seen["headings"] == dict(SECTIONS)
    assert seen["first_section"] == "summary" and seen["summary_top"] is not None and seen["summary_top"] < 900
    # every image decoded (broken data URIs have naturalWidth 0)
    assert seen["img_widths"] and min(seen["img_widths"]) > 0
    assert seen["banner"]
    assert seen["n_tables"] > 10 and seen["too_wide"] == []
    assert seen["errors"] == []
    assert all(u.startswith(("file:", "data:")) for u in seen["requests"]), seen["requests"]
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000
