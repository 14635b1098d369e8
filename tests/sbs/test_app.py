"""The annotation app run headless with streamlit.testing.v1.AppTest: sign-in, guideline, voting, resume, changing
an answer, admin page, refused tokens, inert prompts, and a database that is locked or gone."""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path

import pytest
import streamlit as st
from sqlalchemy import select
from streamlit.testing.v1 import AppTest

from k3eval.sbs import authenticate, create_study, dispose_engines, queue, votes_frame

APP = Path(__file__).resolve().parents[2] / "human_eval" / "app.py"
STUDY = "alpha-vs-beta"


@pytest.fixture(autouse=True)
def fresh_server_state():
    """The app's shared resources (display cache, sign-in throttle) live for a server process; AppTest runs every
    test in this one, so each test starts from fresh ones."""
    st.cache_resource.clear()
    yield
    st.cache_resource.clear()


@pytest.fixture
def study(tmp_path, two_runs, monkeypatch):
    """A study of two runs (6 prompts x 2 samples, one prompt full of HTML/Markdown), two annotators seeing every
    item, served to the app through the environment as `k3eval sbs serve` does."""
    db = f"sqlite:///{tmp_path / 'votes.db'}"
    created = create_study(STUDY, two_runs, ["ann-a", "ann-b"], overlap=2, gold=0.1, repeats=0.1, seed=3, db_url=db)
    monkeypatch.setenv("K3EVAL_SBS_STUDY", STUDY)
    monkeypatch.setenv("K3EVAL_DB", db)
    yield created
    dispose_engines()


@pytest.fixture
def study_any_db(db_url, two_runs, monkeypatch):
    """The same study on SQLite and on the session's PostgreSQL server (conftest's `db_url`)."""
    created = create_study(STUDY, two_runs, ["ann-a", "ann-b"], overlap=2, gold=0.1, repeats=0.1, seed=3,
                           db_url=db_url)
    monkeypatch.setenv("K3EVAL_SBS_STUDY", STUDY)
    monkeypatch.setenv("K3EVAL_DB", db_url)
    return created


def app(token: str | None = None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=60)
    # What pair_input.js says as it starts in a browser (AppTest runs no JavaScript); tested in the browser tests.
    at.session_state["input_ready"] = True
    if token is not None:
        at.query_params["token"] = token
    return at.run()


def texts(at: AppTest) -> list[str]:
    return [t.value for t in at.text]


def page_strings(at: AppTest) -> list[str]:
    """Every string an annotator's page shows or links (text, Markdown, captions, labels, image URLs)."""
    out = texts(at)
    for kind in (at.markdown, at.caption, at.title, at.info, at.success, at.warning, at.error):
        out += [str(e.value) for e in kind]
    out += [b.label for b in at.button]
    for img in at.image:
        out += list(img.value) + [str(c) for c in img.captions]
    return out


def pair_label(at: AppTest) -> str:
    return next(c.value for c in at.caption if c.value.startswith("Pair "))


def ans(at: AppTest, question: str, answer: str):
    """The answer button of the pair on the page (its key names the pair: ans_<position>_<question>_<answer>)."""
    found = [b for b in at.button if re.fullmatch(rf"ans_\d+_{question}_{answer}", b.key or "")]
    assert len(found) == 1, [b.key for b in at.button]
    return found[0]


def start_voting(token: str) -> AppTest:
    at = app(token)
    assert at.title[0].value == "Guideline"
    at.button(key="start").click().run()
    return at


def answer(at: AppTest, alignment: str, quality: str) -> AppTest:
    ans(at, "alignment", alignment).click().run()
    return ans(at, "quality", quality).click().run()


def my_votes(study, name: str):
    df = votes_frame(STUDY, study.db_url)
    return df[df["annotator"] == name]


def test_token_from_link_shows_guideline_then_first_pair(study):
    at = app(study.tokens["ann-a"])
    assert not at.exception
    assert at.title[0].value == "Guideline"
    assert "Which image matches the text better?" in " ".join(m.value for m in at.markdown)
    assert not [b for b in at.button if b.key.startswith("ans_")]  # no voting before the guideline
    at.button(key="start").click().run()
    assert not at.exception
    n = len(queue(authenticate(study.tokens["ann-a"], STUDY, study.db_url, log=False)))
    assert f"0 / {n} done" in texts(at)
    assert pair_label(at) == f"Pair 1 of {n}"
    assert len(at.image) == 2
    assert authenticate(study.tokens["ann-a"], STUDY, study.db_url, log=False).guideline_seen


def test_nothing_takes_a_key_before_the_browser_handles_keys(study):
    at = AppTest.from_file(str(APP), default_timeout=60)  # no input_ready: pair_input.js has not said it runs
    at.query_params["token"] = study.tokens["ann-a"]
    at.run()
    assert not at.exception
    assert at.title[0].value == "Image comparison" and any("Loading" in c.value for c in at.caption)
    assert not at.image and not at.button  # no pair, no Start, no button with a key


def test_typed_token_signs_in_and_keeps_it_in_the_address(study):
    at = app()
    assert at.title[0].value == "Image comparison"
    at.text_input(key="typed_token").input(study.tokens["ann-b"])
    at.button(key="sign_in").click().run()
    assert not at.exception
    assert at.title[0].value == "Guideline"
    assert at.query_params["token"] == [study.tokens["ann-b"]] or at.query_params["token"] == study.tokens["ann-b"]


@pytest.mark.parametrize("kind", ["unknown", "revoked", "other_study"])
def test_refused_tokens_never_reach_the_items(study, two_runs, kind):
    from k3eval.sbs import revoke

    if kind == "unknown":
        token = "not-a-real-token"
    elif kind == "revoked":
        revoke(STUDY, "ann-b", study.db_url)
        token = study.tokens["ann-b"]
    else:
        other = create_study("another-study", two_runs, 1, overlap=1, db_url=study.db_url)
        token = other.tokens["annotator-01"]
    at = app(token)
    assert not at.exception
    assert any("not valid" in e.value for e in at.error)
    assert not at.image and not [b for b in at.button if b.key.startswith("ans_")]
    assert at.text_input(key="typed_token")  # the sign-in form is offered instead
    assert not [s for s in page_strings(at) if STUDY in s]  # the study name may name the models


def test_revoked_while_voting_signs_out_without_naming_the_study(study):
    from k3eval.sbs import revoke

    at = start_voting(study.tokens["ann-a"])
    revoke(STUDY, "ann-a", study.db_url)
    ans(at, "alignment", "left").click().run()
    assert not at.exception
    assert any("not valid" in e.value for e in at.error)
    assert not at.image and len(my_votes(study, "ann-a")) == 0
    assert not [s for s in page_strings(at) if STUDY in s]


def test_votes_are_recorded_in_callbacks_and_the_next_pair_follows(study_any_db):
    study = study_any_db
    at = start_voting(study.tokens["ann-a"])
    first = pair_label(at)
    ans(at, "alignment", "left").click().run()
    assert pair_label(at) == first  # one question answered: the pair stays
    assert ans(at, "alignment", "left").proto.type == "primary"
    assert list(my_votes(study, "ann-a")["answer"]) == ["left"]
    ans(at, "quality", "equal").click().run()
    assert pair_label(at).startswith("Pair 2 of")
    v = my_votes(study, "ann-a")
    assert sorted(zip(v["question"], v["answer"])) == [("alignment", "left"), ("quality", "equal")]
    assert (v["seconds"] >= 0).all()
    # The same button fired twice (a double click or a rerun) leaves one vote.
    ans(at, "alignment", "right").click().run()
    ans(at, "alignment", "right").click().run()
    v = my_votes(study, "ann-a")
    assert len(v) == 3 and v.groupby(["item_id", "question"]).size().max() == 1


def test_resume_in_a_new_session_at_the_first_open_pair(study_any_db):
    study = study_any_db
    at = start_voting(study.tokens["ann-a"])
    answer(at, "left", "left")
    answer(at, "right", "both_bad")
    ans(at, "alignment", "equal").click().run()  # pair 3 half answered
    # A refresh, a closed tab or a server restart: a new session with only the link.
    dispose_engines()
    again = app(study.tokens["ann-a"])
    assert not again.exception
    assert again.title == [] or again.title[0].value != "Guideline"  # guideline already read
    assert pair_label(again).startswith("Pair 3 of")
    assert any(t.endswith("done") and t.startswith("2 / ") for t in texts(again))
    assert ans(again, "alignment", "equal").proto.type == "primary"
    assert ans(again, "quality", "equal").proto.type == "secondary"


def test_changing_the_previous_answer(study):
    at = start_voting(study.tokens["ann-a"])
    answer(at, "left", "left")
    assert pair_label(at).startswith("Pair 2 of")
    at.button(key="back").click().run()
    assert pair_label(at).startswith("Pair 1 of")
    assert any("changing your answers" in i.value for i in at.info)
    assert ans(at, "alignment", "left").proto.type == "primary"
    ans(at, "alignment", "right").click().run()
    assert pair_label(at).startswith("Pair 1 of")  # stays until Continue
    v = my_votes(study, "ann-a").set_index("question")
    assert v.loc["alignment", "answer"] == "right" and v.loc["alignment", "changes"] == 1
    assert v.loc["quality", "answer"] == "left" and len(v) == 2
    at.button(key="continue").click().run()
    assert pair_label(at).startswith("Pair 2 of")


def test_whole_queue_prompts_inert_and_no_model_revealed(study, two_runs):
    at = start_voting(study.tokens["ann-b"])
    n = len(queue(authenticate(study.tokens["ann-b"], STUDY, study.db_url, log=False)))
    secrets = ["model-alpha", "model-beta", "gen-alpha", "gen-beta", "<gold", str(two_runs["model-alpha"].parent)]
    seen_xss = False
    for pos in range(1, n + 1):
        assert pair_label(at) == f"Pair {pos} of {n}"
        prompt = texts(at)[1]
        if "<script>" in prompt:
            seen_xss = True
            # Shown verbatim as plain text; no Markdown element carries it (so no link, no HTML).
            assert prompt.startswith("<script>alert('x')</script> [click](http://evil.example) **bold** ünïcödé")
            assert not any("evil.example" in m.value or "<script" in m.value for m in at.markdown)
        strings = page_strings(at)
        assert not [s for s in strings for secret in secrets if secret in s]
        # Served by content hash (AppTest's media prefix is /mock/media), with no caption and no alt text.
        assert all(re.fullmatch(r"(/mock)?/media/[0-9a-f]+\.jpg", u) for img in at.image for u in img.value)
        assert all(not i.caption and not i.HasField("alt") for img in at.image for i in img.proto.imgs)
        answer(at, "left", "right")
    assert seen_xss
    assert any("All done" in s.value for s in at.success)
    assert len(my_votes(study, "ann-b")) == 2 * n


def test_admin_page_shows_progress_and_export(study):
    at = start_voting(study.tokens["ann-a"])
    answer(at, "left", "left")
    admin = app(study.admin_token)
    assert not admin.exception
    assert admin.title[0].value == "Study dashboard"
    table = admin.dataframe[0].value
    assert sorted(table["name"]) == ["ann-a", "ann-b"]
    row = table.set_index("name").loc["ann-a"]
    assert row["done"] == 1 and row["votes"] == 2 and row["assigned"] > 1
    assert {b.label for b in admin.get("download_button")} == {"Download CSV", "Download Parquet"}
    # An annotator's token never opens the dashboard.
    other = app(study.tokens["ann-b"])
    assert not other.dataframe and other.title[0].value == "Guideline"


def no_server_detail(at: AppTest, tmp_path) -> None:
    """Nothing on the page names a server path, the database URL or the study."""
    for text in page_strings(at):
        for secret in (str(tmp_path), "sqlite", "votes.db", STUDY):
            assert secret not in text, (secret, text)


def test_missing_database_gives_a_message_not_a_traceback(study, tmp_path, caplog):
    at = start_voting(study.tokens["ann-a"])
    admin = app(study.admin_token)
    dispose_engines()
    for suffix in ("", "-wal", "-shm"):  # the database file is deleted under the running app
        (tmp_path / f"votes.db{suffix}").unlink(missing_ok=True)
    ans(at, "alignment", "left").click().run()
    assert not at.exception
    assert any("cannot be reached" in e.value for e in at.error)
    assert any("not found" in t for t in texts(at))
    assert at.button(key="retry")
    no_server_detail(at, tmp_path)
    # The server log and the admin's page have what the organiser needs.
    assert any(str(tmp_path / "votes.db") in r.getMessage() for r in caplog.records if r.name == "k3eval.sbs.app")
    admin.run()
    assert any(str(tmp_path / "votes.db") in t for t in texts(admin))


def test_locked_database_gives_a_message_and_keeps_the_pair(study, tmp_path):
    at = start_voting(study.tokens["ann-a"])
    before = pair_label(at)
    con = sqlite3.connect(tmp_path / "votes.db", timeout=1, isolation_level=None)
    con.execute("BEGIN IMMEDIATE")  # another writer holds the lock longer than the store's busy timeout
    try:
        t0 = time.monotonic()
        ans(at, "alignment", "left").click().run(timeout=60)
        assert time.monotonic() - t0 >= 4.0  # it waited for the lock first
    finally:
        con.execute("ROLLBACK")
        con.close()
    assert not at.exception
    assert any("NOT saved" in e.value and "busy" in e.value for e in at.error)
    assert pair_label(at) == before
    assert ans(at, "alignment", "left").proto.type == "secondary"
    assert len(my_votes(study, "ann-a")) == 0
    ans(at, "alignment", "left").click().run()  # once the lock is gone the same key works
    assert len(my_votes(study, "ann-a")) == 1


def test_a_key_arriving_after_the_pair_is_finished_is_not_counted(study):
    at = start_voting(study.tokens["ann-a"])
    ans(at, "alignment", "left").click().run()
    # Two presses reach the server in one rerun, both bound to pair 1 as it was drawn: the first finishes the pair,
    # the second (meant for the next pair, pressed before it appeared) must not overwrite the finished answer.
    ans(at, "quality", "left").click()
    ans(at, "quality", "right").click()
    at.run()
    assert not at.exception
    assert pair_label(at).startswith("Pair 2 of")
    assert any("not counted" in w.value for w in at.warning)
    v = my_votes(study, "ann-a").set_index("question")
    assert v.loc["quality", "answer"] == "left" and v.loc["quality", "changes"] == 0


def test_database_missing_at_sign_in(study, tmp_path, monkeypatch):
    monkeypatch.setenv("K3EVAL_DB", f"sqlite:///{tmp_path / 'no-such.db'}")
    at = app(study.tokens["ann-a"])
    assert not at.exception
    assert any("cannot be reached" in e.value for e in at.error)
    assert any("not found" in t for t in texts(at))
    assert not (tmp_path / "no-such.db").exists()  # the app never creates an empty database
    no_server_detail(at, tmp_path)


def test_read_only_database_names_no_path(study, tmp_path):
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    at = start_voting(study.tokens["ann-a"])
    dispose_engines()

    def read_only(dbapi_conn, _record):  # what a read-only file gives (root ignores file modes)
        dbapi_conn.execute("PRAGMA query_only = ON")

    event.listen(Engine, "connect", read_only)
    try:
        ans(at, "alignment", "left").click().run()
    finally:
        event.remove(Engine, "connect", read_only)
        dispose_engines()
    assert not at.exception
    assert any("NOT saved" in e.value and "read-only" in e.value.replace("\\", "") for e in at.error)
    no_server_detail(at, tmp_path)
    assert len(my_votes(study, "ann-a")) == 0


def test_closed_study_takes_no_answer_and_says_so(study):
    from k3eval.sbs import set_closed

    at = start_voting(study.tokens["ann-a"])
    set_closed(STUDY, True, study.db_url)
    ans(at, "alignment", "left").click().run()  # a button of the page drawn before the study was closed
    assert not at.exception
    assert any("closed" in w.value for w in at.warning)
    assert any("closed" in i.value for i in at.info) and not at.image
    assert not [b for b in at.button if b.key.startswith("ans_")]
    assert len(my_votes(study, "ann-a")) == 0
    admin = app(study.admin_token)
    assert any("closed since" in t for t in texts(admin))
    set_closed(STUDY, False, study.db_url)
    at.run()
    assert len(at.image) == 2
    ans(at, "alignment", "left").click().run()
    assert len(my_votes(study, "ann-a")) == 1


def test_repeated_wrong_tokens_are_slowed_down_and_counted_on_one_row(study):
    from k3eval.sbs.store import AuditLog, get_engine, session

    at = app()
    messages = []
    for k in range(6):
        at.text_input(key="typed_token").input(f"wrong-{k}")
        at.button(key="sign_in").click().run()
        messages.append(" ".join(e.value.replace("\\", "") for e in at.error))  # the page escapes punctuation
    # 3 free refusals per browser session, the 4th sets a 1 s wait: the next attempts are turned away unchecked
    assert all("not valid" in m for m in messages[:4]), messages
    assert all("Too many sign-in attempts" in m for m in messages[4:]), messages
    with session(get_engine(study.db_url)) as s:
        rows = s.scalars(select(AuditLog).where(AuditLog.event == "login_refused")).all()
    assert len(rows) == 1 and rows[0].detail["count"] == 4 and rows[0].detail["source"] == "local"
    time.sleep(1.1)  # once the wait is over, the right token works
    at.text_input(key="typed_token").input(study.tokens["ann-a"])
    at.button(key="sign_in").click().run()
    assert at.title[0].value == "Guideline"


def test_no_study_configured(monkeypatch):
    monkeypatch.delenv("K3EVAL_SBS_STUDY", raising=False)
    at = app()
    assert not at.exception
    assert any("No study is configured" in e.value for e in at.error)
