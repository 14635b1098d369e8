"""The demo benchmark (benchmarks/smoke.yaml) end to end in a temporary folder: its report has every section and
opens in Chromium without console errors (screenshot: tests/artifacts/demo_report.png)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from k3eval.report.build import SECTIONS

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.browser
def test_demo_benchmark_report(tmp_path):
    from k3eval.benchmark import run_benchmark
    from k3eval.sbs import dispose_engines

    ctx = run_benchmark(REPO / "benchmarks" / "smoke.yaml", progress=False, root=tmp_path)
    dispose_engines()
    index = Path(ctx.outputs["report"])
    assert index.is_relative_to(tmp_path) and index.exists()
    text = index.read_text(encoding="utf-8")
    for sid, _ in SECTIONS:
        assert f'<section id="{sid}">' in text
    assert "SIMULATED VOTES" in text[: text.index("<nav>")]
    assert 'id="t-preference_overall"' in text and 'id="t-speed"' in text and 'id="t-examples"' in text

    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{chromium} not found")
        pytest.skip(f"{chromium} not found")
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    art = REPO / "tests" / "artifacts"
    art.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(index.as_uri())
            for sid, title in SECTIONS:
                assert page.locator(f"section#{sid} > h2").inner_text() == title
            page.screenshot(path=str(art / "demo_report.png"), full_page=True)
        finally:
            browser.close()
    assert errors == []
