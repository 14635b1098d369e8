"""Statistics of a side-by-side study from its votes frame (docs/FORMATS.md, "Studies"); see docs/statistics.md.

`analyze_votes(votes)` is pure: it takes the frame `k3eval.sbs.votes_frame` returns (or any frame with those
columns) and gives tables. Gold items and swapped repeats feed quality control only; preference, Bradley-Terry and
agreement use regular items. The prompt is the unit of inference: verdicts come from a sign-flip permutation test
over prompts, corrected across the study's comparisons x questions; every interval of one analysis comes from one
seeded resampling (`resampling_scheme` says which), so the tables are mutually consistent and reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from k3eval import stats
from k3eval.errors import UserError
from k3eval.sbs.metric_agreement import (
    ACCURACY_COLUMNS,
    ORDERING_COLUMNS,
    metric_ordering,
    pairwise_accuracy,
    predictor_ranking,
)

ALL = "all"  # the category label of the overall row
RESULTS = ("win", "equal", "both_bad", "loss")
STATS_VERSION = 2  # 2: prompt-level P-values (p_value) replaced the vote-level sign test (sign_p)
MIN_REMAINING = 3  # an --exclude-flagged view with fewer annotators than this carries a warning
REQUIRED_COLUMNS = ("item_id", "prompt_id", "category", "sample", "model_a", "model_b", "question", "answer",
                    "winner", "annotator")
PREFERENCE_COLUMNS = ["comparison", "model_a", "model_b", "question", "category", "n", "n_prompts", *RESULTS,
                      *[f"{r}_share" for r in RESULTS], "win_rate", "win_rate_lo", "win_rate_hi", "score",
                      "score_lo", "score_hi", "score_ci_note", "icc", "design_effect", "p_value", "p_holm", "p_bh",
                      "family", "verdict", "small_sample"]


@dataclass
class StudyStats:
    """Tables of one analysis (each a DataFrame, written as CSV by `write_stats`) and what produced them."""

    preference: pd.DataFrame
    bradley_terry: pd.DataFrame
    agreement: pd.DataFrame
    qc: pd.DataFrame
    metric_agreement: pd.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)
    metric_ordering: pd.DataFrame = field(default_factory=pd.DataFrame)
    metric_ranking: pd.DataFrame = field(default_factory=pd.DataFrame)

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"preference": self.preference, "bradley_terry": self.bradley_terry, "agreement": self.agreement,
                "qc": self.qc, "metric_agreement": self.metric_agreement, "metric_ordering": self.metric_ordering,
                "metric_ranking": self.metric_ranking}


def check_votes_frame(votes: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in REQUIRED_COLUMNS if c not in votes.columns]
    if missing:
        raise UserError(f"votes frame lacks columns {missing}; expected the columns of docs/FORMATS.md (Studies)")
    v = votes.copy()
    for col, default in (("is_gold", False), ("is_repeat", False), ("simulated", False)):
        if col not in v:
            v[col] = default
        v[col] = v[col].fillna(False).astype(bool)
    for col in ("gold_answer", "repeat_of"):
        if col not in v:
            v[col] = None
    if "seconds" not in v:
        v["seconds"] = np.nan
    v["category"] = v["category"].fillna("(none)").astype(str)
    # plain object columns: iterating Arrow-backed strings (pandas' default) element by element is slow
    for col in ("prompt_id", "category", "model_a", "model_b", "question", "answer", "winner", "annotator",
                "left_model", "right_model"):
        if col in v:
            v[col] = v[col].astype(object)
    return v


def outcome_for_a(votes: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(result label, score) of each vote from model_a's side: win 1, equal 0.5, both bad 0.5, loss 0."""
    w = votes["winner"].to_numpy(dtype=object)
    a = votes["model_a"].to_numpy(dtype=object)
    b = votes["model_b"].to_numpy(dtype=object)
    label = np.where(w == a, "win", np.where(w == b, "loss", np.where(w == "tie", "equal", "both_bad")))
    unknown = ~((w == a) | (w == b) | (w == "tie") | (w == "both_bad"))
    if unknown.any():
        raise UserError(f"votes frame: winner {w[unknown][0]!r} is neither model of its comparison nor "
                        "'tie'/'both_bad'")
    score = np.select([label == "win", label == "loss"], [1.0, 0.0], default=0.5)
    return label, score


def regular_votes(votes: pd.DataFrame) -> pd.DataFrame:
    """Votes on regular items (not gold, not repeats), with `result`, `score` and `comparison` added."""
    v = votes[~votes["is_gold"] & ~votes["is_repeat"]].copy()
    label, score = outcome_for_a(v) if len(v) else (np.array([], dtype=object), np.array([]))
    v["result"] = label
    v["score"] = score
    v["comparison"] = (v["model_a"].astype(str) + " vs " + v["model_b"].astype(str)).astype(object)
    return v


def comparison_order(v: pd.DataFrame, comparisons: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    """(model_a, model_b) pairs present in the votes: the study's order first (`comparisons`, as `study_info`
    gives it), then any others in the order of their items (item ids follow the study's design)."""
    present = list(dict.fromkeys(zip(v.sort_values("item_id", kind="stable")["model_a"],
                                     v.sort_values("item_id", kind="stable")["model_b"]))) if len(v) else []
    given = [tuple(c) for c in (comparisons or [])]
    return [c for c in given if c in present] + [c for c in present if c not in given]


def question_order(v: pd.DataFrame, questions: list[str] | None = None) -> list[str]:
    """Questions present in the votes, in the study's order (`questions`) first."""
    present = list(dict.fromkeys(v.sort_values("item_id", kind="stable")["question"])) if len(v) else []
    return [q for q in (questions or []) if q in present] + [q for q in present if q not in (questions or [])]


def resampling_scheme(two_level: bool, n_resamples: int, seed: int) -> str:
    """The one statement of how every interval of an analysis is resampled (summary.json, tables, report)."""
    text = (f"rescaled bootstrap (Rao-Wu, n-1 draws per stratum) of prompts within their category, {n_resamples} "
            f"resamples, seed {seed}")
    if two_level:
        text += "; times a rescaled bootstrap of annotators (two levels)"
    return text + "; shared by preference, Bradley-Terry and metric agreement"


def _cells(v: pd.DataFrame, order: list[tuple[str, str]], questions: list[str]
           ) -> list[tuple[tuple[str, str, str, str, str], np.ndarray]]:
    """(comparison, model_a, model_b, question, category) and row positions, overall ('all') first per pair."""
    out = []
    pos = np.arange(len(v))
    pair_q = v.groupby(["model_a", "model_b", "question"], sort=False).indices
    by_cat = v.groupby(["model_a", "model_b", "question", "category"], sort=False).indices
    for ma, mb in order:
        for q in questions:
            if (ma, mb, q) not in pair_q:
                continue
            key = (f"{ma} vs {mb}", ma, mb, q)
            out.append(((*key, ALL), pos[pair_q[(ma, mb, q)]]))
            for c in sorted(c for (a, b, qq, c) in by_cat if (a, b, qq) == (ma, mb, q)):
                out.append(((*key, c), pos[by_cat[(ma, mb, q, c)]]))
    return out


@dataclass
class _Units:
    """Index of every regular vote's prompt and annotator in the shared resampling."""

    prompt: np.ndarray
    annotator: np.ndarray
    resampling: stats.Resampling


def preference_table(v: pd.DataFrame, units: _Units, order: list[tuple[str, str]], questions: list[str],
                     level: float = 0.95, alpha: float = 0.05, n_flips: int = 10_000, seed: int = 0
                     ) -> pd.DataFrame:
    """One row per comparison x question x category ('all' first), columns `PREFERENCE_COLUMNS`.

    score: tie-as-half score of model_a with its prompt-level interval (`stats.preference_inference`); p_value: its
    prompt-level test of 'score = 1/2'; p_holm / p_bh: adjusted within the row's `family` (overall rows: every
    comparison x question of the study; category rows: the categories of one comparison and question). verdict: the
    better model where p_holm < alpha, else 'no clear difference'. win_rate with a Wilson interval treats votes as
    independent: a descriptive column only. small_sample: fewer prompts than `stats.MIN_INTERVAL_PROMPTS`.
    """
    cells = _cells(v, order, questions)
    if not cells:
        return pd.DataFrame(columns=PREFERENCE_COLUMNS)
    result = v["result"].to_numpy(dtype=object)
    score = v["score"].to_numpy(dtype=np.float64)
    rows, members = [], []
    for c, (key, idx) in enumerate(cells):
        members.append(np.column_stack([idx, np.full(idx.size, c)]))
        n_res = {r: int((result[idx] == r).sum()) for r in RESULTS}
        n = len(idx)
        w, lo_ = n_res["win"], n_res["loss"]
        wr_lo, wr_hi = stats.wilson_ci(w, w + lo_, level)
        rows.append({"comparison": key[0], "model_a": key[1], "model_b": key[2], "question": key[3],
                     "category": key[4], "n": n, **n_res, **{f"{r}_share": n_res[r] / n for r in RESULTS},
                     "win_rate": w / (w + lo_) if w + lo_ else np.nan, "win_rate_lo": wr_lo, "win_rate_hi": wr_hi})
    pairs = np.concatenate(members)
    vote, cell = pairs[:, 0], pairs[:, 1]
    inf = stats.preference_inference(units.prompt[vote], cell, score[vote], len(cells), units.resampling,
                                     annotator_idx=units.annotator[vote], n_flips=n_flips, seed=seed, level=level)
    df = pd.DataFrame(rows)
    df["n_prompts"] = inf.n_prompts
    df["score"], df["score_lo"], df["score_hi"], df["score_ci_note"] = inf.score, inf.lo, inf.hi, inf.ci_note
    df["icc"], df["design_effect"], df["p_value"] = inf.icc, inf.design_effect, inf.p
    overall = (df["category"] == ALL).to_numpy()
    fam = df.loc[overall, ["comparison", "question"]]
    df["family"] = ""
    df.loc[overall, "family"] = (f"study: {fam['comparison'].nunique()} comparisons x "
                                 f"{fam['question'].nunique()} questions")
    df["p_holm"] = np.nan
    df["p_bh"] = np.nan
    groups = [df.index[overall]] + [g.index for _, g in df[~overall].groupby(["comparison", "question"], sort=False)]
    for k, idx in enumerate(groups):
        if k:
            df.loc[idx, "family"] = f"categories of {df.at[idx[0], 'comparison']}, {df.at[idx[0], 'question']}"
        _, df.loc[idx, "p_holm"] = stats.holm(df.loc[idx, "p_value"].to_numpy(), alpha)
        _, df.loc[idx, "p_bh"] = stats.benjamini_hochberg(df.loc[idx, "p_value"].to_numpy(), alpha)
    df["verdict"] = [(r.model_a if r.score > 0.5 else r.model_b) if r.p_holm < alpha else "no clear difference"
                     for r in df.itertuples(index=False)]
    df["small_sample"] = df["n_prompts"] < stats.MIN_INTERVAL_PROMPTS
    out = df[PREFERENCE_COLUMNS].copy()
    out.attrs["test"] = inf.test
    return out


def bradley_terry_table(v: pd.DataFrame, units: _Units, models: list[str], questions: list[str],
                        level: float) -> pd.DataFrame:
    """Bradley-Terry ranking per question (only with 3+ models): strength, Elo with interval, separated rank; the
    interval resamples exactly as the preference table does (the shared `units.resampling`)."""
    frames = []
    for q in questions:
        mask = (v["question"] == q).to_numpy()
        d = v[mask]
        present = set(d["model_a"]) | set(d["model_b"])
        ms = [m for m in models if m in present]
        if len(ms) < 3:
            continue
        res = stats.bradley_terry(d["model_a"], d["model_b"], d["score"], groups=units.prompt[mask], level=level,
                                  models=ms, resampling=units.resampling,
                                  annotators=units.annotator[mask] if units.resampling.annotator is not None
                                  else None)
        f = res.frame()
        f.insert(0, "question", q)
        f["n_votes"] = res.n_votes
        frames.append(f)
    cols = ["question", "model", "strength", "elo", "elo_lo", "elo_hi", "rank", "n_votes"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)


AGREEMENT_STATS = ("raw_agreement", "majority_agreement", "krippendorff_alpha", "fleiss_kappa")


def _agreement_row(d: pd.DataFrame, n_resamples: int, seed: int, level: float) -> dict[str, Any]:
    result = d["result"].to_numpy(dtype=object)
    # Raw agreement and Fleiss' kappa use the four answers as given (nominal, from model_a's side); alpha uses the
    # ordinal scale b better < equal (or both bad) < a better, so 'equal' vs 'a better' is a smaller disagreement
    # than 'b better' vs 'a better'.
    ordinal = d.assign(value=np.select([result == "win", result == "loss"], [2.0, 0.0], default=1.0))
    nominal = d.assign(value=np.select([result == r for r in RESULTS], [float(k) for k in range(len(RESULTS))]))
    o_matrix, _, _ = stats.ratings_matrix(ordinal, item="item_id", rater="annotator", value="value")
    n_matrix, _, _ = stats.ratings_matrix(nominal, item="item_id", rater="annotator", value="value")
    per_item = (~np.isnan(n_matrix)).sum(axis=0)
    pairable = per_item >= 2
    row: dict[str, Any] = {"n_items": int(pairable.sum()), "n_ratings": int(per_item[pairable].sum())}
    if not pairable.any():
        row.update({k: np.nan for s in AGREEMENT_STATS for k in (s, f"{s}_lo", f"{s}_hi")})
        row.update(fleiss_items=0, fleiss_note="no item has two ratings")
        return row
    # only items with two or more ratings carry agreement: resample those
    parts = stats.agreement_parts(n_matrix[:, pairable], o_matrix[:, pairable], [0.0, 1.0, 2.0])
    point = stats.agreement_values(parts, np.ones((1, parts.n_items)))
    chunks = []
    step = max(1, 2_000_000 // parts.n_items)  # bounds the (resamples x items) weights in memory
    for b0 in range(0, n_resamples, step):
        w = stats.rescaled_resample_weights(np.zeros(parts.n_items), min(step, n_resamples - b0), [seed, b0])
        chunks.append(stats.agreement_values(parts, w))
    for s in AGREEMENT_STATS:
        lo, hi = stats.percentile_ci(np.concatenate([c[s] for c in chunks])[:, None], level)
        row.update({s: float(point[s][0]), f"{s}_lo": float(lo[0]), f"{s}_hi": float(hi[0])})
    k = int(parts.fleiss_table[0].sum()) if len(parts.fleiss_table) else 0
    n_fleiss = int(parts.fleiss_items.sum())
    row["fleiss_items"] = n_fleiss
    row["fleiss_note"] = (f"all items, {k} ratings each" if n_fleiss == parts.n_items else
                          f"{n_fleiss} of {parts.n_items} items (those with {k} ratings)")
    return row


AGREEMENT_COLUMNS = ["comparison", "question", "n_items", "n_ratings",
                     *[k for s in AGREEMENT_STATS for k in (s, f"{s}_lo", f"{s}_hi")], "fleiss_items", "fleiss_note"]


def agreement_table(v: pd.DataFrame, order: list[tuple[str, str]], questions: list[str], n_resamples: int = 1000,
                    seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Inter-annotator agreement per comparison and question, and pooled over comparisons per question, each with
    a percentile interval from a rescaled bootstrap of items (items with two or more ratings)."""
    rows = []
    names = [f"{a} vs {b}" for a, b in order]
    for q in questions:
        dq = v[v["question"] == q]
        rows.append({"comparison": ALL, "question": q, **_agreement_row(dq, n_resamples, seed, level)})
        for comp in names:
            d = dq[dq["comparison"] == comp]
            if len(d):
                rows.append({"comparison": comp, "question": q, **_agreement_row(d, n_resamples, seed, level)})
    return pd.DataFrame(rows, columns=AGREEMENT_COLUMNS)


def load_metric_scores(runs: dict[str, str | Path], metric: str = "clip_score") -> pd.DataFrame:
    """Per-image scores stored by `k3eval score` (RUN/scores/per_image.parquet) for each run that has them:
    columns model, prompt_id, sample, <metric>. Runs without that file or column are skipped (never recomputed)."""
    frames = []
    for name, path in runs.items():
        p = Path(path) / "scores" / "per_image.parquet"
        if not p.exists():
            continue
        df = pd.read_parquet(p)
        if metric not in df or "prompt_id" not in df:
            continue
        frames.append(pd.DataFrame({"model": name, "prompt_id": df["prompt_id"].astype(str),
                                    "sample": df["sample"].astype("int64") if "sample" in df else 0,
                                    metric: df[metric].astype("float64")}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["model", "prompt_id", "sample",
                                                                                     metric])


def _units(v: pd.DataFrame, n_resamples: int, seed: int, two_level: bool) -> _Units:
    """The shared resampling of a regular-votes frame: prompts within their category (and annotators)."""
    prompts = v[["prompt_id", "category"]].drop_duplicates("prompt_id")
    p_codes = pd.Index(prompts["prompt_id"]).get_indexer(v["prompt_id"])
    a_codes, annotators = pd.factorize(v["annotator"], sort=True)
    res = stats.prompt_resampling(prompts["category"].to_numpy(), n_resamples, seed,
                                  n_annotators=len(annotators) if two_level else None)
    return _Units(p_codes.astype(np.int64), a_codes.astype(np.int64), res)


def analyze_votes(votes: pd.DataFrame, metric_scores: pd.DataFrame | None = None, *, exclude_flagged: bool = False,
                  n_resamples: int = 1000, seed: int = 0, level: float = 0.95, alpha: float = 0.05,
                  qc_config: stats.QCConfig | None = None, two_level: bool = False,
                  comparisons: list[tuple[str, str]] | None = None, questions: list[str] | None = None,
                  n_flips: int = 10_000) -> StudyStats:
    """Every table of a study's statistics from its votes frame.

    metric_scores: the per-image automatic scores of the study's images (`k3eval.sbs.metric_agreement.
    load_image_scores`, or a wide frame of one column per metric) for the metric-vs-people tables.
    exclude_flagged: drop the votes of annotators flagged by quality control before computing preference,
    Bradley-Terry, agreement and metric agreement (the QC table always covers everyone). n_resamples, seed, level:
    of every bootstrap; two_level: resample annotators as well as prompts (and test by bootstrap); alpha: the level of
    the tests and their corrections; n_flips: random sign patterns of the permutation test. comparisons, questions:
    the study's order (`study_info`), kept in every table.
    """
    if n_resamples < 1:
        raise UserError(f"n_resamples must be at least 1, got {n_resamples}")
    if n_flips < 1:
        raise UserError(f"n_flips must be at least 1, got {n_flips}")
    v_all = check_votes_frame(votes)
    qc = stats.quality_control(v_all, qc_config)
    flagged = sorted(qc.loc[qc["flagged"], "annotator"].astype(str)) if len(qc) else []
    v_used = v_all[~v_all["annotator"].isin(flagged)] if exclude_flagged else v_all
    v = regular_votes(v_used)
    order = comparison_order(v, comparisons)
    qs = question_order(v, questions)
    n_annotators = int(v["annotator"].nunique())
    if two_level and len(v) and n_annotators < 2:
        raise UserError(f"--two-level: resampling annotators needs at least 2 annotators with votes, got "
                        f"{n_annotators}")
    units = _units(v, n_resamples, seed, two_level) if len(v) else None
    if units is not None:
        pref = preference_table(v, units, order, qs, level, alpha, n_flips, seed)
        models = list(dict.fromkeys(m for pair in order for m in pair))
        bt = bradley_terry_table(v, units, models, qs, level)
        metric = pairwise_accuracy(v, metric_scores, units, order, qs, level)
        ordering = metric_ordering(v, metric_scores, pref, n_resamples, seed, level)
    else:
        pref = pd.DataFrame(columns=PREFERENCE_COLUMNS)
        bt = bradley_terry_table(v, units, [], qs, level)
        metric = pd.DataFrame(columns=ACCURACY_COLUMNS)
        ordering = pd.DataFrame(columns=ORDERING_COLUMNS)
    agree = agreement_table(v, order, qs, n_resamples, seed, level)
    all_models = list(dict.fromkeys([*v_all["model_a"], *v_all["model_b"]]))
    n_people = int(v_all["annotator"].nunique())
    summary = {
        "stats_version": STATS_VERSION,
        "n_votes": int(len(v_all)), "n_votes_used": int(len(v)),
        "n_gold_votes": int(v_all["is_gold"].sum()), "n_repeat_votes": int(v_all["is_repeat"].sum()),
        "n_annotators": n_people, "flagged_annotators": flagged,
        "exclude_flagged": exclude_flagged, "n_annotators_used": n_people - len(flagged) if exclude_flagged
        else n_people, "simulated": bool(v_all["simulated"].any()),
        "questions": qs, "models": [m for m in all_models if not str(m).startswith("<gold")],
        "comparisons": [f"{a} vs {b}" for a, b in order],
        "n_prompts": int(v["prompt_id"].nunique()) if len(v) else 0, "n_resamples": n_resamples, "seed": seed,
        "level": level, "alpha": alpha, "two_level": two_level, "n_flips": n_flips,
        "min_interval_prompts": stats.MIN_INTERVAL_PROMPTS,
        "bootstrap": resampling_scheme(two_level, n_resamples, seed),
        "test": pref.attrs.get("test", ""),
        "agreement_bootstrap": f"rescaled bootstrap of items with 2+ ratings, {n_resamples} resamples, seed {seed}",
        "multiplicity": "overall rows: Holm (verdict) and Benjamini-Hochberg across every comparison x question of "
                        "the study; category rows: across the categories of one comparison and question",
        "metric_agreement": "pairwise accuracy over votes with a winner ('equal' and 'both bad' left out); a metric "
                            "tie (equal scores) counts half; intervals from the shared prompt resampling",
    }
    return StudyStats(pref, bt, agree, qc, metric, summary, ordering, predictor_ranking(metric, ordering))


def exclusion_warning(result: StudyStats) -> str:
    """'' or a warning when an --exclude-flagged view keeps fewer than MIN_REMAINING annotators."""
    s = result.summary
    if not s.get("exclude_flagged"):
        return ""
    left = s["n_annotators_used"]
    if left < MIN_REMAINING:
        return (f"WARNING: without the {len(s['flagged_annotators'])} flagged annotators only {left} of "
                f"{s['n_annotators']} remain (fewer than {MIN_REMAINING}): agreement and verdicts rest on too few "
                "people")
    return ""


def write_stats(result: StudyStats, out_dir: str | Path, suffix: str = "") -> list[Path]:
    """Write every table as CSV (`<table><suffix>.csv`) and the summary as JSON into out_dir, atomically."""
    from k3eval.utils import atomic_write_json, atomic_write_text

    out = Path(out_dir)
    paths = []
    for name, df in result.tables().items():
        p = out / f"{name}{suffix}.csv"
        atomic_write_text(p, df.to_csv(index=False))
        paths.append(p)
    p = out / f"summary{suffix}.json"
    atomic_write_json(p, result.summary)
    paths.append(p)
    return paths


def format_interval(x: float, lo: float, hi: float, digits: int = 2) -> str:
    """'0.59 [0.53, 0.65]'; the value alone when there is no interval; 'n/a' without a value."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return f"{x:.{digits}f}"
    return f"{x:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def format_p(p: float) -> str:
    return "n/a" if p is None or (isinstance(p, float) and math.isnan(p)) else f"{p:.2g}"


def format_overview(result: StudyStats) -> str:
    """A short plain-text overview for the terminal: the overall row of each comparison and the ranking."""
    pref = result.preference
    if pref.empty:
        return "no votes on regular items yet"
    s = result.summary
    lines = [f"{'comparison':<36} {'question':<10} {'score [95% CI]':<20} {'win/tie/bad/loss %':<19} "
             f"{'prompts':>7} {'votes':>6} {'p (Holm)':>8}  verdict"]
    for r in pref[pref["category"] == ALL].itertuples(index=False):
        shares = "/".join(f"{100 * getattr(r, f'{k}_share'):.0f}" for k in RESULTS)
        lines.append(f"{r.comparison[:36]:<36} {r.question[:10]:<10} "
                     f"{format_interval(r.score, r.score_lo, r.score_hi):<20} {shares:<19} {r.n_prompts:>7} "
                     f"{r.n:>6} {format_p(r.p_holm):>8}  {r.verdict}")
    lines.append(f"score: tie-as-half score of the first model; P-values: {s['test']}, Holm-adjusted across "
                 f"{pref['family'].iloc[0]}; intervals: {s['bootstrap']}")
    for r in result.bradley_terry.itertuples(index=False):
        lines.append(f"BT {r.question:<10} #{r.rank} {r.model:<30} Elo {r.elo:.0f} [{r.elo_lo:.0f}, {r.elo_hi:.0f}]")
    for r in result.metric_ranking.itertuples(index=False):
        lines.append(f"metric vs people, {r.question:<10} #{r.rank} {r.display_name:<16} pairwise accuracy "
                     f"{format_interval(r.accuracy, r.accuracy_lo, r.accuracy_hi)} over {r.n} votes; orders "
                     f"{r.ordered_like_people} of {r.comparisons} comparisons as people did")
    flagged = s.get("flagged_annotators") or []
    lines.append(f"flagged annotators: {', '.join(flagged) if flagged else 'none'}")
    if s.get("exclude_flagged"):
        lines.append(f"left out: {len(flagged)} flagged annotators; {s['n_annotators_used']} of {s['n_annotators']} "
                     "remain")
        if exclusion_warning(result):
            lines.append(exclusion_warning(result))
    return "\n".join(lines)


__all__ = [
    "ALL", "MIN_REMAINING", "PREFERENCE_COLUMNS", "RESULTS", "STATS_VERSION", "StudyStats", "agreement_table",
    "analyze_votes", "bradley_terry_table", "check_votes_frame", "comparison_order", "exclusion_warning",
    "format_interval", "format_overview", "format_p", "load_metric_scores",
    "outcome_for_a", "preference_table", "question_order", "regular_votes", "resampling_scheme", "write_stats",
]
