"""The vote store and its rules, on SQLite and on a real PostgreSQL server (the `db_url` fixture)."""

from __future__ import annotations

import dataclasses
import io
import sqlite3
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from sqlalchemy import select

import k3eval.sbs as sbs
from k3eval.errors import UserError
from k3eval.sbs import store
from k3eval.sbs.export import VOTE_COLUMNS


@pytest.fixture
def study(two_runs, db_url):
    created = sbs.create_study("demo", two_runs, 3, overlap=2, gold=0.2, repeats=0.2, seed=1, db_url=db_url)
    return created


def _login(created, name="annotator-01"):
    return sbs.authenticate(created.tokens[name], created.name, created.db_url)


def _answer_all(who, answer="left"):
    n = 0
    while (view := sbs.next_item(who)) is not None:
        for q in view.questions:
            sbs.record_vote(who, view.item_id, q.key, answer, seconds=2.0)
        n += 1
    return n


# ---- creation and tokens ----------------------------------------------------------------------------------------
def test_create_returns_tokens_once_and_stores_only_hashes(study):
    assert len(study.tokens) == 3 and study.admin_token not in study.tokens.values()
    assert all(f"token={t}" in study.links[n] for n, t in study.tokens.items())
    engine = store.get_engine(study.db_url)
    with store.session(engine) as s:
        hashes = s.scalars(select(store.AnnotatorRow.token_hash)).all()
    assert len(hashes) == 4
    plain = set(study.tokens.values()) | {study.admin_token}
    assert not plain & set(hashes)
    assert {store.hash_token(t) for t in plain} == set(hashes)


def test_a_study_name_cannot_be_reused(study, two_runs):
    with pytest.raises(sbs.StudyExists, match="already exists"):
        sbs.create_study("demo", two_runs, 2, overlap=1, db_url=study.db_url)


def test_tokens_invalid_revoked_or_of_another_study_are_refused(study, two_runs):
    other = sbs.create_study("other", two_runs, 2, overlap=1, db_url=study.db_url)
    who = _login(study)
    assert isinstance(who, sbs.Annotator) and who.name == "annotator-01"
    assert isinstance(sbs.authenticate(study.admin_token, "demo", study.db_url), sbs.Admin)
    for bad in ("", "x" * 43, other.tokens["annotator-01"], other.admin_token):
        with pytest.raises(sbs.AccessDenied, match="not valid for study 'demo'"):
            sbs.authenticate(bad, "demo", study.db_url)
    with pytest.raises(sbs.StudyNotFound, match="'nope' not found"):
        sbs.authenticate(study.tokens["annotator-01"], "nope", study.db_url)
    sbs.revoke("demo", "annotator-01", study.db_url)
    with pytest.raises(sbs.AccessDenied):
        sbs.authenticate(study.tokens["annotator-01"], "demo", study.db_url)
    # a session that was open before the revocation can no longer vote either
    with pytest.raises(sbs.AccessDenied, match="revoked"):
        sbs.next_item(who)
    ov = sbs.admin_overview("demo", study.db_url)
    assert "revoked" in next(a for a in ov.annotators if a.name == "annotator-01").flags


# ---- what a page may see ----------------------------------------------------------------------------------------
def test_item_view_never_reveals_models_or_paths(study, two_runs):
    who = _login(study)
    secrets_ = [*two_runs, *(str(p) for p in two_runs.values()), "gen-alpha", "gen-beta", "alpha", "beta",
                "<gold"]
    for entry in sbs.queue(who):
        view = sbs.item_view(who, entry.item_id)
        shown = repr(dataclasses.asdict(view))
        assert not [s for s in secrets_ if s in shown], shown
        for cid in (view.left, view.right):
            data = sbs.image_bytes(who, cid, max_side=16)
            img = Image.open(io.BytesIO(data))
            assert img.format == "PNG" and max(img.size) <= 16 and not img.info.get("parameters")
            assert not [s for s in secrets_ if s.encode() in data]


def test_images_and_items_of_other_annotators_are_refused(study):
    a1, a2 = _login(study), _login(study, "annotator-02")
    mine = {e.item_id for e in sbs.queue(a1)}
    theirs = [e.item_id for e in sbs.queue(a2) if e.item_id not in mine]
    assert theirs
    forged = theirs[0]
    for bad in (forged, 10**9, "1 OR 1=1", None):
        with pytest.raises(sbs.AccessDenied, match="not in your queue"):
            sbs.record_vote(a1, bad, "alignment", "left", 1.0)
        with pytest.raises(sbs.AccessDenied):
            sbs.item_view(a1, bad)
    other_view = sbs.item_view(a2, forged)
    own_images = set()
    for i in mine:
        v = sbs.item_view(a1, i)
        own_images |= {v.left, v.right}
    foreign = [c for c in (other_view.left, other_view.right) if c not in own_images]
    for cid in [*foreign, "does-not-exist"]:
        with pytest.raises(sbs.AccessDenied):
            sbs.image_bytes(a1, cid)
    assert sbs.votes_frame("demo", study.db_url).empty


def test_questions_and_answers_are_checked(study):
    who = _login(study)
    view = sbs.next_item(who)
    with pytest.raises(UserError, match="answer: expected one of left, right, equal, both_bad"):
        sbs.record_vote(who, view.item_id, "alignment", "LEFT", 1.0)
    with pytest.raises(UserError, match="question: expected one of"):
        sbs.record_vote(who, view.item_id, "beauty", "left", 1.0)


# ---- votes ------------------------------------------------------------------------------------------------------
def test_double_submission_records_one_vote_and_a_change_is_recorded(study):
    who = _login(study)
    view = sbs.next_item(who)
    r1 = sbs.record_vote(who, view.item_id, "alignment", "left", 1.5)
    r2 = sbs.record_vote(who, view.item_id, "alignment", "left", 0.1)
    assert (r1.status, r2.status) == ("recorded", "unchanged")
    r3 = sbs.record_vote(who, view.item_id, "alignment", "equal", 4.0)
    assert r3.status == "changed"
    df = sbs.votes_frame("demo", study.db_url)
    assert len(df) == 1
    row = df.iloc[0]
    assert row["answer"] == "equal" and row["winner"] == "tie" and row["changes"] == 1 and row["seconds"] == 1.5
    engine = store.get_engine(study.db_url)
    with store.session(engine) as s:
        ev = s.scalars(select(store.AuditLog).where(store.AuditLog.event == "vote_changed")).all()
    assert len(ev) == 1 and ev[0].detail["old"] == "left" and ev[0].detail["new"] == "equal"


def test_resume_progress_and_previous_item(study):
    who = _login(study)
    done, assigned = sbs.progress(who)
    assert done == 0 and assigned == len(sbs.queue(who))
    first = sbs.next_item(who)
    assert first.position == 1 and first.total == assigned
    sbs.record_vote(who, first.item_id, "alignment", "left", 1.0)
    # half-answered: still the current item after a "refresh" (a new login)
    again = sbs.next_item(_login(study))
    assert again.item_id == first.item_id and again.answers == {"alignment": "left"}
    assert sbs.previous_item(who) is None
    sbs.record_vote(who, first.item_id, "quality", "right", 1.0)
    second = sbs.next_item(who)
    assert second.position == 2 and sbs.progress(who) == (1, assigned)
    prev = sbs.previous_item(who)
    assert prev.item_id == first.item_id and prev.answers == {"alignment": "left", "quality": "right"}
    sbs.record_vote(who, prev.item_id, "quality", "both_bad", 1.0)
    assert sbs.next_item(who).item_id == second.item_id
    _answer_all(who)
    assert sbs.next_item(who) is None and sbs.progress(who) == (assigned, assigned)
    assert sbs.previous_item(who).position == assigned


def test_votes_frame_matches_formats_and_what_was_shown(study):
    for name in study.tokens:
        _answer_all(_login(study, name), "left")
    df = sbs.votes_frame("demo", study.db_url)
    assert list(df.columns[: len(VOTE_COLUMNS)]) == VOTE_COLUMNS
    info = sbs.study_info("demo", study.db_url)
    reg = df[~df["is_gold"]]
    assert (reg["winner"] == reg["left_model"]).all()
    assert set(reg["model_a"]) == {"model-alpha"} and set(reg["model_b"]) == {"model-beta"}
    # sides were drawn per shown item: both arrangements occur
    assert set(reg["left_model"]) == {"model-alpha", "model-beta"}
    gold = df[df["gold_answer"].notna()]
    assert len(gold) and set(gold["gold_answer"]) <= {"left", "right"}
    assert df["is_repeat"].any() and df.loc[df["is_repeat"], "repeat_of"].notna().all()
    assert not df["simulated"].any()
    # no item collects more than K votes per question (repeats are items of their own)
    per = df[~df["is_repeat"]].groupby(["item_id", "question"]).size()
    assert per.max() == info["overlap"]
    assert info["n_items"] == df.loc[~df["is_repeat"], "item_id"].nunique()
    assert info["runs"] == {k: str(v.resolve()) for k, v in study_runs(study).items()}
    assert info["n_annotators"] == 3 and info["questions"] == ["alignment", "quality"]
    assert info["created"].endswith("+00:00") and info["simulated"] is False


def study_runs(created):
    info = sbs.study_info(created.name, created.db_url)
    return {k: Path(v) for k, v in info["runs"].items()}


def test_simulated_votes_are_marked(study):
    who = _login(study)
    view = sbs.next_item(who)
    sbs.record_vote(who, view.item_id, "alignment", "right", 0.5, simulated=True)
    df = sbs.votes_frame("demo", study.db_url)
    assert df["simulated"].tolist() == [True]
    assert sbs.study_info("demo", study.db_url)["simulated"] is True


def test_export_parquet_and_csv_round_trip_and_are_audited(study, tmp_path):
    _answer_all(_login(study))
    frame = sbs.votes_frame("demo", study.db_url)
    for suffix in ("parquet", "csv"):
        out = sbs.export_votes("demo", tmp_path / f"votes.{suffix}", study.db_url)
        back = pd.read_parquet(out) if suffix == "parquet" else pd.read_csv(out)
        assert len(back) == len(frame) and list(back.columns) == list(frame.columns)
        assert back["answer"].tolist() == frame["answer"].tolist()
    with pytest.raises(UserError, match="--out: expected a .parquet or .csv"):
        sbs.export_votes("demo", tmp_path / "votes.xlsx", study.db_url)
    assert sbs.admin_overview("demo", study.db_url).exports == 2


def test_admin_overview_gold_accuracy_consistency_and_flags(study):
    careful, lazy = _login(study, "annotator-01"), _login(study, "annotator-02")
    # careful: answers gold items correctly and repeats consistently (by model, whatever the side)
    while (view := sbs.next_item(careful)) is not None:
        for q in view.questions:
            sbs.record_vote(careful, view.item_id, q.key, _correct(study, careful, view, q.key), 5.0)
    _answer_all(lazy, "left")
    ov = sbs.admin_overview("demo", study.db_url)
    by = {a.name: a for a in ov.annotators}
    c, z = by["annotator-01"], by["annotator-02"]
    if c.gold_total:
        assert c.gold_accuracy == 1.0
    assert c.repeat_total == 0 or c.repeat_agreement == 1.0
    assert "left_bias" not in c.flags and "same_answer_run" not in c.flags
    assert z.longest_run == z.assigned and "same_answer_run" in z.flags and "left_bias" in z.flags
    if z.repeat_total:
        assert z.repeat_agreement == 0.0  # always 'left' on a swapped repeat names the other model
    assert (c.done, z.done) == (c.assigned, z.assigned)
    assert ov.votes == (c.assigned + z.assigned) * 2 and ov.logins >= 2
    assert list(ov.frame()["name"]) == ["annotator-01", "annotator-02", "annotator-03"]


def _correct(created, who, view, question):
    """Gold: the genuine image. Otherwise always the alpha model, which is consistent across swapped repeats."""
    engine = store.get_engine(created.db_url)
    with store.session(engine) as s:
        item = s.get(store.Item, view.item_id)
        a = s.scalars(select(store.Assignment).where(store.Assignment.annotator_id == who.id,
                                                     store.Assignment.item_id == view.item_id)).one()
    target_is_a = True if item.kind == "gold" else item.model_a == "model-alpha"
    if item.kind == "gold" and item.gold_question != question:
        return "equal"
    return "left" if target_is_a == a.left_is_a else "right"


# ---- database problems ------------------------------------------------------------------------------------------
def test_missing_sqlite_database_is_a_clear_error(tmp_path):
    url = f"sqlite:///{tmp_path / 'gone.db'}"
    with pytest.raises(sbs.StoreUnavailable, match="not found; create a study first"):
        sbs.authenticate("x", "demo", url)
    assert not (tmp_path / "gone.db").exists()


def test_unreachable_postgres_is_a_clear_error():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(sbs.StoreUnavailable, match="cannot be used"):
        sbs.authenticate("x", "demo", f"postgresql://nobody@127.0.0.1:{port}/none")


def test_locked_sqlite_database_is_a_clear_error(two_runs, tmp_path, monkeypatch):
    monkeypatch.setattr(store, "BUSY_TIMEOUT_S", 0.3)
    url = f"sqlite:///{tmp_path / 'votes.db'}"
    created = sbs.create_study("demo", two_runs, 2, overlap=1, db_url=url)
    who = _login(created)
    view = sbs.next_item(who)
    holder = sqlite3.connect(tmp_path / "votes.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(sbs.StoreUnavailable, match="busy"):
            sbs.record_vote(who, view.item_id, "alignment", "left", 1.0)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert sbs.record_vote(who, view.item_id, "alignment", "left", 1.0).status == "recorded"


def test_other_schema_version_is_refused(study):
    engine = store.get_engine(study.db_url)
    with store.session(engine, write=True) as s:
        s.get(store.Meta, "schema_version").value = "99"
    sbs.dispose_engines()
    with pytest.raises(sbs.StoreUnavailable, match="schema version 99, this k3eval uses 2"):
        _login(study)


def test_sqlite_database_deleted_while_in_use_is_a_clear_error(two_runs, tmp_path):
    db = tmp_path / "votes.db"
    created = sbs.create_study("demo", two_runs, 2, overlap=1, db_url=f"sqlite:///{db}")
    who = _login(created)
    view = sbs.next_item(who)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    with pytest.raises(sbs.StoreUnavailable, match="not found"):
        sbs.record_vote(who, view.item_id, "alignment", "left", 1.0)
    assert not db.exists()  # never recreated empty behind the user's back


def test_fifo_writer_lock_serves_waiters_in_arrival_order():
    lock = store.FifoLock()
    lock.acquire()
    order: list[int] = []
    threads = []
    for k in range(5):
        t = threading.Thread(target=lambda k=k: (lock.acquire(), order.append(k), lock.release()))
        t.start()
        threads.append(t)
        while len(lock._waiters) < k + 1:  # wait until thread k is queued before starting the next
            time.sleep(0.001)
    lock.release()
    for t in threads:
        t.join(timeout=10)
    assert order == [0, 1, 2, 3, 4]
    lock.acquire()  # free again once everyone is done
    lock.release()


@pytest.mark.parametrize("setting, pragma", [(None, 1), ("full", 2)])
def test_sqlite_synchronous_setting(two_runs, tmp_path, monkeypatch, setting, pragma):
    if setting is None:
        monkeypatch.delenv("K3EVAL_SQLITE_SYNC", raising=False)
    else:
        monkeypatch.setenv("K3EVAL_SQLITE_SYNC", setting)
    url = f"sqlite:///{tmp_path / 'votes.db'}"
    sbs.create_study("demo", two_runs, 1, overlap=1, db_url=url)
    with store.get_engine(url).connect() as c:
        assert c.exec_driver_sql("PRAGMA synchronous").scalar() == pragma  # 1 = NORMAL, 2 = FULL
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    sbs.dispose_engines()
    monkeypatch.setenv("K3EVAL_SQLITE_SYNC", "sometimes")
    with pytest.raises(UserError, match="K3EVAL_SQLITE_SYNC: expected NORMAL or FULL, got 'SOMETIMES'"):
        sbs.progress(sbs.Annotator(1, "x", "demo", 1, url))
