"""Keys in a real browser (Playwright + Debian's Chromium) against `k3eval sbs serve`: bursts of keys, keys pressed
as a page first appears, and Streamlit's metrics endpoint.

What the annotator saw at each key-down is recorded by a listener the test injects before the app's own scripts
(`DISPLAYED_JS` in app_study.py: the opaque pair container, its "Pair k of N" line, its prompt, its two images
decoded), independently of the app's bookkeeping. The rule the app must follow is then replayed on that record: a
key counts only if a pair was whole on screen and that pair was the current one (the first not fully answered);
then the database must hold exactly the replayed answers, and every other key must have been refused, said so on
the page and logged by the server.
"""

from __future__ import annotations

import random
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from app_study import (  # noqa: E402
    DISPLAYED_JS,
    Server,
    make_photo_run,
    start_voting,
    wait_app,
)

from k3eval.sbs import authenticate, create_study, dispose_engines, item_view, queue, votes_frame  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]
STUDY = "burst-study"
N_PAIRS = 32
KEYS = {"1": ("alignment", "left"), "2": ("alignment", "right"), "3": ("alignment", "equal"),
        "4": ("alignment", "both_bad"), "A": ("quality", "left"), "S": ("quality", "right"),
        "D": ("quality", "equal"), "F": ("quality", "both_bad")}
FIRST_ROW, SECOND_ROW = "1234", "asdf"
# Installed before any script of the page: the first capture listener on window, so it runs before the app's.
RECORDER = f"""
window.__k3test = {{keys: [], alerts: []}};
window.__k3test.displayed = {DISPLAYED_JS};
window.addEventListener("keydown", (e) => window.__k3test.keys.push(
    {{key: e.key, repeat: e.repeat, shown: window.__k3test.displayed()}}), true);
new MutationObserver(() => {{
    for (const a of document.querySelectorAll("[data-testid='stAlert']")) {{
        if (!a.dataset.k3seen) {{ a.dataset.k3seen = "1"; window.__k3test.alerts.push(a.textContent); }}
    }}
}}).observe(document, {{subtree: true, childList: true}});
"""


@pytest.fixture
def served(tmp_path):
    prompts = [(f"p-{k:02d}", f"prompt {k}: {k % 5 + 1} red cubes on a table", f"cat-{k % 3}") for k in range(N_PAIRS)]
    runs = {"run-a": make_photo_run(tmp_path / "runs" / "a", "gen-a", prompts, size=384, seed=3),
            "run-b": make_photo_run(tmp_path / "runs" / "b", "gen-b", prompts, size=384, seed=4)}
    db = f"sqlite:///{tmp_path / 'votes.db'}"
    created = create_study(STUDY, runs, ["solo"], overlap=1, gold=0.0, repeats=0.0, seed=7, db_url=db)
    log = tmp_path / "serve.log"
    server = Server(STUDY, db, log).start()
    who = authenticate(created.tokens["solo"], STUDY, db, log=False)
    prompts_at = {e.position: item_view(who, e.item_id).prompt for e in queue(who)}
    yield created, server, prompts_at, log
    server.stop()
    dispose_engines()
    print(log.read_text(errors="replace")[-4000:])


def open_voting(browser, server, created, viewport=(1366, 768)):
    ctx = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
    ctx.set_default_timeout(45_000)  # shared 2-core machine: reruns can be slow under load
    ctx.add_init_script(RECORDER)
    page = ctx.new_page()
    page.goto(f"{server.base}/?token={created.tokens['solo']}")
    wait_app(page)
    return ctx, page


def shown_pair(record: dict, prompts_at: dict[int, str]) -> int | None:
    """The pair a person saw at a key-down: one opaque pair, known by its prompt (every pair of the study has its
    own), with both images decoded; its "Pair k of N" line, when drawn, must agree."""
    by_prompt = [p for p, text in prompts_at.items() if text == record["prompt"]]
    if record["n"] != 1 or not record["images"] or len(by_prompt) != 1:
        return None
    assert record["marker"] in (None, by_prompt[0]), record
    return by_prompt[0]


def replay(keys: list[dict], prompts_at: dict[int, str]):
    """The answers the app must have stored, and the keys it must have refused, following its rule."""
    answers: dict[int, dict[str, str]] = {p: {} for p in prompts_at}
    refused = {"finished": 0, "not_shown": 0}
    landed_early = 0  # keys of a burst that answered the next pair, which was already whole on screen
    for k in keys:
        if k["repeat"] or k["key"].upper() not in KEYS:
            continue
        question, answer = KEYS[k["key"].upper()]
        p = shown_pair(k["shown"], prompts_at)
        current = next((q for q in sorted(answers) if len(answers[q]) < 2), None)
        if p is None:
            refused["not_shown"] += 1
        elif p != current:
            assert current is None or p < current, f"pair {p} was on screen before the current pair {current}"
            refused["finished"] += 1
        else:
            landed_early += k.get("burst_extra", False)
            answers[p][question] = answer
    return answers, refused, landed_early


def wait_settled(page, timeout_s: float = 45.0) -> dict:
    """Until the page shows one pair whole (or the end) and the app has no answer in flight."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = page.evaluate("""() => ({d: window.__k3test.displayed(),
            done: !!document.querySelector('.st-key-all_done'),
            pending: (window.__k3evalPairInput || {pending: []}).pending.length})""")
        if state["pending"] == 0 and (state["done"] or state["d"]["images"]):
            return state
        time.sleep(0.05)
    dbg = page.evaluate("""() => { const s = window.__k3evalPairInput; return {want: s.want, shown: s.shown,
        css: s.style.textContent, raf: s.raf, boxes: [...document.querySelectorAll("[class*='st-key-pair_']")].map(b =>
        [b.className.match(/st-key-pair_\\S+/)[0], getComputedStyle(b).opacity,
         [...b.querySelectorAll("img")].map(i => [i.complete, i.naturalWidth, i.src.slice(-12)])]),
        text: document.body.innerText.slice(0, 600)}; }""")
    raise AssertionError(f"the page did not settle: {state} {dbg}")


def test_key_bursts_never_answer_a_pair_that_was_not_on_screen(browser, served):
    created, server, prompts_at, log = served
    rng = random.Random(20240611)
    ctx, page = open_voting(browser, server, created)
    start_voting(page)
    bursts = 0
    extra_marks: list[int] = []  # index in the key record of each burst key after the completing one
    for _ in range(3 * N_PAIRS):
        state = wait_settled(page)
        if state["done"]:
            break
        page.keyboard.press(rng.choice(FIRST_ROW))
        time.sleep(rng.uniform(0.15, 0.35))
        # The burst: the completing key, then 1-2 more at 0-100 ms intervals (double presses and next-pair keys).
        page.keyboard.press(rng.choice(SECOND_ROW))
        for _ in range(rng.choice((1, 2))):
            time.sleep(rng.uniform(0.0, 0.1))
            key = rng.choice(FIRST_ROW + SECOND_ROW + "ss11")
            page.keyboard.press(key)
            extra_marks.append(page.evaluate("window.__k3test.keys.length") - 1)
        bursts += 1
    wait_settled(page)
    page.wait_for_selector(".st-key-all_done")
    keys = page.evaluate("window.__k3test.keys")
    alerts = page.evaluate("window.__k3test.alerts")
    ctx.close()
    for i in extra_marks:
        keys[i]["burst_extra"] = True

    df = votes_frame(STUDY, created.db_url)
    answers, refused, landed_early = replay(keys, prompts_at)
    stored = {(int(r.position), r.question): r.answer for r in df.itertuples()}
    expected = {(p, q): a for p, qa in answers.items() for q, a in qa.items()}
    assert stored == expected  # no answer on a pair that was not on screen, none lost, none extra
    assert len(stored) == 2 * N_PAIRS and df.groupby(["item_id", "question"]).size().max() == 1
    n_refused = refused["finished"] + refused["not_shown"]
    assert bursts >= 30 and n_refused >= bursts // 2  # the bursts did press keys on finished pairs
    # Every refused key was said so on the page and logged by the server, one log line each.
    assert any("not counted" in a for a in alerts)
    logged = len(re.findall(r"answer not counted", log.read_text(errors="replace")))
    assert logged == n_refused
    print(f"{bursts} bursts over {N_PAIRS} pairs, {len(keys)} keys: {n_refused} refused "
          f"({refused['finished']} for a finished pair, {refused['not_shown']} with no pair whole on screen), "
          f"{landed_early} burst keys answered the next pair after it was whole on screen")


def test_a_key_pressed_as_the_pair_first_appears_is_counted(browser, served):
    created, server, prompts_at, log = served
    rng = random.Random(5)
    ctx, page = open_voting(browser, server, created)
    start_voting(page)
    page.wait_for_function("() => window.__k3test.displayed().images")
    delays = []
    for attempt in range(10):
        # A fresh page each time (a reload): the key goes down 0-200 ms after the pair first becomes visible.
        page.reload()
        page.wait_for_function("() => window.__k3test.displayed().images", polling="raf")
        shown = page.evaluate("window.__k3test.displayed()")
        delay = rng.uniform(0.0, 0.2)
        delays.append(delay)
        time.sleep(delay)
        key = (FIRST_ROW if attempt % 2 == 0 else SECOND_ROW)[attempt % 4]
        question, answer = KEYS[key.upper()]
        page.keyboard.press(key)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            df = votes_frame(STUDY, created.db_url)
            got = df[(df["position"] == shown["marker"]) & (df["question"] == question)]
            if len(got) and got["answer"].iloc[0] == answer:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"attempt {attempt}: key {key!r} pressed {delay * 1000:.0f} ms after pair "
                                 f"{shown['marker']} appeared was lost")
    ctx.close()
    assert "answer not counted" not in log.read_text(errors="replace")
    print(f"10 of 10 keys pressed {min(delays) * 1000:.0f}-{max(delays) * 1000:.0f} ms after a fresh page showed "
          "its pair were counted")


def test_metrics_endpoint_is_off_when_serving_a_study(served):
    _, server, _, _ = served
    with urllib.request.urlopen(f"{server.base}/_stcore/health", timeout=10) as r:
        assert r.read().strip() == b"ok"
    for path in ("/_stcore/metrics", "/_stcore/metrics/", "/_stcore/metrics?families=session_events_total"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{server.base}{path}", timeout=10)
        assert e.value.code == 404
