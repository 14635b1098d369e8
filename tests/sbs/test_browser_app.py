"""A real browser (Playwright + Debian's Chromium) against `k3eval sbs serve`: two annotators go through a small study,
one with the keyboard only and one with the mouse only, with a refresh, a closed tab and a server restart mid-way
and one changed answer; then the admin page and its CSV export; then the database is checked vote by vote.

Screenshots for a person to look at: tests/artifacts/sbs_guideline.png, sbs_voting.png, sbs_admin.png.
Without Chromium the test is skipped, with CI=true it fails.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from app_study import (  # noqa: E402
    REPO,
    Server,
    make_photo_run,
    wait_app,
    wait_pair,
    wait_shown,
)
from helpers import PROMPTS  # noqa: E402

from k3eval.sbs import admin_overview, authenticate, create_study, dispose_engines, queue, votes_frame  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]
ARTIFACTS = REPO / "tests" / "artifacts"
STUDY = "photo-study"
KEY_ANSWERS = {"1": "left", "2": "right", "3": "equal", "4": "both_bad",
               "a": "left", "s": "right", "d": "equal", "f": "both_bad"}


@pytest.fixture
def served(tmp_path):
    # Five prompts, one of them full of HTML, a script tag, a Markdown link and non-ASCII text.
    runs = {"model-alpha": make_photo_run(tmp_path / "runs" / "alpha", "gen-alpha", PROMPTS[:5], size=512, seed=1),
            "model-beta": make_photo_run(tmp_path / "runs" / "beta", "gen-beta", PROMPTS[:5], size=512, seed=2)}
    db = f"sqlite:///{tmp_path / 'votes.db'}"
    created = create_study(STUDY, runs, ["keys", "mouse"], overlap=2, gold=0.25, repeats=0.0, seed=5, db_url=db)
    server = Server(STUDY, db, tmp_path / "serve.log").start()
    yield created, server, runs
    server.stop()
    dispose_engines()
    # Shown by pytest only when the test failed: what the server said.
    print((tmp_path / "serve.log").read_text(errors="replace")[-4000:])


def n_items(created, who: str) -> int:
    return len(queue(authenticate(created.tokens[who], STUDY, created.db_url, log=False)))


def check_page_is_blind(page, runs) -> None:
    html = page.content()
    for secret in ("model-alpha", "model-beta", "gen-alpha", "gen-beta", str(runs["model-alpha"].parent), "images/p-"):
        assert secret not in html, secret
    imgs = page.eval_on_selector_all(".st-key-left_image img, .st-key-right_image img",
                                     "els => els.map(e => [e.getAttribute('src'), e.getAttribute('alt')])")
    assert len(imgs) == 2
    for src, alt in imgs:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/media/[0-9a-f]+\.jpg", src), src
        assert not alt
    assert page.locator("a[href*='evil.example']").count() == 0


def vote_with_keys(page, position: int, total: int, align_key: str, quality_key: str,
                   screenshot: Path | None = None) -> None:
    wait_pair(page, position, total)
    page.keyboard.press(align_key)
    page.wait_for_selector(f".st-key-ans_{position}_alignment_{KEY_ANSWERS[align_key]} button[kind='primary']")
    if screenshot is not None:  # the page as an annotator sees it, one answer given
        page.screenshot(path=str(screenshot))
    page.keyboard.press(quality_key)


def vote_with_clicks(page, position: int, total: int, align: str, quality: str) -> None:
    wait_pair(page, position, total)
    page.click(f".st-key-ans_{position}_alignment_{align} button")
    page.wait_for_selector(f".st-key-ans_{position}_alignment_{align} button[kind='primary']")
    page.click(f".st-key-ans_{position}_quality_{quality} button")


def test_two_annotators_keyboard_and_mouse_end_to_end(browser, served, tmp_path):
    created, server, runs = served
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    dialogs: list[str] = []
    seen_xss = False
    expected: dict[tuple[str, int, str], str] = {}

    # ---- annotator "keys": link with the token, keyboard only, a refresh mid-way, one changed answer ------------
    n = n_items(created, "keys")
    ctx = browser.new_context(viewport={"width": 1440, "height": 900})
    ctx.set_default_timeout(45_000)  # shared 2-core machine: reruns can be slow under load
    page = ctx.new_page()
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(created.links["keys"].replace("http://localhost:8501", server.base))
    wait_app(page)
    wait_shown(page, ".st-key-start")
    page.screenshot(path=str(ARTIFACTS / "sbs_guideline.png"))
    page.keyboard.press("Enter")
    for pos in range(1, n + 1):
        if pos == 3:
            wait_pair(page, 3, n)  # the previous pair's answers are acknowledged (the page moved on) ...
            page.reload()  # ... then a refresh: the session is gone, the database knows where we were
            wait_app(page)
            wait_pair(page, 3, n)
            assert page.inner_text(".st-key-progress").strip().endswith(f"2 / {n} done")
        if pos == 4:
            # B goes back to pair 3; 3 replaces its first answer; Enter returns to pair 4.
            wait_pair(page, 4, n)
            page.keyboard.press("b")
            page.wait_for_selector(".st-key-editing")
            wait_pair(page, 3, n)
            page.keyboard.press("3")
            page.wait_for_selector(".st-key-ans_3_alignment_equal button[kind='primary']")
            expected[("keys", 3, "alignment")] = "equal"
            page.keyboard.press("Enter")
            page.wait_for_selector(".st-key-editing", state="detached")
        a_key, q_key = "1234"[pos % 4], "asdf"[(pos + 1) % 4]
        if not (pos == 3 and ("keys", 3, "alignment") in expected):
            expected[("keys", pos, "alignment")] = KEY_ANSWERS[a_key]
        expected[("keys", pos, "quality")] = KEY_ANSWERS[q_key]
        wait_pair(page, pos, n)
        prompt = page.inner_text(".st-key-prompt")
        if "<script>" in prompt:
            seen_xss = True
            assert prompt.startswith("<script>alert('x')</script> [click](http://evil.example) **bold** ünïcödé")
            check_page_is_blind(page, runs)
        if pos == 2:
            check_page_is_blind(page, runs)
        vote_with_keys(page, pos, n, a_key, q_key, ARTIFACTS / "sbs_voting.png" if pos == 2 else None)
    page.wait_for_selector(".st-key-all_done")
    ctx.close()

    # ---- annotator "mouse": types the token, clicks only, closes the tab mid-way --------------------------------
    m = n_items(created, "mouse")
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    ctx.set_default_timeout(45_000)  # shared 2-core machine: reruns can be slow under load
    page = ctx.new_page()
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(server.base + "/")
    wait_app(page)
    page.fill(".st-key-typed_token input", created.tokens["mouse"])
    page.click(".st-key-sign_in button")
    wait_shown(page, ".st-key-start")
    page.click(".st-key-start button")
    answers = ("left", "right", "equal", "both_bad")
    for pos in range(1, m + 1):
        if pos == 2:
            wait_pair(page, 2, m)  # acknowledged first: a vote the page never confirmed may be lost with the tab
            page.close()  # a closed tab; the link (token kept in the address) resumes it
            page = ctx.new_page()
            page.goto(f"{server.base}/?token={created.tokens['mouse']}")
            wait_app(page)
        if pos == 4:
            wait_pair(page, 4, m)
            server.stop()  # a server restart: nothing of the session survives, the database does
            server.start()
            page.goto(f"{server.base}/?token={created.tokens['mouse']}")
            wait_app(page)
            wait_pair(page, 4, m)
            assert page.inner_text(".st-key-progress").strip().endswith(f"3 / {m} done")
        align, quality = answers[pos % 4], answers[(pos + 2) % 4]
        expected[("mouse", pos, "alignment")] = align
        expected[("mouse", pos, "quality")] = quality
        vote_with_clicks(page, pos, m, align, quality)
    page.wait_for_selector(".st-key-all_done")
    ctx.close()

    # ---- admin: dashboard, screenshot, CSV export ---------------------------------------------------------------
    ctx = browser.new_context(viewport={"width": 1440, "height": 900}, accept_downloads=True)
    ctx.set_default_timeout(45_000)  # shared 2-core machine: reruns can be slow under load
    page = ctx.new_page()
    page.goto(f"{server.base}/?token={created.admin_token}")
    wait_app(page)
    page.wait_for_selector(".st-key-admin_table")
    page.wait_for_selector("[data-testid='stDataFrame'] canvas, [data-testid='stDataFrame'] table", timeout=20_000)
    page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / "sbs_admin.png"), full_page=True)
    with page.expect_download() as dl:
        page.click(".st-key-export_csv button")
    csv_path = tmp_path / "export.csv"
    dl.value.save_as(csv_path)
    ctx.close()

    # ---- the database: every vote as given, exactly once, the changed one counted ------------------------------
    import pandas as pd

    df = votes_frame(STUDY, created.db_url)
    assert len(df) == 2 * (n + m)
    assert df.groupby(["annotator", "item_id", "question"]).size().max() == 1
    got = {(r.annotator, int(r.position), r.question): r.answer for r in df.itertuples()}
    assert got == expected
    changed = df[df["changes"] > 0]
    assert list(zip(changed["annotator"], changed["position"], changed["question"])) == [("keys", 3, "alignment")]
    assert (df["seconds"] > 0).all()
    exported = pd.read_csv(csv_path)
    assert len(exported) == len(df) and set(exported["annotator"]) == {"keys", "mouse"}
    assert admin_overview(STUDY, created.db_url).exports == 1  # the download is in the audit log
    assert seen_xss and not dialogs  # the script in a prompt was shown, never run
    assert (ARTIFACTS / "sbs_voting.png").stat().st_size > 10_000
    assert (ARTIFACTS / "sbs_admin.png").stat().st_size > 10_000
