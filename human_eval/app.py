"""The k3eval annotation app: blind side-by-side comparison of two images for one prompt.

UI only: who may see what and what counts as a vote are decided by `k3eval.sbs` (authenticate, next_item,
record_vote, ...); this script displays what those functions return and calls them. Start it with
`k3eval sbs serve NAME`, which sets K3EVAL_SBS_STUDY and K3EVAL_DB (docs/annotation_app.md).

Pages: sign-in (token from the link's `?token=` or typed), guideline (until the annotator has read it once),
voting (one item at a time, keys 1-4 and A/S/D/F, auto-advance), done, and the admin dashboard for the admin token.
Nothing on an annotator's page names a model or a file: images are re-encoded and served by content hash.
"""

from __future__ import annotations

import os
import re
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
    StoreUnavailable,
    StudyNotFound,
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
answer, `H` shows this page again. You can also click the buttons. Your answers are saved at once: close the tab
whenever you like and open your link again later to continue where you stopped.
"""

# Static styling only (no data is ever interpolated here): large prompt, images that fit the screen with the buttons.
STYLE = """
<style>
[data-testid="stMainBlockContainer"] { padding-top: 1.2rem; padding-bottom: 1rem; }
header[data-testid="stHeader"] { height: 0; }
.st-key-prompt [data-testid="stText"], .st-key-prompt [data-testid="stText"] span { font-size: 1.35rem;
  line-height: 1.4; white-space: pre-wrap; overflow-wrap: anywhere; }
.st-key-prompt [data-testid="stText"] { max-height: 5.6em; overflow-y: auto; }
.st-key-left_image [data-testid="stFullScreenFrame"] > div, .st-key-right_image [data-testid="stFullScreenFrame"] > div,
.st-key-left_image [data-testid="stImage"], .st-key-right_image [data-testid="stImage"] { width: 100% !important; }
.st-key-left_image [data-testid="stImageContainer"], .st-key-right_image [data-testid="stImageContainer"] {
  display: flex; justify-content: center; width: 100%; }
.st-key-left_image img, .st-key-right_image img { max-height: 58vh; width: auto !important; max-width: 100%;
  object-fit: contain; }
</style>
"""


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


# Shown instead of the store's own refusal texts, which name the study: a study name chosen after the models
# ("k3-vs-sdxl") must not reach someone without a valid token, nor an annotator.
REFUSED = ("This link or token is not valid (unknown, revoked, or for another study). Ask the study's organiser for "
           "your personal link.")
NO_STUDY = "This study is not available on this server. Ask the study's organiser for the right link."


def describe(err: Exception) -> str:
    """A message for a person. Store errors already are, except the ones that would name the study; a raw driver
    error is not shown (it may hold paths)."""
    if isinstance(err, AccessDenied):
        return REFUSED
    if isinstance(err, StudyNotFound):
        return NO_STUDY
    if isinstance(err, UserError):
        return str(err)
    return f"the vote database failed ({type(err).__name__}); try again in a moment"


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
    for key in ("who", "token", "edit", "shown", "prefetched", "reading_guideline"):
        st.session_state.pop(key, None)


# ---- sign-in ------------------------------------------------------------------------------------------------------
def sign_in(token: str, study: str) -> None:
    """Authenticate once per browser session (each call writes a login row to the audit log)."""
    who = authenticate(token, study, db_url())
    forget_user()
    st.session_state.who = who
    st.session_state.token = token
    if st.query_params.get("token") != token:
        # Keep the token in the address so that a refresh signs in again and resumes where the annotator was.
        st.query_params["token"] = token


def on_typed_token(study: str) -> None:
    token = (st.session_state.get("typed_token") or "").strip()
    if not token:
        flash("warning", "Enter the token from your personal link.")
        return
    try:
        sign_in(token, study)
    except (UserError, SQLAlchemyError) as e:
        flash("error", describe(e))


def current_user(study: str):
    """The signed-in Annotator or Admin, or None. A token in the link signs in (again after a refresh)."""
    token = (st.query_params.get("token") or "").strip()
    who = st.session_state.get("who")
    if who is not None and (not token or token == st.session_state.get("token")):
        return who
    if token:
        try:
            sign_in(token, study)
        except AccessDenied as e:
            forget_user()
            st.error(inert(describe(e)))
            return None
        return st.session_state.who
    return None


def login_page(study: str) -> None:
    st.title("Image comparison")
    st.write("Open your personal link, or paste the token it contains.")
    with st.form("login", border=False):
        st.text_input("Token", key="typed_token", type="password", placeholder="token from your link")
        st.form_submit_button("Sign in", key="sign_in", type="primary", on_click=on_typed_token, args=(study,))


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


def on_answer(item_id: int, question: str, answer: str, mode: str) -> None:
    """Record one answer inside the button's callback, so the page is redrawn only after the commit."""
    who = st.session_state.get("who")
    if who is None:
        return
    try:
        if mode == "edit":
            if st.session_state.get("edit") != item_id:
                return  # a click on a page that was already replaced
        else:
            view = item_view(who, item_id)
            if view.complete:
                # A key pressed while the next pair was loading still targets the pair just finished: do not let it
                # overwrite a finished answer (use B to change an answer on purpose).
                flash("warning", "That key arrived before the next pair was shown, so it was not counted.")
                return
        shown = st.session_state.setdefault("shown", {})
        seconds = time.monotonic() - shown.get(item_id, time.monotonic())
        record_vote(who, item_id, question, answer, seconds)
    except AccessDenied as e:
        forget_user()
        flash("error", describe(e))
    except (UserError, SQLAlchemyError) as e:
        flash("error", f"Your answer was NOT saved: {describe(e)}")


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
    left, mid, right = st.columns([6, 1.2, 1.2], vertical_alignment="center")
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
    show_flash()
    if view is None:
        with st.container(key="all_done"):
            st.success(f"All done: you answered all {assigned} pairs. Thank you! You can close this tab.")
        return
    st.session_state.setdefault("shown", {}).setdefault(view.item_id, time.monotonic())
    if mode == "edit":
        with st.container(key="editing"):
            # One row, so that the pair and its buttons still fit the screen below it.
            note, go = st.columns([6, 1.2], vertical_alignment="center")
            note.info(f"You are changing your answers for pair {view.position} of {view.total}. Click an answer "
                      "to replace it, then Continue.")
            go.button("Continue", key="continue", type="primary", shortcut=CONTINUE_KEY, on_click=on_continue,
                      width="stretch")
    with st.container(key="prompt"):
        st.text(view.prompt)  # plain text: never parsed as Markdown or HTML
    cols = st.columns(2, gap="medium")
    with cols[0]:
        show_image(who, view.left, "left_image", "Left")
    with cols[1]:
        show_image(who, view.right, "right_image", "Right")
    # The questions sit side by side under the images, so pair and buttons fit one laptop screen without scrolling.
    qcols = st.columns(len(view.questions), gap="large")
    for row, (qcol, q) in enumerate(zip(qcols, view.questions)):
        keys = ROW_KEYS[row] if row < len(ROW_KEYS) else (None,) * len(q.answers)
        with qcol, st.container(key=f"question_{q.key}"):
            st.markdown(f"**{q.text}**")
            buttons = st.columns(len(q.answers))
            chosen = view.answers.get(q.key)
            for col, (answer, label), key in zip(buttons, q.answers, keys):
                col.button(label, key=f"ans_{q.key}_{answer}", shortcut=key,
                           type="primary" if chosen == answer else "secondary", width="stretch",
                           on_click=on_answer, args=(view.item_id, q.key, answer, mode))
    with st.container(key="item_marker"):
        st.caption(f"Pair {view.position} of {view.total}")
    if mode == "current":
        prefetch_following(who, view)


def annotator_page(who) -> None:
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
    st.text(f"Study: {admin.study}")
    show_flash()
    ov = admin_overview(admin)
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
