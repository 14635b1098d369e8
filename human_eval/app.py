"""The k3eval annotation app: blind side-by-side comparison of two images for one prompt.

UI only: who may see what and what counts as a vote are decided by `k3eval.sbs` (authenticate, next_item,
record_vote, ...); this script displays what those functions return and calls them. Start it with
`k3eval sbs serve NAME`, which sets K3EVAL_SBS_STUDY and K3EVAL_DB (docs/annotation_app.md).

Pages: sign-in (token from the link's `?token=` or typed), guideline (until the annotator has read it once),
voting (one item at a time, keys 1-4 and A/S/D/F, auto-advance), done, and the admin dashboard for the admin token.
Nothing on an annotator's page names a model, a file or the database: images are re-encoded and served by content
hash, and errors show their `public` text (the detail goes to the server log and the admin page).

Answers from the browser go through `pair_input.js` (keys and clicks), which sends with each answer the pair that
was whole on screen when the key went down; `record_vote(expect=...)` refuses it when that pair is no longer current.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import tempfile
import threading
import time
from pathlib import Path

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from k3eval.errors import UserError
from k3eval.sbs import (
    AccessDenied,
    Admin,
    Annotator,
    PairNotCurrent,
    StoreError,
    StoreUnavailable,
    StudyClosed,
    admin_overview,
    authenticate,
    export_votes,
    image_bytes,
    item_view,
    mark_guideline_seen,
    next_item,
    previous_item,
    progress,
    queue,
    record_vote,
)
from k3eval.sbs.images import DEFAULT_MAX_SIDE, DisplayCache
from k3eval.sbs.service import ANSWER_LABELS
from k3eval.sbs.throttle import SignInThrottle
from k3eval.stats import qc_rules

STUDY_ENV = "K3EVAL_SBS_STUDY"
DB_ENV = "K3EVAL_DB"
# One key per answer: the first question on the digits, the second on the home row (C and R are Streamlit's own).
ROW_KEYS = (("1", "2", "3", "4"), ("A", "S", "D", "F"))
BACK_KEY = "B"
HELP_KEY = "H"
CONTINUE_KEY = "Enter"

GUIDELINE_INTRO = "You will see a text prompt and two images made from it. For each pair, answer:"
# What to look at, per question key of k3eval.sbs (the question wording itself comes from k3eval.sbs).
QUESTION_HINTS = {
    "alignment": "Look at what the text asks for: objects, counts, colours, positions, style, written words. "
                 "Ignore how pretty the image is.",
    "quality": "Look at the images alone: sharpness, anatomy, artefacts, composition, realism or a consistent "
               "style. Ignore the text.",
}
GUIDELINE_ANSWERS = """
For each question choose **Left**, **Right**, **Equal** (both are about as good) or **Both bad** (neither is
acceptable). The sides are random, and there are no right answers except a few obvious check pairs: go with your
first impression, usually a few seconds per pair.
"""
GUIDELINE_END = """
The next pair appears as soon as every question is answered. `B` goes back to the previous pair to change an
answer, `H` shows this page again. You can also click the buttons. A key pressed before a pair is fully shown, or
for a pair you have already finished, is not counted (the page says so). Your answers are saved at once: close the
tab whenever you like and open your link again later to continue where you stopped.
"""

# Static styling only (no data is ever interpolated here); what is visible when belongs to pair_input.js. The
# prompt box scrolls from its first line; images fit the window with the buttons (--k3-image-height, set by
# pair_input.js); the header, the two images and each row of answer buttons stay side by side on a phone.
STYLE = """
<style>
[data-testid="stMainBlockContainer"] { padding-top: 0.8rem; padding-bottom: 1rem; }
header[data-testid="stHeader"] { height: 0; }
.st-key-k3_input { display: none; }
.st-key-prompt [data-testid="stText"] { display: block; max-height: 8.4em; overflow-y: auto;
  overscroll-behavior: contain; }
.st-key-prompt [data-testid="stText"], .st-key-prompt [data-testid="stText"] * { font-size: 1.25rem;
  line-height: 1.4; white-space: pre-wrap; overflow-wrap: anywhere; }
.st-key-left_image [data-testid="stFullScreenFrame"] > div, .st-key-right_image [data-testid="stFullScreenFrame"] > div,
.st-key-left_image [data-testid="stImage"], .st-key-right_image [data-testid="stImage"] { width: 100% !important; }
.st-key-left_image [data-testid="stImageContainer"], .st-key-right_image [data-testid="stImageContainer"] {
  display: flex; justify-content: center; width: 100%; }
.st-key-left_image img, .st-key-right_image img { max-height: var(--k3-image-height, 55vh); width: auto !important;
  max-width: 100%; object-fit: contain; }
.st-key-header [data-testid="stHorizontalBlock"], .st-key-images [data-testid="stHorizontalBlock"],
.st-key-answers [data-testid="stHorizontalBlock"] { flex-wrap: nowrap !important; }
.st-key-header [data-testid="stColumn"], .st-key-images [data-testid="stColumn"],
.st-key-answers [data-testid="stColumn"] { min-width: 0 !important; }
@media (max-width: 640px) {
  .st-key-prompt [data-testid="stText"], .st-key-prompt [data-testid="stText"] * { font-size: 1.05rem; }
  .st-key-answers > [data-testid="stLayoutWrapper"] > [data-testid="stHorizontalBlock"] { flex-direction: column;
    gap: 0.6rem; }
  .st-key-answers > [data-testid="stLayoutWrapper"] > [data-testid="stHorizontalBlock"] > [data-testid="stColumn"] {
    width: 100% !important; flex: 1 1 auto !important; }
  .st-key-answers [data-testid="stHorizontalBlock"] { gap: 0.35rem; }
  .st-key-answers button, .st-key-header button { padding: 0.25rem 0.2rem; min-height: 2.4rem; }
  .st-key-answers button p, .st-key-header button p { font-size: 0.85rem; }
  .st-key-header kbd, .st-key-answers code { display: none; }
  .st-key-header [data-testid="stColumn"]:not(:first-child) { flex: 0 0 auto !important; width: auto !important; }
}
</style>
"""
# Answers in the order of the buttons; ROW_KEYS[q][k] is the key of answer k of question q (sent to pair_input.js).
ANSWER_ORDER = tuple(ANSWER_LABELS)
PAIR_INPUT_JS = (Path(__file__).with_name("pair_input.js")).read_text(encoding="utf-8")
LOG = logging.getLogger("k3eval.sbs.app")
PAIR_INPUT = st.components.v2.component("k3eval_pair_input", js=PAIR_INPUT_JS)


# ---- configuration and shared resources ----------------------------------------------------------------------------
@st.cache_resource
def display_cache() -> DisplayCache:
    """One cache of display JPEGs per server process, shared by every session."""
    return DisplayCache()


def served_study() -> str | None:
    """The study this server serves: K3EVAL_SBS_STUDY (set by `k3eval sbs serve`), else the link's `study`."""
    return os.environ.get(STUDY_ENV) or st.query_params.get("study") or None


def db_url() -> str | None:
    return os.environ.get(DB_ENV) or None


GENERIC = "Something went wrong on the server. The study's organiser can see the details in the server log."
NOT_ON_SCREEN = ("That answer was not counted: no pair was fully on screen when the key was pressed (the page was "
                 "changing, or an image had not loaded yet). Press it again if you meant it.")
ALL_DONE_KEY = "That key was not counted: you have already answered every pair."


def server_log() -> logging.Logger:
    """The app's logger: the server's output (what `k3eval sbs serve` prints) gets errors with their detail and
    every answer that was not counted. One handler per process (the logger outlives the script's reruns). Not an
    st.cache_resource: callbacks call it, and a cached call can stop a callback half-way when a rerun is waiting."""
    if not LOG.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s k3eval-app %(levelname)s %(message)s"))
        LOG.addHandler(handler)
        LOG.setLevel(logging.INFO)
    return LOG


def describe(err: Exception) -> str:
    """A message for the page. An annotator gets the error's public text, which never names a path, a database URL
    or the study; the admin also gets the detail; the server log always does."""
    server_log().warning("%s: %s", type(err).__name__, err)
    text = err.public if isinstance(err, StoreError) else GENERIC
    if isinstance(st.session_state.get("who"), Admin):
        return f"{text} Detail: {err}"
    return text


def inert(text: str) -> str:
    """Text for st.error/st.info, which parse Markdown: every ASCII punctuation character is backslash-escaped
    (CommonMark), so links, emphasis, `:icon:` codes and HTML in a message show as typed."""
    return re.sub(r"([!-/:-@\[-`{-~])", r"\\\1", str(text))


def flash(kind: str, message: str) -> None:
    """Queue a message for the next run (callbacks run before the page is drawn)."""
    st.session_state.setdefault("flash", []).append((kind, message))


def show_flash() -> None:
    for kind, message in st.session_state.pop("flash", []):
        {"error": st.error, "warning": st.warning, "info": st.info}.get(kind, st.info)(inert(message))


def forget_user() -> None:
    for key in ("who", "token", "edit", "shown", "pairs", "prefetched", "reading_guideline"):
        st.session_state.pop(key, None)


# ---- sign-in ------------------------------------------------------------------------------------------------------
@st.cache_resource
def signin_throttle() -> SignInThrottle:
    """Refused sign-ins per browser session and per address, shared by every session of this server."""
    return SignInThrottle()


class Throttled(Exception):
    def __init__(self, wait: float):
        super().__init__(f"Too many sign-in attempts from this browser or network: wait {wait:.0f} s, then try again.")


def sign_in(token: str, study: str, throttle: SignInThrottle) -> None:
    """Authenticate once per browser session (a login row in the audit log; a refusal counted there and in the
    throttle, which turns attempts away for a growing time after repeated refusals)."""
    address = st.context.ip_address
    address = address if isinstance(address, str) and address else "local"  # None on localhost
    keys = [("session", st.session_state.setdefault("throttle_id", secrets.token_hex(8))), ("address", address)]
    wait = throttle.wait(keys)
    if wait > 0:
        raise Throttled(wait)
    try:
        who = authenticate(token, study, db_url(), source=address)
    except AccessDenied:
        if throttle.refused(keys) > 0:
            server_log().warning("sign-in refused again from %s: attempts are now delayed", address)
        raise
    throttle.accepted(keys)
    forget_user()
    st.session_state.who = who
    st.session_state.token = token
    if st.query_params.get("token") != token:
        # Keep the token in the address so that a refresh signs in again and resumes where the annotator was.
        st.query_params["token"] = token


def on_typed_token(study: str, throttle: SignInThrottle) -> None:
    token = (st.session_state.get("typed_token") or "").strip()
    if not token:
        flash("warning", "Enter the token from your personal link.")
        return
    try:
        sign_in(token, study, throttle)
    except Throttled as e:
        flash("error", str(e))
    except (UserError, SQLAlchemyError) as e:
        flash("error", describe(e))


def current_user(study: str):
    """The signed-in Annotator or Admin, or None. A token in the link signs in (again after a refresh); a refused
    one is taken out of the address, so that it is checked once, not on every rerun."""
    token = (st.query_params.get("token") or "").strip()
    who = st.session_state.get("who")
    if who is not None and (not token or token == st.session_state.get("token")):
        return who
    if token:
        try:
            sign_in(token, study, signin_throttle())
        except Throttled as e:
            st.error(inert(str(e)))
            return None
        except AccessDenied as e:
            forget_user()
            del st.query_params["token"]
            st.error(inert(describe(e)))
            return None
        return st.session_state.who
    return None


def login_page(study: str) -> None:
    st.title("Image comparison")
    st.write("Open your personal link, or paste the token it contains.")
    with st.form("login", border=False):
        st.text_input("Token", key="typed_token", type="password", placeholder="token from your link")
        st.form_submit_button("Sign in", key="sign_in", type="primary", on_click=on_typed_token,
                             args=(study, signin_throttle()))


# ---- annotator pages ----------------------------------------------------------------------------------------------
def on_guideline_read() -> None:
    try:
        st.session_state.who = mark_guideline_seen(st.session_state.who)
        st.session_state.reading_guideline = False
    except (UserError, SQLAlchemyError) as e:
        flash("error", describe(e))


def guideline_page(who, first_time: bool) -> None:
    st.title("Guideline")
    view = next_item(who) or previous_item(who)
    questions = view.questions if view is not None else ()
    lines = [GUIDELINE_INTRO, ""]
    for n, q in enumerate(questions, 1):
        lines.append(f"{n}. **{q.text}** {QUESTION_HINTS.get(q.key, '')}")
    st.markdown("\n".join(lines))
    st.markdown(GUIDELINE_ANSWERS)
    keys = [f"{', '.join(f'`{k}`' for k in ROW_KEYS[n])} answer question {n + 1} (left, right, equal, both bad)"
            for n in range(min(len(questions), len(ROW_KEYS)))]
    st.markdown("**Keyboard:** " + "; ".join(keys) + ". " + GUIDELINE_END)
    st.button("Start" if first_time else "Continue", key="start", type="primary", shortcut=CONTINUE_KEY,
              on_click=on_guideline_read)
    pair_input(None, active=False)


QUESTION_NAMES = {"alignment": "text match", "quality": "visual quality"}


def answer_text(question: str, answer: str) -> str:
    return f"Your answer {ANSWER_LABELS[answer]} ({QUESTION_NAMES[question]})"


def submit(position: int | None, question: str, answer: str, ms: int | None) -> None:
    """Record an answer for the pair at `position` (1-based, in this annotator's queue) as the page showed it:
    `record_vote` checks in its transaction that this pair is still the current one (or, while changing an earlier
    pair, that one), so an answer meant for a pair that was already finished never lands on the next one."""
    who = st.session_state.get("who")
    if not isinstance(who, Annotator):
        return
    what = answer_text(question, answer)
    if position is None:
        not_counted(who, "no pair whole on screen", question, answer)
        flash("warning", ALL_DONE_KEY if st.session_state.get("all_done") else NOT_ON_SCREEN)
        return
    item_id = st.session_state.get("pairs", {}).get(position)
    if item_id is None:
        not_counted(who, f"pair {position} unknown to this session", question, answer)
        flash("warning", f"{what} was not counted: that page was out of date. Press it again.")
        return
    expect = "answered" if st.session_state.get("edit") == item_id else "current"
    if ms is not None:
        seconds = ms / 1000.0
    else:
        shown = st.session_state.setdefault("shown", {})
        seconds = time.monotonic() - shown.get(item_id, time.monotonic())
    try:
        record_vote(who, item_id, question, answer, seconds, expect=expect)
    except PairNotCurrent as e:
        not_counted(who, f"pair {e.position} {e.reason}", question, answer)
        hint = " Use B to change an earlier answer." if e.reason == "finished" else ""
        flash("warning", f"{what} was not counted: pair {e.position} was already finished when it arrived." + hint
              if e.reason == "finished" else f"{what}: {e.public}")
    except AccessDenied as e:
        forget_user()
        flash("error", describe(e))
    except StudyClosed as e:
        flash("warning", describe(e))
    except (UserError, SQLAlchemyError) as e:
        flash("error", f"Your answer was NOT saved: {describe(e)}")


def not_counted(who, why: str, question: str, answer: str) -> None:
    server_log().info("answer not counted (%s): annotator %s, %s=%s", why, who.name, question, answer)


def input_lock() -> threading.Lock:
    """One lock per browser session around its answers. With Streamlit's fast reruns (the default) a new key starts a
    new script thread while the previous one may still be inside a callback: without the lock two answers of one
    session could be written in the opposite order from their keys. Created by the page body, before any callback."""
    return st.session_state.setdefault("input_lock", threading.Lock())


def on_answer(position: int, question: str, answer: str) -> None:
    """A button's own callback (no JavaScript: AppTest, or a browser where pair_input.js did not load). The button's
    key holds its pair's position, so a click on a button of a pair that was replaced still names that pair."""
    with input_lock():
        submit(position, question, answer, None)


NAV_ACTIONS = ("start", "continue", "back", "help")


def input_events(raw) -> list[dict]:
    """The well-formed events from pair_input.js, in the order the keys went down: answers (pair, question, answer,
    ms) and page keys (action, pair). The rest is dropped: the browser is not trusted."""
    out = []
    for ev in raw if isinstance(raw, list) else []:
        if not isinstance(ev, dict) or not _is_int(ev.get("seq")):
            continue
        pair = ev.get("pair")
        if pair is not None and not _is_int(pair):
            continue
        if ev.get("kind") == "answer" and ev.get("question") in QUESTION_NAMES and ev.get("answer") in ANSWER_ORDER:
            ms = ev.get("ms")
            out.append({"seq": ev["seq"], "kind": "answer", "pair": pair, "question": ev["question"],
                        "answer": ev["answer"], "ms": ms if _is_int(ms) and 0 <= ms <= 3_600_000 else None})
        elif ev.get("kind") == "nav" and ev.get("action") in NAV_ACTIONS:
            out.append({"seq": ev["seq"], "kind": "nav", "pair": pair, "action": ev["action"]})
    return sorted(out, key=lambda e: e["seq"])


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def on_input() -> None:
    """Events from pair_input.js: each once (the browser sends them again until acknowledged), in order."""
    result = st.session_state.get("k3_input")
    with input_lock():
        handle_events(input_events(result.get("input") if result is not None else None))


def handle_events(events: list[dict]) -> None:
    for ev in events:
        if ev["seq"] <= st.session_state.get("input_seq", 0):
            continue
        # Marked as handled first: a callback cut short by a rerun must never handle an event twice.
        st.session_state.input_seq = ev["seq"]
        if st.session_state.get("who") is None:
            continue  # signed out meanwhile (token revoked)
        if ev["kind"] == "answer":
            submit(ev["pair"], ev["question"], ev["answer"], ev["ms"])
        elif ev["action"] == "start":
            on_guideline_read()
        elif ev["action"] == "continue":
            on_continue()
        elif ev["action"] == "help":
            on_show_guideline()
        else:
            on_back(st.session_state.get("pairs", {}).get(ev["pair"]))


def pair_input(view, active: bool) -> None:
    """Mount pair_input.js (at the end of the page: its data arrives after the pair's elements). `active`: answer
    keys are taken (and answered "not counted" when no pair is whole on screen). The page's other keys press the
    Start / Continue / Previous / Guideline button that is on the page (pair_input.js knows their keys)."""
    input_lock()
    questions = [q.key for q in view.questions] if view is not None else []
    keys = {key: [q, a] for row, q in enumerate(questions[:len(ROW_KEYS)]) for key, a in zip(ROW_KEYS[row],
                                                                                           ANSWER_ORDER)}
    data = {"pair": view.position if view is not None else None, "active": active, "keys": keys,
            "ready": bool(st.session_state.get("input_ready")),
            "ack": st.session_state.get("input_seq", 0),
            "session": st.session_state.setdefault("input_session", secrets.token_hex(8))}
    # on_repair: pair_input.js asks for a rerun, which registers the pair's image files with Streamlit again.
    PAIR_INPUT(key="k3_input", data=data, on_input_change=on_input, on_repair_change=lambda: None,
               on_ready_change=on_ready)


def on_back(before: int | None) -> None:
    try:
        prev = previous_item(st.session_state.who, before=before)
    except (UserError, SQLAlchemyError) as e:
        flash("error", describe(e))
        return
    if prev is None:
        flash("info", "There is no earlier pair to change.")
        return
    st.session_state.edit = prev.item_id
    st.session_state.setdefault("shown", {})[prev.item_id] = time.monotonic()


def on_continue() -> None:
    st.session_state.pop("edit", None)


def on_show_guideline() -> None:
    st.session_state.reading_guideline = True


def show_image(who, content_id: str, key: str, label: str) -> None:
    with st.container(key=key):
        # The label is a constant ("Left"/"Right"): nothing about the image or its source reaches the page.
        st.markdown(f"**{label}**", text_alignment="center")
        raw = image_bytes(who, content_id, reencode=False)  # checks that this annotator may see this image
        st.image(display_cache().get(display_key(who, content_id), lambda: raw, DEFAULT_MAX_SIDE), width="stretch")


def display_key(who, content_id: str) -> str:
    return f"{who.db_url}|{content_id}"


def prefetch_following(who, view) -> None:
    """Warm the display cache with the pair after `view` in a background thread, so that the next pair appears
    without waiting for its decode and re-encode. Once per pair and session; uses only k3eval.sbs calls, which check
    that the images belong to this annotator."""
    done_for = st.session_state.setdefault("prefetched", set())
    if view.item_id in done_for:
        return
    done_for.add(view.item_id)
    cache, n_questions = display_cache(), len(view.questions)

    def work() -> None:
        try:
            entries = queue(who)
            following = [e for e in entries if e.position > view.position and len(e.answered) < n_questions]
            if not following:
                return
            nxt = item_view(who, following[0].item_id)
            for cid in (nxt.left, nxt.right):
                cache.get(display_key(who, cid), lambda cid=cid: image_bytes(who, cid, reencode=False),
                          DEFAULT_MAX_SIDE)
        except Exception:  # noqa: BLE001 - only a speed-up: the page itself fetches (and reports) what it shows
            return

    threading.Thread(target=work, name="k3eval-prefetch", daemon=True).start()


def header(done: int, assigned: int, view) -> None:
    with st.container(key="header"):
        left, mid, right = st.columns([6, 1.3, 1.3], vertical_alignment="center")
        with left, st.container(key="progress"):
            st.progress(done / assigned if assigned else 0.0)
            st.text(f"{done} / {assigned} done")
        with mid:
            before = view.item_id if view is not None else None
            st.button("Previous", key="back", shortcut=BACK_KEY, on_click=on_back, args=(before,), width="stretch",
                      help="Go back to the previous pair to change an answer")
        with right:
            st.button("Guideline", key="guideline", shortcut=HELP_KEY, on_click=on_show_guideline, width="stretch")


def voting_page(who) -> None:
    edit = st.session_state.get("edit")
    mode = "edit" if edit is not None else "current"
    view = item_view(who, edit) if edit is not None else next_item(who)
    done, assigned = progress(who)
    header(done, assigned, view)
    with st.container(key="messages"):
        # Always there, empty or not: a message coming or going must not move the pair to another place in the
        # page (Streamlit would then build the pair's container again, element by element).
        show_flash()
    st.session_state.all_done = view is None
    if view is None:
        with st.container(key="all_done"):
            st.success(f"All done: you answered all {assigned} pairs. Thank you! You can close this tab.")
        pair_input(None, active=True)  # late keys are answered "not counted", never silently dropped
        return
    if view.closed:
        with st.container(key="closed"):
            st.info(StudyClosed.public_text)
        pair_input(None, active=False)
        return
    st.session_state.setdefault("shown", {}).setdefault(view.item_id, time.monotonic())
    st.session_state.setdefault("pairs", {})[view.position] = view.item_id
    if mode == "edit":
        with st.container(key="editing"):
            # One row, so that the pair and its buttons still fit the screen below it.
            note, go = st.columns([6, 1.2], vertical_alignment="center")
            note.info(f"You are changing your answers for pair {view.position} of {view.total}. Click an answer "
                      "to replace it, then Continue.")
            go.button("Continue", key="continue", type="primary", shortcut=CONTINUE_KEY, on_click=on_continue,
                      width="stretch")
    # Everything of one pair sits in one container named after its position: pair_input.js shows it only once it
    # is whole, and an answer names the pair whose container was on screen.
    with st.container(key=f"pair_{view.position}"):
        with st.container(key="prompt"):
            st.text(view.prompt)  # plain text: never parsed as Markdown or HTML
        with st.container(key="images"):
            cols = st.columns(2, gap="medium")
            with cols[0]:
                show_image(who, view.left, "left_image", "Left")
            with cols[1]:
                show_image(who, view.right, "right_image", "Right")
        # The questions side by side under the images, so pair and buttons fit one laptop screen without scrolling.
        with st.container(key="answers"):
            qcols = st.columns(len(view.questions), gap="large")
            for row, (qcol, q) in enumerate(zip(qcols, view.questions)):
                keys = ROW_KEYS[row] if row < len(ROW_KEYS) else (None,) * len(q.answers)
                with qcol, st.container(key=f"question_{q.key}"):
                    st.markdown(f"**{q.text}**")
                    buttons = st.columns(len(q.answers), gap="small")
                    chosen = view.answers.get(q.key)
                    for col, (answer, label), key in zip(buttons, q.answers, keys):
                        # The key is shown on the button but handled by pair_input.js, not as a Streamlit shortcut
                        # (which would press whatever button the server registered last).
                        col.button(f"{label} `{key}`" if key else label, key=f"ans_{view.position}_{q.key}_{answer}",
                                   type="primary" if chosen == answer else "secondary", width="stretch",
                                   on_click=on_answer, args=(view.position, q.key, answer))
        with st.container(key="item_marker"):
            st.caption(f"Pair {view.position} of {view.total}")
    pair_input(view, active=True)
    if mode == "current":
        prefetch_following(who, view)


def on_ready() -> None:
    st.session_state.input_ready = True


def loading_page() -> None:
    """Until pair_input.js runs in this browser (0.1-0.4 s, up to about 1 s in a fresh browser) the page has no pair
    and no button with a key: Streamlit's own shortcuts drop some presses that come as a page first appears, and a
    pair shown before the module could see it would take keys nobody handles. The module says "ready" as it starts
    (AppTest, which runs no JavaScript, sets `input_ready` itself)."""
    st.title("Image comparison")
    st.caption("Loading…")
    pair_input(None, active=False)


def annotator_page(who) -> None:
    if not st.session_state.get("input_ready"):
        loading_page()
        return
    first_time = not who.guideline_seen
    if first_time or st.session_state.get("reading_guideline"):
        show_flash()
        guideline_page(who, first_time)
        return
    voting_page(who)


# ---- admin page ---------------------------------------------------------------------------------------------------
def export_data(admin: Admin, fmt: str) -> bytes:
    """The votes frame as csv or parquet bytes, through `export_votes`, which writes the export to the audit log
    (the file goes to a private temporary folder and is removed once read)."""
    with tempfile.TemporaryDirectory(prefix="k3eval-export-") as tmp:
        return export_votes(admin, Path(tmp) / f"votes.{fmt}").read_bytes()


ADMIN_COLUMNS = {
    "name": st.column_config.TextColumn("annotator"),
    "done": st.column_config.NumberColumn("done", help="pairs with every question answered"),
    "assigned": st.column_config.NumberColumn("assigned"),
    "votes": st.column_config.NumberColumn("votes"),
    "gold_accuracy": st.column_config.NumberColumn("gold accuracy", format="percent"),
    "gold_total": st.column_config.NumberColumn("gold votes"),
    "repeat_agreement": st.column_config.NumberColumn("repeat agreement", format="percent",
                                                      help="same choice on a pair shown again with sides swapped"),
    "median_seconds": st.column_config.NumberColumn("median s", format="%.1f"),
    "left_share": st.column_config.NumberColumn("left share", format="percent", help="left / (left + right)"),
    "left_bias_p": st.column_config.NumberColumn("left bias p (Holm)", format="%.3f"),
    "longest_run": st.column_config.NumberColumn("longest run", help="identical answers in a row"),
    "flags": st.column_config.TextColumn("flags"),
    "last_vote": st.column_config.TextColumn("last vote (UTC)"),
}
# the rules in words come from the one rule set that `sbs status`, `sbs stats` and the report use
FLAG_HELP = ("**Flags** (for a look, never an automatic exclusion): "
             + "; ".join(f"`{code}` {rule}" for code, rule in qc_rules().items())
             + "; `revoked` the token was revoked.")


def admin_page(admin: Admin) -> None:
    st.title("Study dashboard")
    show_flash()
    ov = admin_overview(admin)
    state = f"closed since {ov.closed[:19].replace('T', ' ')} UTC (no more votes)" if ov.closed else "open"
    st.text(f"Study: {admin.study} ({state})")
    cols = st.columns(5)
    cols[0].metric("Items", ov.n_items)
    cols[1].metric("Annotators", len(ov.annotators))
    cols[2].metric("Overlap", ov.overlap)
    cols[3].metric("Votes", f"{ov.votes} / {ov.expected_votes}")
    cols[4].metric("Logins / exports", f"{ov.logins} / {ov.exports}")
    st.progress(ov.votes / ov.expected_votes if ov.expected_votes else 0.0)
    frame = ov.frame()
    if len(frame):
        frame = frame[[c for c in ADMIN_COLUMNS if c in frame.columns]]
        frame["last_vote"] = [v[:19].replace("T", " ") if isinstance(v, str) else None for v in frame["last_vote"]]
    with st.container(key="admin_table"):
        st.dataframe(frame, hide_index=True, width="stretch", column_config=ADMIN_COLUMNS)
    st.markdown(FLAG_HELP)
    st.subheader("Export votes")
    c1, c2, c3 = st.columns([1, 1, 4])
    c1.download_button("Download CSV", data=lambda: export_data(admin, "csv"), file_name="votes.csv",
                       mime="text/csv", key="export_csv", on_click="ignore")
    c2.download_button("Download Parquet", data=lambda: export_data(admin, "parquet"), file_name="votes.parquet",
                       mime="application/vnd.apache.parquet", key="export_parquet", on_click="ignore")
    c3.button("Refresh", key="refresh")  # a rerun re-reads the database: nothing here is cached


# ---- page ---------------------------------------------------------------------------------------------------------
def unavailable_page(err: Exception) -> None:
    st.title("Image comparison")
    with st.container(key="db_error"):
        st.error("The study cannot be reached right now. Answers you already gave are saved.")
        st.text(describe(err))
    st.button("Try again", key="retry", type="primary")


def main() -> None:
    st.set_page_config(page_title="Image comparison", layout="wide", initial_sidebar_state="collapsed")
    st.html(STYLE)
    study = served_study()
    if not study:
        st.error("No study is configured: start the app with `k3eval sbs serve NAME`.")
        return
    try:
        who = current_user(study)
        if who is None:
            show_flash()
            login_page(study)
        elif isinstance(who, Admin):
            admin_page(who)
        else:
            annotator_page(who)
    except AccessDenied as e:
        forget_user()
        st.error(inert(describe(e)))
        login_page(study)
    except (StoreUnavailable, SQLAlchemyError) as e:
        unavailable_page(e)
    except UserError as e:
        st.error(inert(describe(e)))


main()
