"""The rules the annotation app relies on, tested on the service (SQLite and a real PostgreSQL server): an answer is
refused when its pair is no longer the current one, a closed study takes no vote (also from threads voting while it
is closed), refused sign-ins are counted on one audit row, an old database is upgraded, texts for annotators name
no path or database URL, and the sign-in throttle grows its delay."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import event, select, text
from sqlalchemy.engine import Engine

import k3eval.sbs as sbs
from k3eval.errors import UserError
from k3eval.sbs import store
from k3eval.sbs.throttle import SignInThrottle


@pytest.fixture
def study(two_runs, db_url):
    return sbs.create_study("rules", two_runs, 4, overlap=4, gold=0.0, repeats=0.0, seed=2, db_url=db_url)


def _login(created, name="annotator-01"):
    return sbs.authenticate(created.tokens[name], created.name, created.db_url, log=False)


def _answers(created, who) -> dict:
    df = sbs.votes_frame(created.name, created.db_url)
    df = df[df["annotator"] == who.name]
    return {(int(r.position), r.question): r.answer for r in df.itertuples()}


# ---- an answer for a pair that is no longer current ------------------------------------------------------------
def test_expect_current_refuses_finished_and_later_pairs(study):
    who = _login(study)
    first = sbs.next_item(who)
    sbs.record_vote(who, first.item_id, "alignment", "left", 1.0, expect="current")
    # A second key on the current pair changes its answer: it was on screen and still current.
    assert sbs.record_vote(who, first.item_id, "alignment", "right", 1.0, expect="current").status == "changed"
    sbs.record_vote(who, first.item_id, "quality", "equal", 1.0, expect="current")
    # The key that followed the completing one, still bound to pair 1: refused, nothing changes.
    with pytest.raises(sbs.PairNotCurrent) as e:
        sbs.record_vote(who, first.item_id, "quality", "left", 0.05, expect="current")
    assert (e.value.position, e.value.reason) == (1, "finished") and "pair 1" in e.value.public
    later = sbs.queue(who)[2]
    with pytest.raises(sbs.PairNotCurrent) as e:
        sbs.record_vote(who, later.item_id, "alignment", "left", 0.05, expect="current")
    assert (e.value.position, e.value.reason) == (3, "not_shown")
    assert _answers(study, who) == {(1, "alignment"): "right", (1, "quality"): "equal"}
    # Changing an earlier pair on purpose (B): allowed for a finished pair, refused for one that is not.
    assert sbs.record_vote(who, first.item_id, "quality", "both_bad", 2.0, expect="answered").status == "changed"
    current = sbs.next_item(who)
    with pytest.raises(sbs.PairNotCurrent, match="not finished"):
        sbs.record_vote(who, current.item_id, "alignment", "left", 1.0, expect="answered")
    with pytest.raises(UserError, match="expect: expected one of current, answered"):
        sbs.record_vote(who, current.item_id, "alignment", "left", 1.0, expect="next")
    assert _answers(study, who) == {(1, "alignment"): "right", (1, "quality"): "both_bad"}


# ---- closing a study ----------------------------------------------------------------------------------------------
def test_closing_stops_every_vote_including_those_in_flight(study):
    people = [_login(study, f"annotator-0{k}") for k in range(1, 5)]
    stop = threading.Event()
    outcomes: dict[str, list] = {"stored": [], "closed": [], "other": []}
    lock = threading.Lock()

    def vote(who):
        k = 0
        while not stop.is_set():
            view = sbs.next_item(who)
            if view is None:
                return
            for q in view.questions:  # a question already answered is answered again: a change, once closed refused
                k += 1
                answer = ("left", "right")[k % 2]
                try:
                    sbs.record_vote(who, view.item_id, q.key, answer, 0.5, expect="current")
                    kind, value = "stored", (who.name, view.item_id, q.key, answer)
                except sbs.StudyClosed:
                    kind, value = "closed", (who.name, view.item_id, q.key)
                except sbs.StoreError as e:  # e.g. PairNotCurrent from a stale view: must never happen here
                    kind, value = "other", repr(e)
                with lock:
                    outcomes[kind].append(value)

    threads = [threading.Thread(target=vote, args=(w,)) for w in people]
    for t in threads:
        t.start()
    while len(outcomes["stored"]) < 8:
        time.sleep(0.005)
    out = sbs.set_closed("rules", True, study.db_url)
    votes_at_close = len(sbs.votes_frame("rules", study.db_url))
    time.sleep(0.3)  # the threads keep trying for a while
    stop.set()
    for t in threads:
        t.join(timeout=30)
    df = sbs.votes_frame("rules", study.db_url)
    assert out["changed"] and out["closed"] and not outcomes["other"]
    assert outcomes["closed"], "no vote was tried after the study was closed"
    assert len(df) == votes_at_close  # nothing stored after set_closed returned
    acknowledged = {(n, i, q): a for n, i, q, a in outcomes["stored"]}  # the last answer acknowledged wins
    assert acknowledged == {(r.annotator, r.item_id, r.question): r.answer for r in df.itertuples()}
    assert sbs.study_info("rules", study.db_url)["closed"] == out["closed"]
    assert sbs.admin_overview("rules", study.db_url).closed == out["closed"]
    assert sbs.next_item(people[0]) is None or sbs.next_item(people[0]).closed
    # Closing twice changes nothing; reopening lets votes in again; both are in the audit log.
    assert not sbs.set_closed("rules", True, study.db_url)["changed"]
    assert sbs.set_closed("rules", False, study.db_url) == {"study": "rules", "closed": None, "changed": True}
    view = sbs.next_item(people[0])
    assert view is not None and not view.closed
    assert sbs.record_vote(people[0], view.item_id, "alignment", "equal", 1.0).status in ("recorded", "changed")
    with store.session(store.get_engine(study.db_url)) as s:
        events = s.scalars(select(store.AuditLog.event).where(store.AuditLog.event.in_(("close", "reopen")))
                           .order_by(store.AuditLog.id)).all()
    assert events == ["close", "reopen"]
    with pytest.raises(sbs.StudyNotFound):
        sbs.set_closed("nope", True, study.db_url)


# ---- refused sign-ins in the audit log ---------------------------------------------------------------------------
def test_refused_sign_ins_are_counted_on_one_row_per_source(study, two_runs):
    other = sbs.create_study("other", two_runs, 1, overlap=1, db_url=study.db_url)
    sbs.revoke("rules", "annotator-04", study.db_url)
    bad = {"unknown": "no-such-token", "revoked": study.tokens["annotator-04"],
           "other_study": other.tokens["annotator-01"]}

    def refuse(token, source):
        with pytest.raises(sbs.AccessDenied):
            sbs.authenticate(token, "rules", study.db_url, source=source)

    threads = [threading.Thread(target=refuse, args=(bad["unknown"], "10.0.0.7")) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    refuse(bad["revoked"], "10.0.0.7")
    refuse(bad["other_study"], "10.0.0.8")
    refuse(bad["unknown"], "10.0.0.7")
    sbs.authenticate(study.tokens["annotator-01"], "rules", study.db_url, source="10.0.0.7")
    with store.session(store.get_engine(study.db_url)) as s:
        st = store.find_study(s, "rules")
        rows = s.execute(select(store.AuditLog.event, store.AuditLog.detail)
                         .where(store.AuditLog.study_id == st.id, store.AuditLog.event.in_(("login", "login_refused")))
                         .order_by(store.AuditLog.id)).all()
    refused = {d["source"]: d for e, d in rows if e == "login_refused"}
    assert len([e for e, _ in rows if e == "login_refused"]) == 2  # one row per source, not one per refusal
    assert refused["10.0.0.7"]["count"] == 8 and refused["10.0.0.7"]["reasons"] == {"unknown": 7, "revoked": 1}
    assert refused["10.0.0.8"]["count"] == 1 and refused["10.0.0.8"]["reasons"] == {"other_study": 1}
    assert refused["10.0.0.7"]["first"] <= refused["10.0.0.7"]["last"]
    assert [e for e, _ in rows].count("login") == 1


# ---- an old database -----------------------------------------------------------------------------------------------
def test_a_version_1_database_is_upgraded_when_opened(study):
    engine = store.get_engine(study.db_url)
    with engine.begin() as c:
        c.execute(text("ALTER TABLE studies DROP COLUMN closed_at"))
        c.execute(text("UPDATE k3eval_meta SET value = '1' WHERE key = 'schema_version'"))
    sbs.dispose_engines()
    who = _login(study)  # opening it upgrades it
    assert sbs.study_info("rules", study.db_url)["closed"] is None
    with store.session(store.get_engine(study.db_url)) as s:
        assert s.get(store.Meta, "schema_version").value == str(store.SCHEMA_VERSION) == "2"
    sbs.set_closed("rules", True, study.db_url)
    with pytest.raises(sbs.StudyClosed):
        sbs.record_vote(who, sbs.next_item(who).item_id, "alignment", "left", 1.0)


# ---- texts for annotators ------------------------------------------------------------------------------------------
def test_public_texts_name_no_path_no_url_and_no_study(study, tmp_path):
    def hidden(err):
        for secret in (str(tmp_path), "sqlite", "postgresql", "127.0.0.1", "rules", "votes.db"):
            assert secret not in err.public, (secret, err.public)

    with pytest.raises(sbs.StoreUnavailable) as e:
        sbs.authenticate("x", "rules", f"sqlite:///{tmp_path / 'gone' / 'votes.db'}")
    assert str(tmp_path) in str(e.value) and "not found" in e.value.public
    hidden(e.value)
    with pytest.raises(sbs.StudyNotFound) as e:
        sbs.authenticate("x", "other-name", study.db_url)
    assert "rules" in str(e.value)
    hidden(e.value)
    with pytest.raises(sbs.AccessDenied) as e:
        sbs.authenticate("x", "rules", study.db_url)
    hidden(e.value)
    assert "rules" in str(e.value) and "not valid" in e.value.public
    who = _login(study)
    sbs.set_closed("rules", True, study.db_url)
    with pytest.raises(sbs.StudyClosed) as e:
        sbs.record_vote(who, sbs.next_item(who).item_id, "alignment", "left", 1.0)
    hidden(e.value)


def test_read_only_database_is_a_clear_error_without_its_path(two_runs, tmp_path):
    url = f"sqlite:///{tmp_path / 'votes.db'}"
    created = sbs.create_study("rules", two_runs, 1, overlap=1, db_url=url)
    who = _login(created)
    view = sbs.next_item(who)
    sbs.dispose_engines()

    def read_only(dbapi_conn, _record):
        # What a read-only file gives (root ignores file modes, so the test asks SQLite itself).
        dbapi_conn.execute("PRAGMA query_only = ON")

    event.listen(Engine, "connect", read_only)
    try:
        with pytest.raises(sbs.StoreUnavailable) as e:
            sbs.record_vote(who, view.item_id, "alignment", "left", 1.0)
    finally:
        event.remove(Engine, "connect", read_only)
        sbs.dispose_engines()
    assert "read-only" in str(e.value) and str(tmp_path) in str(e.value)
    assert "read-only" in e.value.public and str(tmp_path) not in e.value.public and "sqlite" not in e.value.public
    assert sbs.votes_frame("rules", url).empty


# ---- the sign-in throttle ------------------------------------------------------------------------------------------
def test_sign_in_throttle_grows_its_delay_per_session_and_address():
    now = [1000.0]
    t = SignInThrottle(free={"session": 2, "address": 3}, base_s=1.0, max_s=8.0, forget_s=600.0, max_keys=3,
                       clock=lambda: now[0])
    me = [("session", "s1"), ("address", "a1")]
    assert t.wait(me) == 0
    waits = [t.refused(me) for _ in range(7)]
    # session: 2 free, then 1, 2, 4, 8, 8 (capped); the address has 3 free and lags behind by one
    assert waits == [0, 0, 1, 2, 4, 8, 8]
    assert t.wait(me) == 8
    now[0] += 5
    assert t.wait(me) == 3
    # a new session from the same address still waits for the address
    assert t.wait([("session", "s2"), ("address", "a1")]) == 3
    now[0] += 3
    assert t.wait(me) == 0
    t.accepted(me)  # a valid token: the session starts again, the address keeps its count
    assert t.refused([("session", "s1")]) == 0
    assert t.refused([("address", "a1")]) == 8
    now[0] += 601  # forgotten after forget_s without a refusal
    assert t.wait(me) == 0 and t.refused(me) == 0
    for k in range(5):  # bounded memory: the oldest keys go first
        t.refused([("address", f"x{k}")])
    assert len(t._counts) == 3
