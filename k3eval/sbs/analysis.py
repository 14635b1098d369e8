"""Statistics of a side-by-side study from its votes frame (docs/FORMATS.md, "Studies"); see docs/statistics.md.

`analyze_votes(votes)` is pure: it takes the frame `k3eval.sbs.votes_frame` returns (or any frame with those
columns) and gives tables. Gold items and swapped repeats feed quality control only; preference, Bradley-Terry and
agreement use regular items. Every bootstrap resamples prompts within their category, with one seeded draw shared by
all tables, so the intervals of one analysis are mutually consistent and reproducible.
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

ALL = "all"  # the category label of the overall row
RESULTS = ("win", "equal", "both_bad", "loss")
SMALL_NON_TIE = 30  # fewer non-tie votes than this: the row carries a small-sample warning
REQUIRED_COLUMNS = ("item_id", "prompt_id", "category", "sample", "model_a", "model_b", "question", "answer",
                    "winner", "annotator")


@dataclass
class StudyStats:
    """Tables of one analysis (each a DataFrame, written as CSV by `write_stats`) and what produced them."""

    preference: pd.DataFrame
    bradley_terry: pd.DataFrame
    agreement: pd.DataFrame
    qc: pd.DataFrame
    metric_agreement: pd.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"preference": self.preference, "bradley_terry": self.bradley_terry, "agreement": self.agreement,
                "qc": self.qc, "metric_agreement": self.metric_agreement}


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


def _cells(v: pd.DataFrame) -> list[tuple[tuple[str, str, str, str, str], np.ndarray]]:
    """(comparison, model_a, model_b, question, category) and row positions, overall ('all') first per pair."""
    out = []
    pos = np.arange(len(v))
    pair_q = v.groupby(["model_a", "model_b", "question"], sort=False).indices
    by_cat = v.groupby(["model_a", "model_b", "question", "category"], sort=False).indices
    order = list(dict.fromkeys(zip(v["model_a"], v["model_b"])))
    for ma, mb in order:
        for q in sorted(v["question"].unique()):
            if (ma, mb, q) not in pair_q:
                continue
            key = (f"{ma} vs {mb}", ma, mb, q)
            out.append(((*key, ALL), pos[pair_q[(ma, mb, q)]]))
            cats = sorted(c for (a, b, qq, c) in by_cat if (a, b, qq) == (ma, mb, q))
            for c in cats:
                out.append(((*key, c), pos[by_cat[(ma, mb, q, c)]]))
    return out


def preference_table(v: pd.DataFrame, weights: np.ndarray, prompt_index: dict[str, int], level: float = 0.95,
                     alpha: float = 0.05) -> pd.DataFrame:
    """One row per comparison x question x category ('all' first): counts, shares, win rate without ties with its
    Wilson interval, tie-as-half score with its prompt-bootstrap interval, sign test, and per-category Holm / BH
    adjusted P-values (the family is the categories of one comparison and question). `verdict` names the better
    model when the (adjusted, for categories) sign test rejects at `alpha`."""
    cells = _cells(v)
    n_groups = weights.shape[1]
    pid = v["prompt_id"].map(prompt_index).to_numpy(dtype=np.int64) if len(v) else np.array([], dtype=np.int64)
    sums = np.zeros((n_groups, len(cells)))
    counts = np.zeros((n_groups, len(cells)))
    score = v["score"].to_numpy(dtype=np.float64)
    result = v["result"].to_numpy(dtype=object)
    rows = []
    prompt_ids = v["prompt_id"].to_numpy(dtype=object)
    for c, (key, idx) in enumerate(cells):
        sums[:, c] = np.bincount(pid[idx], weights=score[idx], minlength=n_groups)
        counts[:, c] = np.bincount(pid[idx], minlength=n_groups)
        n_res = {r: int((result[idx] == r).sum()) for r in RESULTS}
        n = len(idx)
        w, lo_ = n_res["win"], n_res["loss"]
        wr_lo, wr_hi = stats.wilson_ci(w, w + lo_, level)
        rows.append({"comparison": key[0], "model_a": key[1], "model_b": key[2], "question": key[3],
                     "category": key[4], "n": n, "n_prompts": len(set(prompt_ids[idx])),
                     **n_res, **{f"{r}_share": n_res[r] / n for r in RESULTS},
                     "win_rate": w / (w + lo_) if w + lo_ else np.nan, "win_rate_lo": wr_lo, "win_rate_hi": wr_hi,
                     "score": float(score[idx].mean())})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df["sign_p"] = stats.sign_test(df["win"].to_numpy(), df["loss"].to_numpy())
    df["score_lo"], df["score_hi"] = stats.ratio_bootstrap_ci(weights, sums, counts, level)
    df["p_holm"] = np.nan
    df["p_bh"] = np.nan
    for _, grp in df[df["category"] != ALL].groupby(["comparison", "question"], sort=False):
        _, adj_h = stats.holm(grp["sign_p"].to_numpy(), alpha)
        _, adj_b = stats.benjamini_hochberg(grp["sign_p"].to_numpy(), alpha)
        df.loc[grp.index, "p_holm"] = adj_h
        df.loc[grp.index, "p_bh"] = adj_b
    overall = df["category"] == ALL
    df.loc[overall, "p_holm"] = df.loc[overall, "sign_p"]
    df.loc[overall, "p_bh"] = df.loc[overall, "sign_p"]
    verdict = []
    for r in df.itertuples(index=False):
        if r.p_holm < alpha:
            verdict.append(r.model_a if r.win > r.loss else r.model_b)
        else:
            verdict.append("no clear difference")
    df["verdict"] = verdict
    df["small_sample"] = (df["win"] + df["loss"]) < SMALL_NON_TIE
    cols = ["comparison", "model_a", "model_b", "question", "category", "n", "n_prompts", *RESULTS,
            *[f"{r}_share" for r in RESULTS], "win_rate", "win_rate_lo", "win_rate_hi", "score", "score_lo",
            "score_hi", "sign_p", "p_holm", "p_bh", "verdict", "small_sample"]
    return df[cols]


def bradley_terry_table(v: pd.DataFrame, n_resamples: int, seed: int, level: float) -> pd.DataFrame:
    """Bradley-Terry ranking per question (only with 3+ models): strength, Elo with interval, separated rank."""
    frames = []
    for q in sorted(v["question"].unique()):
        d = v[v["question"] == q]
        models = list(dict.fromkeys([*d["model_a"], *d["model_b"]]))
        if len(models) < 3:
            continue
        res = stats.bradley_terry(d["model_a"], d["model_b"], d["score"], groups=d["prompt_id"],
                                  n_resamples=n_resamples, seed=seed, level=level, models=models)
        f = res.frame()
        f.insert(0, "question", q)
        f["n_votes"] = res.n_votes
        frames.append(f)
    cols = ["question", "model", "strength", "elo", "elo_lo", "elo_hi", "rank", "n_votes"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)


def _agreement_row(d: pd.DataFrame) -> dict[str, Any]:
    result = d["result"].to_numpy(dtype=object)
    ratings = d.assign(value=np.select([result == "win", result == "loss"], [2.0, 0.0], default=1.0))
    matrix, _, _ = stats.ratings_matrix(ratings, item="item_id", rater="annotator", value="value")
    per_item = (~np.isnan(matrix)).sum(axis=0)
    pairable = int((per_item >= 2).sum())
    # Raw agreement and Fleiss' kappa use the four answers as given (nominal, from model_a's side); alpha uses the
    # ordinal scale b better < equal (or both bad) < a better, so 'equal' vs 'a better' is a smaller disagreement
    # than 'b better' vs 'a better'.
    nominal = d.assign(value=np.select([result == r for r in RESULTS], [float(k) for k in range(len(RESULTS))]))
    nom_matrix, _, _ = stats.ratings_matrix(nominal, item="item_id", rater="annotator", value="value")
    row: dict[str, Any] = {"n_items": pairable, "n_ratings": int(per_item[per_item >= 2].sum()),
                           "raw_agreement": stats.raw_agreement(nom_matrix),
                           "majority_agreement": stats.majority_agreement(nom_matrix)[0],
                           "krippendorff_alpha": stats.krippendorff_alpha(matrix, "ordinal", value_domain=[0, 1, 2])
                           if pairable else np.nan}
    if pairable:
        k = int(pd.Series(per_item[per_item >= 2]).mode().iloc[0])
        use = per_item == k
        table = np.stack([(nom_matrix[:, use] == code).sum(axis=0) for code in range(len(RESULTS))], axis=1)
        row["fleiss_kappa"] = stats.fleiss_kappa(table)
        row["fleiss_items"] = int(use.sum())
        row["fleiss_note"] = (f"all items, {k} ratings each" if use.sum() == pairable else
                              f"{int(use.sum())} of {pairable} items (those with {k} ratings)")
    else:
        row.update(fleiss_kappa=np.nan, fleiss_items=0, fleiss_note="no item has two ratings")
    return row


def agreement_table(v: pd.DataFrame) -> pd.DataFrame:
    """Inter-annotator agreement per comparison and question, and pooled over comparisons per question."""
    rows = []
    for q in sorted(v["question"].unique()):
        dq = v[v["question"] == q]
        rows.append({"comparison": ALL, "question": q, **_agreement_row(dq)})
        for comp, d in dq.groupby("comparison", sort=False):
            rows.append({"comparison": comp, "question": q, **_agreement_row(d)})
    cols = ["comparison", "question", "n_items", "n_ratings", "raw_agreement", "majority_agreement",
            "krippendorff_alpha", "fleiss_kappa", "fleiss_items", "fleiss_note"]
    return pd.DataFrame(rows, columns=cols)


def metric_agreement_table(v: pd.DataFrame, metric_scores: pd.DataFrame | None, metric: str = "clip_score",
                           level: float = 0.95) -> pd.DataFrame:
    """How often the image with the higher automatic score is the one people chose, per comparison and question.

    metric_scores: columns model, prompt_id, sample, <metric> (what `load_metric_scores` returns). Only votes with a
    winner count; votes where both images score exactly the same are left out. Wilson interval on the share.
    """
    cols = ["comparison", "question", "metric", "n", "agree", "share", "share_lo", "share_hi"]
    if metric_scores is None or metric_scores.empty or metric not in metric_scores or v.empty:
        return pd.DataFrame(columns=cols)
    key = metric_scores.set_index(["model", "prompt_id", "sample"])[metric]
    key = key[~key.index.duplicated(keep="last")]
    d = v[v["result"].isin(["win", "loss"])].copy()
    idx_a = pd.MultiIndex.from_arrays([d["model_a"], d["prompt_id"], d["sample"].astype("int64")])
    idx_b = pd.MultiIndex.from_arrays([d["model_b"], d["prompt_id"], d["sample"].astype("int64")])
    d["m_a"] = key.reindex(idx_a).to_numpy(dtype=np.float64)
    d["m_b"] = key.reindex(idx_b).to_numpy(dtype=np.float64)
    d = d[np.isfinite(d["m_a"]) & np.isfinite(d["m_b"]) & (d["m_a"] != d["m_b"])]
    d["agree"] = (d["m_a"] > d["m_b"]) == (d["result"] == "win")
    rows = []
    for q in sorted(d["question"].unique()):
        dq = d[d["question"] == q]
        groups = [(ALL, dq), *dq.groupby("comparison", sort=False)]
        for comp, g in groups:
            n, k = len(g), int(g["agree"].sum())
            lo, hi = stats.wilson_ci(k, n, level)
            rows.append({"comparison": comp, "question": q, "metric": metric, "n": n, "agree": k,
                         "share": k / n if n else np.nan, "share_lo": lo, "share_hi": hi})
    return pd.DataFrame(rows, columns=cols)


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


def analyze_votes(votes: pd.DataFrame, metric_scores: pd.DataFrame | None = None, *, exclude_flagged: bool = False,
                  n_resamples: int = 1000, seed: int = 0, level: float = 0.95, alpha: float = 0.05,
                  qc_config: stats.QCConfig | None = None) -> StudyStats:
    """Every table of a study's statistics from its votes frame.

    exclude_flagged: drop the votes of annotators flagged by quality control before computing preference,
    Bradley-Terry, agreement and metric agreement (the QC table always covers everyone). n_resamples, seed, level:
    of every bootstrap; alpha: the level of the sign tests and their corrections.
    """
    if n_resamples < 1:
        raise UserError(f"n_resamples must be at least 1, got {n_resamples}")
    v_all = check_votes_frame(votes)
    qc = stats.quality_control(v_all, qc_config)
    flagged = sorted(qc.loc[qc["flagged"], "annotator"].astype(str)) if len(qc) else []
    v_used = v_all[~v_all["annotator"].isin(flagged)] if exclude_flagged else v_all
    v = regular_votes(v_used)
    # One resampling of prompts (within their category) for all tables.
    prompts = v[["prompt_id", "category"]].drop_duplicates("prompt_id") if len(v) else pd.DataFrame(
        columns=["prompt_id", "category"])
    prompt_index = {p: k for k, p in enumerate(prompts["prompt_id"])}
    weights = stats.stratified_resample_weights(prompts["category"].to_numpy(), n_resamples, seed)
    pref = preference_table(v, weights, prompt_index, level, alpha)
    bt = bradley_terry_table(v, n_resamples, seed, level)
    agree = agreement_table(v)
    metric = metric_agreement_table(v, metric_scores, level=level)
    models = list(dict.fromkeys([*v_all["model_a"], *v_all["model_b"]]))
    summary = {
        "n_votes": int(len(v_all)), "n_votes_used": int(len(v)),
        "n_gold_votes": int(v_all["is_gold"].sum()), "n_repeat_votes": int(v_all["is_repeat"].sum()),
        "n_annotators": int(v_all["annotator"].nunique()), "flagged_annotators": flagged,
        "exclude_flagged": exclude_flagged, "simulated": bool(v_all["simulated"].any()),
        "questions": sorted(v["question"].unique().tolist()) if len(v) else [],
        "models": [m for m in models if not str(m).startswith("<gold")],
        "comparisons": list(dict.fromkeys(v["comparison"])) if len(v) else [],
        "n_prompts": int(len(prompts)), "n_resamples": n_resamples, "seed": seed, "level": level, "alpha": alpha,
        "bootstrap": "prompts resampled with replacement within their category",
    }
    return StudyStats(pref, bt, agree, qc, metric, summary)


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


def format_overview(result: StudyStats) -> str:
    """A short plain-text overview for the terminal: the overall row of each comparison and the ranking."""
    lines = []
    pref = result.preference
    if pref.empty:
        return "no votes on regular items yet"
    lines.append(f"{'comparison':<40} {'question':<10} {'n':>5} {'win':>6} {'equal':>6} {'bad':>6} {'loss':>6} "
                 f"{'win rate (95% CI)':>22} {'p':>8}  verdict")
    for r in pref[pref["category"] == ALL].itertuples(index=False):
        ci = f"{_pct(r.win_rate)} ({_pct(r.win_rate_lo)}-{_pct(r.win_rate_hi)})"
        lines.append(f"{r.comparison[:40]:<40} {r.question:<10} {r.n:>5} {_pct(r.win_share):>6} "
                     f"{_pct(r.equal_share):>6} {_pct(r.both_bad_share):>6} {_pct(r.loss_share):>6} {ci:>22} "
                     f"{r.sign_p:>8.2g}  {r.verdict}")
    for r in result.bradley_terry.itertuples(index=False):
        lines.append(f"BT {r.question:<10} #{r.rank} {r.model:<30} Elo {r.elo:.0f} [{r.elo_lo:.0f}, {r.elo_hi:.0f}]")
    flagged = result.summary.get("flagged_annotators") or []
    lines.append(f"flagged annotators: {', '.join(flagged) if flagged else 'none'}")
    return "\n".join(lines)


def _pct(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.0f}%"


__all__ = [
    "ALL", "RESULTS", "StudyStats", "agreement_table", "analyze_votes", "bradley_terry_table", "check_votes_frame",
    "format_overview", "load_metric_scores", "metric_agreement_table", "outcome_for_a", "preference_table",
    "regular_votes", "write_stats",
]
