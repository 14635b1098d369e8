"""The rules of a study: who may see what and what counts as a vote. The app, the CLI and `sbs simulate` call these
functions and nothing else; none of them ever returns a model name, a run folder or an image path to an annotator.

Typical use by the app (one browser session):

    who = authenticate(token, study)             # Annotator or Admin; AccessDenied otherwise
    view = next_item(who)                         # ItemView or None when the queue is done
    data = image_bytes(who, view.left, max_side=1024)
    record_vote(who, view.item_id, "alignment", "left", seconds=3.2)

Errors are `k3eval.errors.UserError` subclasses from `k3eval.sbs.store` (AccessDenied, StudyNotFound, StudyExists,
StoreUnavailable) whose message can be shown to a person as is.
"""

from __future__ import annotations

import io
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import bindparam, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from k3eval.errors import UserError
from k3eval.sbs.design import (
    ANSWERS,
    QUESTIONS,
    annotator_names,
    check_questions,
    degrade_image,
    load_run_images,
    plan_study,
)
from k3eval.sbs.store import (
    AccessDenied,
    AnnotatorRow,
    Assignment,
    AuditLog,
    Image,
    Item,
    Run,
    Study,
    StudyExists,
    Vote,
    audit,
    connection,
    find_study,
    get_engine,
    hash_token,
    normalize_url,
    session,
    utcnow,
)

DEFAULT_BASE_URL = "http://localhost:8501"
QUESTION_TEXT = {
    "alignment": "Which image matches the text better?",
    "quality": "Which image has better visual quality?",
}
ANSWER_LABELS = {"left": "Left", "right": "Right", "equal": "Equal", "both_bad": "Both bad"}
# Time to answer is stored as given but clipped to this range (s): a tab left open overnight is not a 10-hour vote.
SECONDS_RANGE = (0.0, 3600.0)


# ---- what callers get -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Annotator:
    """An authenticated annotator: pass it to every call. Holds no secret (the token is not kept)."""

    id: int
    name: str
    study: str
    study_id: int
    db_url: str
    guideline_seen: bool = False


@dataclass(frozen=True)
class Admin:
    """An authenticated admin of one study (dashboard, export)."""

    id: int
    name: str
    study: str
    study_id: int
    db_url: str


@dataclass(frozen=True)
class Question:
    key: str  # 'alignment' | 'quality'
    text: str
    answers: tuple[tuple[str, str], ...] = tuple(ANSWER_LABELS.items())  # (answer, label) in display order


@dataclass(frozen=True)
class ItemView:
    """Everything the voting page may show for one item, and nothing more.

    left/right are opaque content ids: get the bytes with `image_bytes(annotator, view.left)`. `position` is 1-based
    in the annotator's queue of `total` items. `answers` holds this annotator's answers so far ({question: answer}).
    """

    item_id: int
    position: int
    total: int
    prompt: str
    left: str
    right: str
    questions: tuple[Question, ...]
    answers: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return all(q.key in self.answers for q in self.questions)


@dataclass(frozen=True)
class QueueEntry:
    item_id: int
    position: int  # 1-based
    answered: tuple[str, ...]  # questions answered so far


@dataclass(frozen=True)
class VoteResult:
    """status: 'recorded' (new vote), 'unchanged' (the same answer again: a double click) or 'changed'."""

    status: str
    item_complete: bool
    done: int
    assigned: int


@dataclass(frozen=True)
class StudyCreated:
    """What `create_study` returns. The plaintext tokens exist only here: they are stored hashed."""

    name: str
    db_url: str
    tokens: dict[str, str]
    admin_token: str
    base_url: str
    n_items: int
    n_gold: int
    n_repeats: int
    n_assignments: int
    comparisons: list[tuple[str, str]]

    def link(self, token: str) -> str:
        # Only the token: the server started by `sbs serve NAME` knows its study, and a study name in the address
        # bar could name the models (e.g. "k3-vs-sdxl") and unblind the annotator.
        return f"{self.base_url.rstrip('/')}/?token={quote(token)}"

    @property
    def links(self) -> dict[str, str]:
        """Annotator name -> personal link (with the secret token)."""
        return {name: self.link(tok) for name, tok in self.tokens.items()}

    @property
    def admin_link(self) -> str:
        return self.link(self.admin_token)


# ---- creating a study -------------------------------------------------------------------------------------------
def create_study(name: str, runs: dict[str, Path] | list[Path], annotators: int | list[str], overlap: int,
                 gold: float = 0.05, questions=QUESTIONS, reference: str | None = None, seed: int = 0,
                 db_url: str | None = None, repeats: float = 0.05, *, simulated: bool = False,
                 base_url: str = DEFAULT_BASE_URL, pairs: list[tuple[str, str]] | None = None,
                 unpaired: bool = False) -> StudyCreated:
    """Create a study from run folders made on one prompt set, in one transaction.

    runs: {name: folder} or a list of folders (named by folder name); the order fixes model_a/model_b.
    annotators: a number N (annotator-01..N) or a list of names. overlap: annotators per item (1..N).
    gold, repeats: fractions in [0, 0.5] (gold of the regular items; swapped repeats of each annotator's regular
    items). questions: a subset of ('alignment', 'quality'), or 'alignment,quality'. reference: compare every run
    against this one instead of all pairs; pairs: explicit (run a, run b) comparisons instead of either. seed: fixes
    the whole design (items, assignment, order, sides, gold). simulated: mark the study as made by `sbs simulate`.
    unpaired: accept runs made with other seeds or sample counts (recorded in the study's `pairing`).
    A name already in the database raises StudyExists.
    """
    _check_name(name)
    questions = check_questions(questions)
    url = normalize_url(db_url)
    names = annotator_names(annotators)
    run_images = load_run_images(runs)
    plan = plan_study(run_images, names, overlap, gold=gold, repeats=repeats, questions=questions,
                      reference=reference, seed=seed, pairs=pairs, unpaired=unpaired)
    engine = get_engine(url, create=True)
    with session(engine) as s:
        if s.scalars(select(Study.id).where(Study.name == name)).first() is not None:
            raise StudyExists(f"a study named {name!r} already exists in this database; choose another name")
    # Degraded copies are made before the write transaction so that it stays short.
    blobs: dict[tuple, bytes] = {}
    for k, it in enumerate(plan.items):
        for src in (it.image_a, it.image_b):
            if src.degraded and (src.run, src.prompt_id, src.sample) not in blobs:
                path = next(r for r in run_images if r.name == src.run).images[(src.prompt_id, src.sample)]["path"]
                blobs[(src.run, src.prompt_id, src.sample)] = degrade_image(Path(path).read_bytes(), seed * 7919 + k)
    tokens = {n: secrets.token_urlsafe(32) for n in names}
    admin_token = secrets.token_urlsafe(32)
    now = utcnow()
    counts = {k: sum(i.kind == k for i in plan.items) for k in ("regular", "gold", "repeat")}
    try:
        with session(engine, write=True) as s:
            from k3eval import __version__

            st = Study(name=name, created_at=now, questions=list(questions), overlap=overlap, gold=float(gold),
                       repeats=float(repeats), seed=seed, reference=reference, prompt_set=plan.prompt_set,
                       prompt_set_hash=plan.prompt_set_hash, simulated=simulated,
                       info={"k3eval": __version__, "items": counts, "comparisons": [list(c) for c in plan.comparisons],
                             "annotators": len(names), "pairing": plan.pairing})
            s.add(st)
            s.flush()
            for pos, r in enumerate(plan.runs):
                s.add(Run(study_id=st.id, name=r.name, position=pos, path=str(r.path), generator=r.generator))
            by_run = {r.name: r for r in plan.runs}
            image_ids: dict[tuple, str] = {}

            def image_id(src) -> str:
                key = (src.run, src.prompt_id, src.sample, src.degraded)
                if key not in image_ids:
                    # Opaque random ids (not derived from names or content) so the page learns nothing from them.
                    iid = secrets.token_urlsafe(15)
                    image_ids[key] = iid
                    path = None if src.degraded else by_run[src.run].images[(src.prompt_id, src.sample)]["path"]
                    data = blobs[(src.run, src.prompt_id, src.sample)] if src.degraded else None
                    s.add(Image(id=iid, study_id=st.id, run_name=src.run, prompt_id=src.prompt_id, sample=src.sample,
                                degraded=src.degraded, path=path, data=data))
                return image_ids[key]

            rows: list[Item] = []
            for it in plan.items:
                row = Item(study_id=st.id, kind=it.kind, prompt_id=it.prompt_id, prompt=it.prompt,
                           category=it.category, sample=it.sample, model_a=it.model_a, model_b=it.model_b,
                           image_a=image_id(it.image_a), image_b=image_id(it.image_b),
                           gold_question=it.gold_question, gold_answer=it.gold_answer)
                rows.append(row)
            s.add_all(rows)
            s.flush()
            for it, row in zip(plan.items, rows):
                if it.repeat_of is not None:
                    row.repeat_of = rows[it.repeat_of].id
            people = [AnnotatorRow(study_id=st.id, name=n, role="annotator", token_hash=hash_token(tokens[n]),
                                   created_at=now) for n in names]
            people.append(AnnotatorRow(study_id=st.id, name="admin", role="admin",
                                       token_hash=hash_token(admin_token), created_at=now))
            s.add_all(people)
            s.flush()
            s.add_all([Assignment(study_id=st.id, annotator_id=people[a.annotator].id, item_id=rows[a.item].id,
                                  position=a.position, left_is_a=a.left_is_a) for a in plan.assignments])
            audit(s, "create", st.id, runs={r.name: str(r.path) for r in plan.runs}, annotators=len(names),
                  overlap=overlap, seed=seed, items=counts)
    except IntegrityError:
        raise StudyExists(f"a study named {name!r} already exists in this database; choose another name") from None
    return StudyCreated(name, url, tokens, admin_token, base_url, n_items=counts["regular"] + counts["gold"],
                        n_gold=counts["gold"], n_repeats=counts["repeat"], n_assignments=len(plan.assignments),
                        comparisons=plan.comparisons)


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name.strip() or len(name) > 200 or any(ord(c) < 32 for c in name):
        raise UserError(f"study name: expected 1-200 printable characters, got {name!r}")


# ---- who is this ------------------------------------------------------------------------------------------------
def authenticate(token: str, study: str, db_url: str | None = None, *, log: bool = True) -> Annotator | Admin:
    """The annotator or admin whose token this is, for `study`. Unknown, revoked and other studies' tokens raise
    AccessDenied (the same message for all three, so a token's existence is not revealed). Each successful call
    writes a 'login' entry to the audit log unless log=False: call it once per browser session and keep the
    result."""
    url = normalize_url(db_url)
    engine = get_engine(url)
    token = (token or "").strip()
    h = hash_token(token) if token else ""
    with session(engine, write=log) as s:
        st = find_study(s, study)
        row = s.scalars(select(AnnotatorRow).where(AnnotatorRow.token_hash == h)).first() if h else None
        ok = row is not None and row.study_id == st.id and row.revoked_at is None
        if log:
            audit(s, "login" if ok else "login_refused", st.id, row.id if ok else None,
                  reason=None if ok else ("unknown" if row is None else
                                          "revoked" if row.study_id == st.id else "other_study"))
        if not ok:
            refused = True
        else:
            refused = False
            if row.role == "admin":
                who: Annotator | Admin = Admin(row.id, row.name, st.name, st.id, url)
            else:
                who = Annotator(row.id, row.name, st.name, st.id, url, row.guideline_seen_at is not None)
    if refused:
        raise AccessDenied(f"this link or token is not valid for study {study!r} (unknown, revoked, or for another "
                           "study); ask the study's organiser for your personal link")
    return who


def revoke(study: str, annotator: str, db_url: str | None = None) -> None:
    """Revoke an annotator's (or 'admin''s) token: it is refused from now on; votes already cast stay."""
    engine = get_engine(db_url)
    with session(engine, write=True) as s:
        st = find_study(s, study)
        row = s.scalars(select(AnnotatorRow).where(AnnotatorRow.study_id == st.id,
                                                   AnnotatorRow.name == annotator)).first()
        if row is None:
            names = s.scalars(select(AnnotatorRow.name).where(AnnotatorRow.study_id == st.id)).all()
            raise UserError(f"annotator {annotator!r} not in study {study!r} (known: {', '.join(sorted(names))})")
        row.revoked_at = utcnow()
        audit(s, "revoke", st.id, row.id)


def delete_study(study: str, db_url: str | None = None) -> None:
    """Delete a study with its items, annotators and votes (for `k3eval run --force`); the audit log keeps a
    'delete' entry without a study id. Unknown names raise StudyNotFound."""
    from sqlalchemy import delete

    from k3eval.sbs.store import AuditLog
    from k3eval.sbs.store import Vote as Vote

    engine = get_engine(db_url)
    with session(engine, write=True) as s:
        st = find_study(s, study)
        n_votes = s.scalar(select(func.count()).select_from(Vote).where(Vote.study_id == st.id))
        # Children first, so that it works on databases without ON DELETE CASCADE enforcement.
        for model in (Vote, Assignment, AuditLog):
            s.execute(delete(model).where(model.study_id == st.id))
        s.execute(delete(Item).where(Item.study_id == st.id, Item.repeat_of.is_not(None)))
        s.execute(delete(Item).where(Item.study_id == st.id))
        for model in (Image, AnnotatorRow, Run):
            s.execute(delete(model).where(model.study_id == st.id))
        s.execute(delete(Study).where(Study.id == st.id))
        audit(s, "delete", None, study=study, votes=int(n_votes or 0))


def mark_guideline_seen(annotator: Annotator) -> Annotator:
    """Record that the annotator has read the guideline; returns the updated Annotator."""
    engine = get_engine(annotator.db_url)
    with session(engine, write=True) as s:
        row = _live_annotator(s, annotator)
        if row.guideline_seen_at is None:
            row.guideline_seen_at = utcnow()
    return Annotator(annotator.id, annotator.name, annotator.study, annotator.study_id, annotator.db_url, True)


# ---- prepared statements: built once, so a page view or a vote costs only their execution --------------------------
_A, _I, _V = Assignment.__table__, Item.__table__, Vote.__table__
_P, _S, _IMG = AnnotatorRow.__table__, Study.__table__, Image.__table__
_AUDIT = AuditLog.__table__
_pid, _sid, _iid, _q = bindparam("pid"), bindparam("sid"), bindparam("iid"), bindparam("q")

_LIVE = (select(_P.c.revoked_at, _S.c.questions).join(_S, _S.c.id == _P.c.study_id)
         .where(_P.c.id == _pid, _P.c.study_id == _sid))
_SHOWN = (select(_A.c.left_is_a, _I.c.model_a, _I.c.model_b, _P.c.revoked_at, _S.c.questions)
          .join(_I, _I.c.id == _A.c.item_id).join(_P, _P.c.id == _A.c.annotator_id).join(_S, _S.c.id == _P.c.study_id)
          .where(_A.c.annotator_id == _pid, _A.c.item_id == _iid, _P.c.study_id == _sid))
_ASSIGNED = select(func.count()).select_from(_A).where(_A.c.annotator_id == _pid).scalar_subquery()
_DONE = select(func.count()).select_from(
    select(_V.c.item_id).where(_V.c.annotator_id == _pid).group_by(_V.c.item_id)
    .having(func.count() >= bindparam("nq")).subquery()).scalar_subquery()
_ANSWERED = (select(func.count()).select_from(_V).where(_V.c.annotator_id == _pid, _V.c.item_id == _iid)
             .scalar_subquery())
_PROGRESS = select(_DONE.label("done"), _ASSIGNED.label("assigned"))
_AFTER_VOTE = select(_DONE.label("done"), _ASSIGNED.label("assigned"), _ANSWERED.label("answered"))
_COUNTS = (select(_V.c.item_id, func.count().label("n")).where(_V.c.annotator_id == _pid)
           .group_by(_V.c.item_id).subquery())


def _open_items(column):
    return (select(column).select_from(_A).outerjoin(_COUNTS, _COUNTS.c.item_id == _A.c.item_id)
            .where(_A.c.annotator_id == _pid, func.coalesce(_COUNTS.c.n, 0) < bindparam("nq"))
            .order_by(_A.c.position).limit(1))


_FIRST_OPEN_ITEM, _FIRST_OPEN_POS = _open_items(_A.c.item_id), _open_items(_A.c.position)
_POSITION = select(_A.c.position).where(_A.c.annotator_id == _pid, _A.c.item_id == _iid)
_DONE_BEFORE = (select(_A.c.item_id).join(_COUNTS, _COUNTS.c.item_id == _A.c.item_id)
                .where(_A.c.annotator_id == _pid, _COUNTS.c.n >= bindparam("nq"), _A.c.position < bindparam("pos"))
                .order_by(_A.c.position.desc()).limit(1))
_LAST_DONE = (select(_A.c.item_id).join(_COUNTS, _COUNTS.c.item_id == _A.c.item_id)
              .where(_A.c.annotator_id == _pid, _COUNTS.c.n >= bindparam("nq"))
              .order_by(_A.c.position.desc()).limit(1))
_VIEW = (select(_A.c.position, _A.c.left_is_a, _I.c.id, _I.c.prompt, _I.c.image_a, _I.c.image_b,
                _ASSIGNED.label("total"))
         .join(_I, _I.c.id == _A.c.item_id).where(_A.c.annotator_id == _pid, _A.c.item_id == _iid))
_ANSWERS = select(_V.c.question, _V.c.answer).where(_V.c.annotator_id == _pid, _V.c.item_id == _iid)
_QUEUE = select(_A.c.item_id, _A.c.position).where(_A.c.annotator_id == _pid).order_by(_A.c.position)
_ALL_ANSWERS = select(_V.c.item_id, _V.c.question).where(_V.c.annotator_id == _pid)
_OLD_VOTE = select(_V.c.id, _V.c.answer, _V.c.changes).where(_V.c.annotator_id == _pid, _V.c.item_id == _iid,
                                                               _V.c.question == _q)
_IMAGE = select(_IMG.c.id, _IMG.c.path, _IMG.c.data).where(_IMG.c.id == bindparam("cid"), _IMG.c.study_id == _sid)
_IMAGE_VISIBLE = (select(func.count()).select_from(_A).join(_I, _I.c.id == _A.c.item_id)
                  .where(_A.c.annotator_id == _pid, or_(_I.c.image_a == bindparam("cid"),
                                                        _I.c.image_b == bindparam("cid"))))
_VOTE_VALUES = {c: bindparam(c, type_=_V.c[c].type) for c in
                ("study_id", "annotator_id", "item_id", "question", "answer", "left_model", "right_model", "seconds",
                 "created_at", "updated_at", "changes", "simulated")}
_INSERT_VOTE: dict[str, object] = {}


def _insert_vote(dialect: str):
    """INSERT ... ON CONFLICT DO NOTHING RETURNING id: a concurrent double submission inserts exactly once."""
    stmt = _INSERT_VOTE.get(dialect)
    if stmt is None:
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        elif dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        else:
            dialect_insert = None
        if dialect_insert is None:  # other databases: the unique constraint plus a retry on IntegrityError
            stmt = insert(_V).values(**_VOTE_VALUES).returning(_V.c.id)
        else:
            stmt = (dialect_insert(_V).values(**_VOTE_VALUES)
                    .on_conflict_do_nothing(index_elements=["annotator_id", "item_id", "question"]).returning(_V.c.id))
        _INSERT_VOTE[dialect] = stmt
    return stmt


def _revoked(who) -> AccessDenied:
    return AccessDenied(f"access to study {who.study!r} has been revoked; ask the study's organiser")


def _not_yours(who, item_id) -> AccessDenied:
    return AccessDenied(f"item {item_id!r} is not in your queue for study {who.study!r}")


def _live(c, who: Annotator | Admin) -> tuple[str, ...]:
    """Check that the annotator/admin still exists in its study and is not revoked; returns the study's questions."""
    row = c.execute(_LIVE, {"pid": who.id, "sid": who.study_id}).first()
    if row is None or row.revoked_at is not None:
        raise _revoked(who)
    return tuple(row.questions)


def _live_annotator(s, who: Annotator | Admin) -> AnnotatorRow:
    row = s.get(AnnotatorRow, who.id)
    if row is None or row.study_id != who.study_id or row.revoked_at is not None:
        raise _revoked(who)
    return row


def _need_annotator(who) -> None:
    if not isinstance(who, Annotator):
        raise AccessDenied(f"expected an authenticated annotator, got {type(who).__name__}")


def _item_id(item_id) -> int | None:
    if isinstance(item_id, bool):
        return None
    try:
        return int(item_id)
    except (TypeError, ValueError, OverflowError):
        return None


# ---- the queue --------------------------------------------------------------------------------------------------
def queue(annotator: Annotator) -> list[QueueEntry]:
    """The annotator's whole queue, in order, with the questions answered so far for each item."""
    _need_annotator(annotator)
    engine = get_engine(annotator.db_url)
    with connection(engine) as c:
        _live(c, annotator)
        rows = c.execute(_QUEUE, {"pid": annotator.id}).all()
        answered: dict[int, list[str]] = {}
        for item_id, q in c.execute(_ALL_ANSWERS, {"pid": annotator.id}):
            answered.setdefault(item_id, []).append(q)
    return [QueueEntry(i, p + 1, tuple(sorted(answered.get(i, ())))) for i, p in rows]


def progress(annotator: Annotator) -> tuple[int, int]:
    """(done, assigned): items with every question answered, and items in the annotator's queue."""
    _need_annotator(annotator)
    engine = get_engine(annotator.db_url)
    with connection(engine) as c:
        nq = len(_live(c, annotator))
        row = c.execute(_PROGRESS, {"pid": annotator.id, "nq": nq}).one()
    return int(row.done), int(row.assigned)


def next_item(annotator: Annotator) -> ItemView | None:
    """The first item of the queue not fully answered (so a refresh or a restart resumes there), or None when done."""
    _need_annotator(annotator)
    engine = get_engine(annotator.db_url)
    with connection(engine) as c:
        qs = _live(c, annotator)
        item_id = c.execute(_FIRST_OPEN_ITEM, {"pid": annotator.id, "nq": len(qs)}).scalar()
        return None if item_id is None else _view(c, annotator, item_id, qs)


def previous_item(annotator: Annotator, before: int | None = None) -> ItemView | None:
    """The fully answered item just before `before` (an item id; default: the current `next_item`, or the end of the
    queue when all is done), so its answers can be changed; None at the start of the queue."""
    _need_annotator(annotator)
    engine = get_engine(annotator.db_url)
    with connection(engine) as c:
        qs = _live(c, annotator)
        params = {"pid": annotator.id, "nq": len(qs)}
        if before is None:
            pos = c.execute(_FIRST_OPEN_POS, params).scalar()
        else:
            pos = c.execute(_POSITION, {"pid": annotator.id, "iid": _item_id(before)}).scalar()
            if pos is None:
                raise _not_yours(annotator, before)
        stmt = _LAST_DONE if pos is None else _DONE_BEFORE
        item_id = c.execute(stmt, {**params, "pos": pos}).scalar()
        return None if item_id is None else _view(c, annotator, item_id, qs)


def item_view(annotator: Annotator, item_id: int) -> ItemView:
    """The page content of one item of the annotator's queue; AccessDenied for any other item id."""
    _need_annotator(annotator)
    engine = get_engine(annotator.db_url)
    with connection(engine) as c:
        return _view(c, annotator, item_id, _live(c, annotator))


def _view(c, annotator: Annotator, item_id, qs: tuple[str, ...]) -> ItemView:
    iid = _item_id(item_id)
    row = None if iid is None else c.execute(_VIEW, {"pid": annotator.id, "iid": iid}).first()
    if row is None:
        raise _not_yours(annotator, item_id)
    answers = {q: a for q, a in c.execute(_ANSWERS, {"pid": annotator.id, "iid": row.id})}
    left, right = (row.image_a, row.image_b) if row.left_is_a else (row.image_b, row.image_a)
    return ItemView(row.id, row.position + 1, int(row.total), row.prompt, left, right,
                    tuple(Question(q, QUESTION_TEXT[q]) for q in qs), answers)


# ---- images -----------------------------------------------------------------------------------------------------
_IMAGE_CACHE: OrderedDict[tuple, bytes] = OrderedDict()
_IMAGE_CACHE_LOCK = threading.Lock()
_IMAGE_CACHE_SIZE = 48


def image_bytes(who: Annotator | Admin, content_id: str, max_side: int | None = None, *,
                reencode: bool = True) -> bytes:
    """The bytes of a shown image. By default PNG re-encoded without any metadata (so nothing in the file names its
    model) and, with `max_side` (pixels, >= 16), downscaled to fit; `reencode=False` gives the stored file as is (for
    a caller that re-encodes it itself, e.g. `k3eval.sbs.images`). An annotator gets only images of items in their
    queue, an admin those of the study; anything else raises AccessDenied."""
    if max_side is not None and (not isinstance(max_side, int) or max_side < 16):
        raise UserError(f"max_side: expected an integer >= 16 or None, got {max_side!r}")
    engine = get_engine(who.db_url)
    with connection(engine) as c:
        _live(c, who)
        img = c.execute(_IMAGE, {"cid": str(content_id), "sid": who.study_id}).first()
        if img is not None and isinstance(who, Annotator):
            if not c.execute(_IMAGE_VISIBLE, {"pid": who.id, "cid": img.id}).scalar():
                img = None
        if img is None:
            raise AccessDenied(f"image {content_id!r} is not part of your items in study {who.study!r}")
        key = (who.db_url, img.id, max_side)
        with _IMAGE_CACHE_LOCK:
            if reencode and key in _IMAGE_CACHE:
                _IMAGE_CACHE.move_to_end(key)
                return _IMAGE_CACHE[key]
        raw = img.data if img.data is not None else _read_image_file(img.path)
    if not reencode:
        return raw
    out = _reencode(raw, max_side)
    with _IMAGE_CACHE_LOCK:
        _IMAGE_CACHE[key] = out
        while len(_IMAGE_CACHE) > _IMAGE_CACHE_SIZE:
            _IMAGE_CACHE.popitem(last=False)
    return out


def _read_image_file(path: str | None) -> bytes:
    try:
        return Path(str(path)).read_bytes()
    except OSError:
        # The path names the run folder (and so the model): keep it out of a message the page may show.
        raise UserError("an image of this study can no longer be read on the server (run folder moved or deleted); "
                        "tell the study's organiser") from None


def _reencode(data: bytes, max_side: int | None) -> bytes:
    from PIL import Image as PILImage

    img = PILImage.open(io.BytesIO(data)).convert("RGB")
    if max_side is not None and max(img.size) > max_side:
        img.thumbnail((max_side, max_side), PILImage.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # level 1: fast to serve, still lossless
    return buf.getvalue()


# ---- votes ------------------------------------------------------------------------------------------------------
def record_vote(annotator: Annotator, item_id: int, question: str, answer: str, seconds: float | None,
                simulated: bool = False) -> VoteResult:
    """Record one answer, durably, before returning. Idempotent: the same (annotator, item, question) holds at most
    one vote; the same answer again is a no-op ('unchanged'); a different answer replaces it ('changed', counted in
    `votes.changes` and written to the audit log). Items not in the annotator's queue raise AccessDenied, whatever id
    is sent; so does a revoked token. seconds: time to answer, clipped to [0, 3600]."""
    _need_annotator(annotator)
    if question not in QUESTIONS:
        raise UserError(f"question: expected one of {', '.join(QUESTIONS)}, got {question!r}")
    if answer not in ANSWERS:
        raise UserError(f"answer: expected one of {', '.join(ANSWERS)}, got {answer!r}")
    if seconds is not None:
        seconds = min(max(float(seconds), SECONDS_RANGE[0]), SECONDS_RANGE[1])
    engine = get_engine(annotator.db_url)
    iid = _item_id(item_id)
    if iid is None:
        with connection(engine) as c:
            _live(c, annotator)
        raise _not_yours(annotator, item_id)
    for attempt in range(3):
        try:
            return _write_vote(engine, annotator, iid, item_id, question, answer, seconds, simulated)
        except IntegrityError:
            # Only on databases without ON CONFLICT support: a concurrent identical vote won; the retry finds it.
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _write_vote(engine, annotator, iid, item_id, question, answer, seconds, simulated) -> VoteResult:
    # One short write transaction does it all: under load, each extra transaction costs more (pool, BEGIN, COMMIT)
    # than the two indexed lookups it would keep out of the write lock.
    now = utcnow()
    with connection(engine, write=True) as c:
        shown = c.execute(_SHOWN, {"pid": annotator.id, "iid": iid, "sid": annotator.study_id}).first()
        if shown is None:
            _live(c, annotator)  # a revoked token says so; otherwise the item is not theirs
            raise _not_yours(annotator, item_id)
        if shown.revoked_at is not None:
            raise _revoked(annotator)
        qs = tuple(shown.questions)
        if question not in qs:
            raise UserError(f"question: study {annotator.study!r} asks {', '.join(qs)}, not {question!r}")
        left, right = (shown.model_a, shown.model_b) if shown.left_is_a else (shown.model_b, shown.model_a)
        new_id = c.execute(_insert_vote(engine.dialect.name), {
            "study_id": annotator.study_id, "annotator_id": annotator.id, "item_id": iid, "question": question,
            "answer": answer, "left_model": left, "right_model": right, "seconds": seconds, "created_at": now,
            "updated_at": now, "changes": 0, "simulated": bool(simulated)}).scalar()
        if new_id is not None:
            status = "recorded"
        else:
            old = c.execute(_OLD_VOTE, {"pid": annotator.id, "iid": iid, "q": question}).first()
            if old.answer == answer:
                status = "unchanged"
            else:
                c.execute(update(_V).where(_V.c.id == old.id).values(answer=answer, updated_at=now,
                                                                     changes=(old.changes or 0) + 1))
                c.execute(insert(_AUDIT).values(
                    study_id=annotator.study_id, annotator_id=annotator.id, event="vote_changed",
                    detail={"item_id": iid, "question": question, "old": old.answer, "new": answer,
                            "seconds": seconds}, created_at=now))
                status = "changed"
        row = c.execute(_AFTER_VOTE, {"pid": annotator.id, "iid": iid, "nq": len(qs)}).one()
    return VoteResult(status, int(row.answered) >= len(qs), int(row.done), int(row.assigned))


__all__ = ["Admin", "Annotator", "DEFAULT_BASE_URL", "ItemView", "Question", "QueueEntry", "StudyCreated",
           "VoteResult", "authenticate", "create_study", "delete_study", "image_bytes", "item_view",
           "mark_guideline_seen", "next_item", "previous_item", "progress", "queue", "record_vote", "revoke"]
