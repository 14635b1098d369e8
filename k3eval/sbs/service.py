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

from sqlalchemy import func, or_, select
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
    Image,
    Item,
    Run,
    Study,
    StudyExists,
    Vote,
    audit,
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
        return f"{self.base_url.rstrip('/')}/?study={quote(self.name)}&token={quote(token)}"

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
                 base_url: str = DEFAULT_BASE_URL) -> StudyCreated:
    """Create a study from run folders made on one prompt set, in one transaction.

    runs: {name: folder} or a list of folders (named by folder name); the order fixes model_a/model_b.
    annotators: a number N (annotator-01..N) or a list of names. overlap: annotators per item (1..N).
    gold, repeats: fractions in [0, 0.5] (gold of the regular items; swapped repeats of each annotator's regular
    items). questions: a subset of ('alignment', 'quality'), or 'alignment,quality'. reference: compare every run
    against this one instead of all pairs. seed: fixes the whole design (items, assignment, order, sides, gold).
    simulated: mark the study as made by `sbs simulate`. A name already in the database raises StudyExists.
    """
    _check_name(name)
    questions = check_questions(questions)
    url = normalize_url(db_url)
    names = annotator_names(annotators)
    run_images = load_run_images(runs)
    plan = plan_study(run_images, names, overlap, gold=gold, repeats=repeats, questions=questions,
                      reference=reference, seed=seed)
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
                             "annotators": len(names)})
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
    from k3eval.sbs.store import Vote as VoteRow

    engine = get_engine(db_url)
    with session(engine, write=True) as s:
        st = find_study(s, study)
        n_votes = s.scalar(select(func.count()).select_from(VoteRow).where(VoteRow.study_id == st.id))
        # Children first, so that it works on databases without ON DELETE CASCADE enforcement.
        for model in (VoteRow, Assignment, AuditLog):
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


def _live_annotator(s, who: Annotator | Admin) -> AnnotatorRow:
    row = s.get(AnnotatorRow, who.id)
    if row is None or row.study_id != who.study_id or row.revoked_at is not None:
        raise AccessDenied(f"access to study {who.study!r} has been revoked; ask the study's organiser")
    return row


def _need_annotator(who) -> None:
    if not isinstance(who, Annotator):
        raise AccessDenied(f"expected an authenticated annotator, got {type(who).__name__}")


# ---- the queue --------------------------------------------------------------------------------------------------
def _questions(s, study_id: int) -> tuple[str, ...]:
    return tuple(s.get(Study, study_id).questions)


def queue(annotator: Annotator) -> list[QueueEntry]:
    """The annotator's whole queue, in order, with the questions answered so far for each item."""
    _need_annotator(annotator)
    engine = get_engine(annotator.db_url)
    with session(engine) as s:
        _live_annotator(s, annotator)
        rows = s.execute(select(Assignment.item_id, Assignment.position).where(
            Assignment.annotator_id == annotator.id).order_by(Assignment.position)).all()
        answered: dict[int, list[str]] = {}
        for item_id, q in s.execute(select(Vote.item_id, Vote.question).where(Vote.annotator_id == annotator.id)):
            answered.setdefault(item_id, []).append(q)
    return [QueueEntry(i, p + 1, tuple(sorted(answered.get(i, ())))) for i, p in rows]


def _counts(s, annotator_id: int, n_questions: int) -> tuple[int, int]:
    assigned = s.scalar(select(func.count()).select_from(Assignment).where(Assignment.annotator_id == annotator_id))
    per_item = (select(Vote.item_id).where(Vote.annotator_id == annotator_id).group_by(Vote.item_id)
                .having(func.count() >= n_questions).subquery())
    done = s.scalar(select(func.count()).select_from(per_item))
    return int(done or 0), int(assigned or 0)


def progress(annotator: Annotator) -> tuple[int, int]:
    """(done, assigned): items with every question answered, and items in the annotator's queue."""
    _need_annotator(annotator)
    engine = get_engine(annotator.db_url)
    with session(engine) as s:
        _live_annotator(s, annotator)
        return _counts(s, annotator.id, len(_questions(s, annotator.study_id)))


def _answered_counts(s, annotator_id: int):
    return (select(Vote.item_id, func.count().label("n")).where(Vote.annotator_id == annotator_id)
            .group_by(Vote.item_id).subquery())


def next_item(annotator: Annotator) -> ItemView | None:
    """The first item of the queue not fully answered (so a refresh or a restart resumes there), or None when done."""
    _need_annotator(annotator)
    engine = get_engine(annotator.db_url)
    with session(engine) as s:
        _live_annotator(s, annotator)
        nq = len(_questions(s, annotator.study_id))
        counts = _answered_counts(s, annotator.id)
        item_id = s.scalar(select(Assignment.item_id).outerjoin(counts, counts.c.item_id == Assignment.item_id)
                           .where(Assignment.annotator_id == annotator.id, func.coalesce(counts.c.n, 0) < nq)
                           .order_by(Assignment.position).limit(1))
        return None if item_id is None else _view(s, annotator, item_id)


def previous_item(annotator: Annotator, before: int | None = None) -> ItemView | None:
    """The fully answered item just before `before` (an item id; default: the current `next_item`, or the end of the
    queue when all is done), so its answers can be changed; None at the start of the queue."""
    _need_annotator(annotator)
    engine = get_engine(annotator.db_url)
    with session(engine) as s:
        _live_annotator(s, annotator)
        nq = len(_questions(s, annotator.study_id))
        counts = _answered_counts(s, annotator.id)
        if before is None:
            limit_pos = s.scalar(select(Assignment.position)
                                 .outerjoin(counts, counts.c.item_id == Assignment.item_id)
                                 .where(Assignment.annotator_id == annotator.id, func.coalesce(counts.c.n, 0) < nq)
                                 .order_by(Assignment.position).limit(1))
        else:
            limit_pos = _assignment(s, annotator, before).position
        q = (select(Assignment.item_id).join(counts, counts.c.item_id == Assignment.item_id)
             .where(Assignment.annotator_id == annotator.id, counts.c.n >= nq))
        if limit_pos is not None:
            q = q.where(Assignment.position < limit_pos)
        item_id = s.scalar(q.order_by(Assignment.position.desc()).limit(1))
        return None if item_id is None else _view(s, annotator, item_id)


def item_view(annotator: Annotator, item_id: int) -> ItemView:
    """The page content of one item of the annotator's queue; AccessDenied for any other item id."""
    _need_annotator(annotator)
    engine = get_engine(annotator.db_url)
    with session(engine) as s:
        _live_annotator(s, annotator)
        return _view(s, annotator, item_id)


def _assignment(s, annotator: Annotator, item_id) -> Assignment:
    try:
        iid = int(item_id)
    except (TypeError, ValueError):
        iid = None
    a = None if iid is None else s.scalars(select(Assignment).where(Assignment.annotator_id == annotator.id,
                                                                    Assignment.item_id == iid)).first()
    if a is None:
        raise AccessDenied(f"item {item_id!r} is not in your queue for study {annotator.study!r}")
    return a


def _view(s, annotator: Annotator, item_id: int) -> ItemView:
    a = _assignment(s, annotator, item_id)
    item = s.get(Item, a.item_id)
    qs = _questions(s, annotator.study_id)
    total = s.scalar(select(func.count()).select_from(Assignment).where(Assignment.annotator_id == annotator.id))
    answers = dict(s.execute(select(Vote.question, Vote.answer).where(Vote.annotator_id == annotator.id,
                                                                      Vote.item_id == item.id)).all())
    left, right = (item.image_a, item.image_b) if a.left_is_a else (item.image_b, item.image_a)
    return ItemView(item.id, a.position + 1, int(total), item.prompt, left, right,
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
    with session(engine) as s:
        _live_annotator(s, who)
        img = s.get(Image, str(content_id))
        if img is None or img.study_id != who.study_id:
            img = None
        elif isinstance(who, Annotator):
            visible = s.scalar(select(func.count()).select_from(Assignment).join(Item, Item.id == Assignment.item_id)
                               .where(Assignment.annotator_id == who.id,
                                      or_(Item.image_a == img.id, Item.image_b == img.id)))
            if not visible:
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
    is sent. seconds: time to answer, clipped to [0, 3600]."""
    _need_annotator(annotator)
    if question not in QUESTIONS:
        raise UserError(f"question: expected one of {', '.join(QUESTIONS)}, got {question!r}")
    if answer not in ANSWERS:
        raise UserError(f"answer: expected one of {', '.join(ANSWERS)}, got {answer!r}")
    if seconds is not None:
        seconds = min(max(float(seconds), SECONDS_RANGE[0]), SECONDS_RANGE[1])
    engine = get_engine(annotator.db_url)
    for attempt in range(3):
        try:
            return _record(engine, annotator, item_id, question, answer, seconds, simulated)
        except IntegrityError:
            # Two concurrent submissions of the same vote (PostgreSQL, READ COMMITTED): the loser retries and
            # finds the winner's row.
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _record(engine, annotator, item_id, question, answer, seconds, simulated) -> VoteResult:
    with session(engine, write=True) as s:
        _live_annotator(s, annotator)
        qs = _questions(s, annotator.study_id)
        if question not in qs:
            raise UserError(f"question: study {annotator.study!r} asks {', '.join(qs)}, not {question!r}")
        a = _assignment(s, annotator, item_id)
        vote = s.scalars(select(Vote).where(Vote.annotator_id == annotator.id, Vote.item_id == a.item_id,
                                            Vote.question == question)).first()
        now = utcnow()
        if vote is None:
            item = s.get(Item, a.item_id)
            left, right = (item.model_a, item.model_b) if a.left_is_a else (item.model_b, item.model_a)
            s.add(Vote(study_id=annotator.study_id, annotator_id=annotator.id, item_id=a.item_id, question=question,
                       answer=answer, left_model=left, right_model=right, seconds=seconds, created_at=now,
                       updated_at=now, changes=0, simulated=simulated))
            s.flush()
            status = "recorded"
        elif vote.answer == answer:
            status = "unchanged"
        else:
            audit(s, "vote_changed", annotator.study_id, annotator.id, item_id=a.item_id, question=question,
                  old=vote.answer, new=answer, seconds=seconds)
            vote.answer = answer
            vote.updated_at = now
            vote.changes = (vote.changes or 0) + 1
            status = "changed"
        n_answered = s.scalar(select(func.count()).select_from(Vote).where(Vote.annotator_id == annotator.id,
                                                                           Vote.item_id == a.item_id))
        done, assigned = _counts(s, annotator.id, len(qs))
    return VoteResult(status, int(n_answered) >= len(qs), done, assigned)


__all__ = ["Admin", "Annotator", "DEFAULT_BASE_URL", "ItemView", "Question", "QueueEntry", "StudyCreated",
           "VoteResult", "authenticate", "create_study", "delete_study", "image_bytes", "item_view",
           "mark_guideline_seen", "next_item", "previous_item", "progress", "queue", "record_vote", "revoke"]
