"""The voting page's layout in a real browser (Playwright + Debian's Chromium) against `k3eval sbs serve`: long
prompts readable from their first line to their last, answer buttons on screen at 1366x768 and 1280x720, and on
phones the next pair starting at the top of the page with the prompt and both images before the buttons.

A screenshot of the phone layout is saved to tests/artifacts/sbs_phone.png (the one in docs/images/ comes from it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from app_study import (  # noqa: E402
    DISPLAYED_JS,
    REPO,
    Server,
    make_photo_run,
    start_voting,
    wait_app,
)

from k3eval.sbs import create_study, dispose_engines  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]
STUDY = "layout-study"
ARTIFACTS = REPO / "tests" / "artifacts"
# Two PartiPrompts (167 and 389 characters, the longest of the set), one far longer, one short.
PARTI_167 = ("A photograph of the inside of a subway train. There are raccoons sitting on the seats. One of them is "
             "reading a newspaper. The window shows the city in the background.")
PARTI_389 = ("Oil-on-canvas painting of a blue night sky with roiling energy. A fuzzy and bright yellow crescent moon "
             "shining at the top. Below the exploding yellow stars and radiating swirls of blue, a distant village "
             "sits quietly on the right. Connecting earth and sky is a flame-like cypress tree with curling and "
             "swaying branches on the left. A church spire rises as a beacon over rolling blue hills")
VERY_LONG = " ".join(f"Sentence {k}: a small red cube stands left of a large blue sphere on a wooden table." for k in
                     range(12))
PROMPTS = [("p-167", PARTI_167, "Scenes"), ("p-389", PARTI_389, "Art"), ("p-long", VERY_LONG, "Art"),
           ("p-short", "a red cube", "Objects")]
VIEWERS = {"desk1366": (1366, 768), "desk1280": (1280, 720), "phone": (390, 844), "small": (360, 560)}

# Geometry of the page as a person sees it, in viewport pixels, with the prompt box scrolled to its top and then to
# its end: the first and the last line of the prompt, the box, the header, the images and every answer button.
GEOMETRY_JS = """() => {
    const rect = (e) => { const r = e.getBoundingClientRect();
        return {top: r.top, bottom: r.bottom, left: r.left, right: r.right}; };
    const box = document.querySelector("[class*='st-key-pair_'] .st-key-prompt [data-testid='stText']");
    const texts = []; const walk = document.createTreeWalker(box, NodeFilter.SHOW_TEXT);
    while (walk.nextNode()) texts.push(walk.currentNode);
    const lines = () => { const rs = texts.flatMap((t) => { const rg = document.createRange(); rg.selectNodeContents(t);
            return [...rg.getClientRects()]; }).filter((r) => r.width > 0 && r.height > 0);
        const top = Math.min(...rs.map((r) => r.top)), bottom = Math.max(...rs.map((r) => r.bottom));
        const first = rs.filter((r) => r.top < top + 2), last = rs.filter((r) => r.bottom > bottom - 2);
        const span = (xs) => ({top: Math.min(...xs.map((r) => r.top)), bottom: Math.max(...xs.map((r) => r.bottom)),
            left: Math.min(...xs.map((r) => r.left)), right: Math.max(...xs.map((r) => r.right))});
        return {first: span(first), last: span(last)}; };
    box.scrollTop = 0;
    const atTop = lines();
    box.scrollTop = box.scrollHeight;
    const atEnd = lines();
    box.scrollTop = 0;
    const main = document.querySelector("[data-testid='stMain']");
    return {first: atTop.first, last: atEnd.last, box: rect(box), scrollWidth: box.scrollWidth,
            clientWidth: box.clientWidth, text: box.textContent,
            header: rect(document.querySelector(".st-key-header")),
            images: [...document.querySelectorAll("[class*='st-key-pair_'] .st-key-left_image img, "
                                                  + "[class*='st-key-pair_'] .st-key-right_image img")].map(rect),
            buttons: [...document.querySelectorAll("[class*='st-key-ans_'] button")].map(rect),
            scroll: [window.scrollY, main ? main.scrollTop : 0], width: innerWidth, height: innerHeight};
}"""


@pytest.fixture
def served(tmp_path):
    runs = {"run-a": make_photo_run(tmp_path / "runs" / "a", "gen-a", PROMPTS, size=1024, seed=1),
            "run-b": make_photo_run(tmp_path / "runs" / "b", "gen-b", PROMPTS, size=1024, seed=2)}
    db = f"sqlite:///{tmp_path / 'votes.db'}"
    created = create_study(STUDY, runs, list(VIEWERS), overlap=len(VIEWERS), gold=0.0, repeats=0.0, seed=1,
                           db_url=db)
    server = Server(STUDY, db, tmp_path / "serve.log").start()
    yield created, server
    server.stop()
    dispose_engines()


def open_page(browser, server, created, who: str):
    width, height = VIEWERS[who]
    ctx = browser.new_context(viewport={"width": width, "height": height}, is_mobile=width < 640,
                              has_touch=width < 640)
    ctx.set_default_timeout(45_000)  # shared 2-core machine: reruns can be slow under load
    page = ctx.new_page()
    page.goto(f"{server.base}/?token={created.tokens[who]}")
    wait_app(page)
    start_voting(page)
    return ctx, page


def next_pair(page, after: str | None) -> dict:
    """Wait for a pair other than the one whose prompt was `after` to be whole on screen; its geometry."""
    page.wait_for_function(f"""(after) => {{ const d = ({DISPLAYED_JS})();
        return d.images && d.prompt !== after; }}""", arg=after)
    page.wait_for_timeout(150)  # let the browser finish laying out what it just showed
    return page.evaluate(GEOMETRY_JS)


def inside(inner: dict, outer: dict, slack: float = 1.0) -> bool:
    return (inner["top"] >= outer["top"] - slack and inner["bottom"] <= outer["bottom"] + slack
            and inner["left"] >= outer["left"] - slack and inner["right"] <= outer["right"] + slack)


def check_prompt_readable(g: dict) -> None:
    """The whole prompt can be read: its first line starts inside the box below the header, the box scrolls to its
    last line, nothing sticks out sideways, and the box itself is in the window."""
    screen = {"top": 0, "bottom": g["height"], "left": 0, "right": g["width"]}
    assert g["first"]["top"] >= g["header"]["bottom"] - 1, g
    assert inside(g["first"], g["box"]) and inside(g["first"], screen), g
    assert inside(g["last"], g["box"]) and inside(g["box"], screen), g
    assert g["scrollWidth"] <= g["clientWidth"] + 1, g


@pytest.mark.parametrize("who", ["desk1366", "desk1280"])
def test_laptop_screens_show_whole_prompt_and_every_button(browser, served, who):
    created, server = served
    ctx, page = open_page(browser, server, created, who)
    seen = set()
    after = None
    for _ in PROMPTS:
        g = next_pair(page, after)
        check_prompt_readable(g)
        screen = {"top": 0, "bottom": g["height"], "left": 0, "right": g["width"]}
        assert len(g["buttons"]) == 8 and all(inside(b, screen) for b in g["buttons"]), g
        assert all(inside(i, screen) for i in g["images"]) and g["scroll"] == [0, 0], g
        assert min(i["bottom"] - i["top"] for i in g["images"]) >= 120, g
        seen.add(g["text"])
        after = g["text"]
        page.keyboard.press("2")
        page.keyboard.press("s")
    assert seen == {text for _, text, _ in PROMPTS}
    ctx.close()


@pytest.mark.parametrize("who", ["phone", "small"])
def test_phones_start_each_pair_at_the_top_with_prompt_and_images_first(browser, served, who):
    created, server = served
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    ctx, page = open_page(browser, server, created, who)
    seen = set()
    after = None
    scrolled = []
    for k in range(len(PROMPTS)):
        g = next_pair(page, after)
        assert g["scroll"] == [0, 0], g  # the new pair starts at the top of the page
        check_prompt_readable(g)
        screen = {"top": 0, "bottom": g["height"], "left": 0, "right": g["width"]}
        assert len(g["images"]) == 2 and all(inside(i, screen) for i in g["images"]), g
        assert max(i["bottom"] for i in g["images"]) <= min(b["top"] for b in g["buttons"]), g
        if who == "phone" and g["text"] == PARTI_167:
            page.screenshot(path=str(ARTIFACTS / "sbs_phone.png"))
        seen.add(g["text"])
        after = g["text"]
        # Tapped like a person would: Playwright scrolls each button into view first (the small screen must
        # scroll), then the next pair has to bring the page back to its top.
        page.tap(f".st-key-ans_{k + 1}_alignment_right button")
        page.wait_for_selector(f".st-key-ans_{k + 1}_alignment_right button[kind='primary']")
        page.tap(f".st-key-ans_{k + 1}_quality_left button")
        scrolled.append(page.evaluate("document.querySelector(\"[data-testid='stMain']\").scrollTop"))
    assert seen == {text for _, text, _ in PROMPTS}
    if who == "small":
        assert max(scrolled) > 0  # the buttons were below the fold: the page had to come back to the top
    if who == "phone":
        assert (ARTIFACTS / "sbs_phone.png").stat().st_size > 10_000
    ctx.close()
