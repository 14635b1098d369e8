"""Reading a study back: the votes frame and study facts (docs/FORMATS.md, "Studies"), export to parquet/csv, and
the admin overview (progress, gold accuracy, self-consistency and quality flags per annotator)."""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from k3eval.errors import UserError
from k3eval.sbs.store import (
    AnnotatorRow,
    Assignment,
    AuditLog,
    Item,
    Run,
    Vote,
    audit,
    find_study,
    get_engine,
    normalize_url,
    session,
)

VOTE_COLUMNS = ["study", "item_id", "prompt_id", "category", "sample", "model_a", "model_b", "left_model",
                "right_model", "question", "answer", "winner", "annotator", "seconds", "created_at", "is_gold",
                "gold_answer", "is_repeat", "repeat_of", "simulated"]
# Extra columns (FORMATS.md allows additions): kind of item, queue position (1-based), times the answer was changed.
EXTRA_COLUMNS = ["item_kind", "position", "changes", "updated_at"]

def _study_name(study) -> str:
    return study if isinstance(study, str) else study.study


def votes_frame(study, db_url: str | None = None):
    """One row per vote of `study` (a name, or an Admin), columns as in docs/FORMATS.md plus EXTRA_COLUMNS.

    winner: the model chosen, 'tie' for equal, 'both_bad'. gold_answer: the expected answer ('left'/'right') on the
    gold item's gold question, else null. created_at/updated_at: UTC timestamps.
    """
    import pandas as pd

    name = _study_name(study)
    engine = get_engine(db_url or getattr(study, "db_url", None))
    with session(engine) as s:
        st = find_study(s, name)
        rows = s.execute(
            select(Vote, Item, AnnotatorRow.name, Assignment.left_is_a, Assignment.position)
            .join(Item, Item.id == Vote.item_id)
            .join(AnnotatorRow, AnnotatorRow.id == Vote.annotator_id)
            .join(Assignment, (Assignment.annotator_id == Vote.annotator_id) & (Assignment.item_id == Vote.item_id))
            .where(Vote.study_id == st.id).order_by(Vote.id)).all()
    records = []
    for v, it, ann, left_is_a, pos in rows:
        if v.answer == "left":
            winner = v.left_model
        elif v.answer == "right":
            winner = v.right_model
        else:
            winner = "tie" if v.answer == "equal" else "both_bad"
        gold_answer = None
        if it.kind == "gold" and it.gold_question == v.question:
            a_is_answer = it.gold_answer == "a"
            gold_answer = "left" if a_is_answer == bool(left_is_a) else "right"
        records.append({
            "study": name, "item_id": int(it.id), "prompt_id": it.prompt_id, "category": it.category,
            "sample": int(it.sample), "model_a": it.model_a, "model_b": it.model_b, "left_model": v.left_model,
            "right_model": v.right_model, "question": v.question, "answer": v.answer, "winner": winner,
            "annotator": ann, "seconds": v.seconds, "created_at": v.created_at, "is_gold": it.kind == "gold",
            "gold_answer": gold_answer, "is_repeat": it.kind == "repeat", "repeat_of": it.repeat_of,
            "simulated": bool(v.simulated), "item_kind": it.kind, "position": int(pos) + 1,
            "changes": int(v.changes or 0), "updated_at": v.updated_at,
        })
    df = pd.DataFrame.from_records(records, columns=VOTE_COLUMNS + EXTRA_COLUMNS)
    for col in ("created_at", "updated_at"):
        df[col] = pd.to_datetime(df[col], utc=True)
    df["seconds"] = df["seconds"].astype("float64")
    df["repeat_of"] = df["repeat_of"].astype("Int64")
    for col in ("is_gold", "is_repeat", "simulated"):
        df[col] = df[col].astype(bool)
    for col in ("item_id", "sample", "position", "changes"):
        df[col] = df[col].astype("int64")
    return df


def study_info(study, db_url: str | None = None) -> dict[str, Any]:
    """Facts about a study: name, questions, runs {name: path}, prompt_set, prompt_set_hash, created (ISO),
    simulated (the study was made by simulation or holds simulated votes), n_items (regular + gold), n_annotators,
    overlap, plus comparisons, reference, seed, gold, repeats, n_gold, n_repeats, n_votes, n_expected_votes (every
    assignment x question: the votes of a complete study), and pairing (mode 'seed', 'prompt' or 'unpaired', see
    `k3eval.sbs.design.pairing_of`; None for studies made before it)."""
    name = _study_name(study)
    url = normalize_url(db_url or getattr(study, "db_url", None))
    engine = get_engine(url)
    with session(engine) as s:
        st = find_study(s, name)
        runs = s.execute(select(Run.name, Run.path).where(Run.study_id == st.id).order_by(Run.position)).all()
        kinds = dict(s.execute(select(Item.kind, func.count()).where(Item.study_id == st.id)
                               .group_by(Item.kind)).all())
        n_ann = s.scalar(select(func.count()).select_from(AnnotatorRow)
                         .where(AnnotatorRow.study_id == st.id, AnnotatorRow.role == "annotator"))
        n_votes = s.scalar(select(func.count()).select_from(Vote).where(Vote.study_id == st.id))
        any_sim = s.scalar(select(func.count()).select_from(Vote).where(Vote.study_id == st.id,
                                                                        Vote.simulated.is_(True)))
        n_assigned = s.scalar(select(func.count()).select_from(Assignment).where(Assignment.study_id == st.id))
        return {
            "name": st.name, "questions": list(st.questions), "runs": {n: p for n, p in runs},
            "prompt_set": st.prompt_set, "prompt_set_hash": st.prompt_set_hash,
            "created": _utc(st.created_at).isoformat(), "simulated": bool(st.simulated or any_sim),
            "n_items": int(kinds.get("regular", 0) + kinds.get("gold", 0)), "n_annotators": int(n_ann),
            "overlap": st.overlap, "comparisons": [tuple(c) for c in (st.info or {}).get("comparisons", [])],
            "reference": st.reference, "seed": st.seed, "gold": st.gold, "repeats": st.repeats,
            "n_gold": int(kinds.get("gold", 0)), "n_repeats": int(kinds.get("repeat", 0)), "n_votes": int(n_votes),
            "n_expected_votes": int(n_assigned) * len(st.questions),
            "pairing": (st.info or {}).get("pairing"),
            "db_url": engine.url.render_as_string(hide_password=True),
        }


def _utc(t):
    # SQLite hands timestamps back without their zone; they were stored in UTC.
    from datetime import timezone

    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t


def export_votes(study, out: str | Path, db_url: str | None = None) -> Path:
    """Write the votes frame to `out` (.parquet or .csv) atomically and log the export; returns the path."""
    from k3eval.utils import atomic_write_bytes

    out = Path(out)
    fmt = out.suffix.lower()
    if fmt not in (".parquet", ".csv"):
        raise UserError(f"--out: expected a .parquet or .csv file name, got {str(out)!r}")
    df = votes_frame(study, db_url)
    buf = io.BytesIO()
    if fmt == ".parquet":
        df.to_parquet(buf, index=False)
    else:
        buf.write(df.to_csv(index=False).encode("utf-8"))
    atomic_write_bytes(out, buf.getvalue())
    engine = get_engine(db_url or getattr(study, "db_url", None))
    with session(engine, write=True) as s:
        st = find_study(s, _study_name(study))
        audit(s, "export", st.id, getattr(study, "id", None), path=str(out), rows=len(df))
    return out


# ---- admin overview ---------------------------------------------------------------------------------------------
@dataclass
class AnnotatorStats:
    name: str
    done: int
    assigned: int
    votes: int
    revoked: bool
    gold_correct: int
    gold_total: int
    gold_accuracy: float | None
    repeat_agree: int
    repeat_total: int
    repeat_agreement: float | None
    median_seconds: float | None
    left_share: float | None  # left / (left + right)
    left_bias_p: float | None
    longest_run: int
    last_vote: str | None
    flags: list[str] = field(default_factory=list)


@dataclass
class AdminOverview:
    study: str
    questions: list[str]
    n_items: int
    overlap: int
    votes: int
    expected_votes: int  # assignments x questions
    annotators: list[AnnotatorStats]
    logins: int
    exports: int

    def frame(self):
        """One row per annotator (flags joined by ', '), for a table."""
        import pandas as pd

        rows = [{**asdict(a), "flags": ", ".join(a.flags)} for a in self.annotators]
        return pd.DataFrame(rows)


def admin_overview(study, db_url: str | None = None) -> AdminOverview:
    """Progress, gold accuracy, self-consistency on swapped repeats and flags per annotator.

    study: a name or an Admin. The figures and flags come from `k3eval.stats.quality_control`, the one rule set
    `sbs stats` and the report use (`k3eval.stats.qc_rules` says each rule in words); flags are never automatic
    exclusions. 'revoked' is added for a revoked token.
    """
    from k3eval.stats import quality_control

    name = _study_name(study)
    url = db_url or getattr(study, "db_url", None)
    df = votes_frame(name, url)
    engine = get_engine(url)
    with session(engine) as s:
        st = find_study(s, name)
        people = s.execute(select(AnnotatorRow.id, AnnotatorRow.name, AnnotatorRow.revoked_at)
                           .where(AnnotatorRow.study_id == st.id, AnnotatorRow.role == "annotator")
                           .order_by(AnnotatorRow.name)).all()
        assigned = dict(s.execute(select(Assignment.annotator_id, func.count()).where(Assignment.study_id == st.id)
                                  .group_by(Assignment.annotator_id)).all())
        n_items = s.scalar(select(func.count()).select_from(Item).where(Item.study_id == st.id,
                                                                         Item.kind != "repeat"))
        events = dict(s.execute(select(AuditLog.event, func.count()).where(AuditLog.study_id == st.id)
                                .group_by(AuditLog.event)).all())
        questions = list(st.questions)
        overlap = st.overlap
    nq = len(questions)
    qc = quality_control(df).set_index("annotator") if len(df) else None
    stats = []
    for pid, pname, revoked in people:
        d = df[df["annotator"] == pname]
        done = int((d.groupby("item_id").size() >= nq).sum()) if len(d) else 0
        r = qc.loc[pname] if qc is not None and pname in qc.index else None

        def fig(col: str, r=r):
            return None if r is None or r[col] != r[col] else r[col]  # nan (no such votes) -> None

        a = AnnotatorStats(
            name=pname, done=done, assigned=int(assigned.get(pid, 0)), votes=len(d), revoked=revoked is not None,
            gold_correct=int(fig("gold_correct") or 0), gold_total=int(fig("gold_n") or 0),
            gold_accuracy=fig("gold_accuracy"), repeat_agree=int(fig("repeat_consistent") or 0),
            repeat_total=int(fig("repeat_n") or 0), repeat_agreement=fig("self_consistency"),
            median_seconds=fig("median_seconds"), left_share=fig("left_share"), left_bias_p=fig("position_p_holm"),
            longest_run=int(fig("longest_run") or 0), last_vote=d["created_at"].max().isoformat() if len(d) else None)
        if revoked is not None:
            a.flags.append("revoked")
        if r is not None and r["flags"]:
            a.flags += r["flags"].split(", ")
        stats.append(a)
    return AdminOverview(name, questions, int(n_items), overlap, len(df), sum(assigned.values()) * nq, stats,
                         int(events.get("login", 0)), int(events.get("export", 0)))


__all__ = ["AdminOverview", "AnnotatorStats", "EXTRA_COLUMNS", "VOTE_COLUMNS", "admin_overview", "export_votes",
           "study_info", "votes_frame"]
