"""How well each automatic per-image score predicts the study's people (docs/statistics.md, "Automatic scores vs
people"). Every metric `k3eval score` stored per image counts (CLIP score, PickScore, HPS v2.1, ImageReward, LAION
aesthetic, VQAScore, ...); scores are read from RUN/scores/per_image.parquet, never recomputed.

- Pairwise accuracy, per metric x question x comparison x category: over the votes with a winner (the people's
  "equal" and "both bad" answers are left out: they name no image to predict), the share where the image the metric
  prefers (the higher score, or the lower for a lower-is-better metric) is the one people chose. A metric tie (both
  images scored exactly the same) counts half, as the preference statistics count a tie as half a win: the expected
  accuracy of guessing. The interval comes from the analysis' shared resampling of prompts within their category
  (`k3eval.stats.prompt_resampling`, t-widened), so it is clustered by prompt like every other interval.
- Ordering, per comparison x question x metric: does the metric order the two systems the way people did? The
  metric's paired difference A - B over the comparison's voted prompts (`k3eval.metrics.paired`) against the people's
  tie-as-half score of A (above or below 1/2) and their verdict.
- Ranking, per question: the metrics sorted by overall pairwise accuracy, with separated ranks (a rank only where
  intervals do not overlap) and how many comparisons each orders as people did.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from k3eval import stats

ALL = "all"
ACCURACY_COLUMNS = ["metric", "display_name", "question", "comparison", "category", "n", "n_prompts", "metric_ties",
                    "agree", "accuracy", "accuracy_lo", "accuracy_hi"]
ORDERING_COLUMNS = ["comparison", "model_a", "model_b", "question", "metric", "display_name", "n_prompts",
                    "metric_diff", "metric_diff_lo", "metric_diff_hi", "metric_p", "metric_prefers", "people_score",
                    "people_prefer", "people_verdict", "same_order"]
RANKING_COLUMNS = ["question", "rank", "metric", "display_name", "accuracy", "accuracy_lo", "accuracy_hi", "n",
                   "metric_ties", "ordered_like_people", "comparisons", "ordered_like_clear_verdicts",
                   "clear_verdicts"]
KEYS = ["model", "prompt_id", "sample"]


def load_image_scores(runs: dict[str, str | Path]) -> pd.DataFrame:
    """Every per-image metric the runs stored, long: model, prompt_id, sample, metric, value. A metric is a column
    of per_image.parquet named like an entry of summary.json's metrics. `attrs["metrics"]` maps each metric to its
    display name and direction (from the summaries). Runs without stored scores are skipped."""
    frames, meta = [], {}
    for name, path in runs.items():
        per, summ = Path(path) / "scores" / "per_image.parquet", Path(path) / "scores" / "summary.json"
        if not per.exists() or not summ.exists():
            continue
        df = pd.read_parquet(per)
        metrics = json.loads(summ.read_text(encoding="utf-8")).get("metrics", {})
        for m, entry in metrics.items():
            if m not in df.columns or "prompt_id" not in df.columns:
                continue
            meta.setdefault(m, {"display_name": entry.get("display_name", m),
                                "higher_is_better": bool(entry.get("higher_is_better", True))})
            frames.append(pd.DataFrame({"model": name, "prompt_id": df["prompt_id"].astype(str),
                                        "sample": df["sample"].astype("int64") if "sample" in df else 0,
                                        "metric": m, "value": pd.to_numeric(df[m], errors="coerce")}))
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*KEYS, "metric", "value"])
    out.attrs["metrics"] = meta
    return out


def as_long(scores: pd.DataFrame | None) -> pd.DataFrame:
    """`load_image_scores`' long frame as it is; a wide frame (model, prompt_id, sample, one column per metric, as
    `k3eval.sbs.analysis.load_metric_scores` returns) melted into it (every metric higher-is-better)."""
    if scores is None or scores.empty:
        return pd.DataFrame(columns=[*KEYS, "metric", "value"])
    if "metric" in scores.columns:
        return scores
    long = scores.melt(id_vars=[c for c in KEYS if c in scores], var_name="metric", value_name="value")
    long.attrs["metrics"] = {m: {"display_name": m, "higher_is_better": True} for m in long["metric"].unique()}
    return long


def _meta(scores: pd.DataFrame, metric: str) -> dict[str, Any]:
    return scores.attrs.get("metrics", {}).get(metric, {"display_name": metric, "higher_is_better": True})


def _vote_scores(v: pd.DataFrame, scores: pd.DataFrame, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """The metric's score of each vote's image of model_a and of model_b (nan where not stored)."""
    s = scores[scores["metric"] == metric]
    key = pd.Series(s["value"].to_numpy(np.float64), index=pd.MultiIndex.from_arrays(
        [s["model"].astype(str), s["prompt_id"].astype(str), s["sample"].astype("int64")]))
    key = key[~key.index.duplicated(keep="last")]
    pid, smp = v["prompt_id"].astype(str), v["sample"].astype("int64")
    a = key.reindex(pd.MultiIndex.from_arrays([v["model_a"].astype(str), pid, smp])).to_numpy(np.float64)
    b = key.reindex(pd.MultiIndex.from_arrays([v["model_b"].astype(str), pid, smp])).to_numpy(np.float64)
    return a, b


def pairwise_accuracy(v: pd.DataFrame, scores: pd.DataFrame | None, units, order: list[tuple[str, str]],
                      questions: list[str], level: float = 0.95) -> pd.DataFrame:
    """`ACCURACY_COLUMNS`, one row per metric x question x comparison ('all' first) x category ('all' first).

    v: regular votes (`k3eval.sbs.analysis.regular_votes`); units: the analysis' shared resampling (vote -> prompt,
    annotator; `Resampling`). Votes whose images lack a score of the metric are left out of its rows.
    """
    scores = as_long(scores)
    if scores.empty or v.empty:
        return pd.DataFrame(columns=ACCURACY_COLUMNS)
    decided = v["result"].isin(["win", "loss"]).to_numpy()
    a_won = (v["result"] == "win").to_numpy()
    comp = v["comparison"].to_numpy(dtype=object)
    qs = v["question"].to_numpy(dtype=object)
    cat = v["category"].to_numpy(dtype=object)
    names = [f"{a} vs {b}" for a, b in order]
    rows: list[dict[str, Any]] = []
    members, agree_all = [], []
    offset = 0
    for metric in scores["metric"].drop_duplicates():
        meta = _meta(scores, metric)
        m_a, m_b = _vote_scores(v, scores, metric)
        ok = decided & np.isfinite(m_a) & np.isfinite(m_b)
        prefers_a = (m_a > m_b) if meta["higher_is_better"] else (m_a < m_b)
        agree = np.where(m_a == m_b, 0.5, (prefers_a == a_won).astype(np.float64))
        agree_all.append(agree)
        for q in questions:
            for name in [ALL, *names]:
                base = ok & (qs == q) & ((comp == name) if name != ALL else True)
                if name != ALL and not (decided & (qs == q) & (comp == name)).any():
                    continue
                for c in [ALL, *sorted(set(cat[base]))]:
                    sel = np.flatnonzero(base & ((cat == c) if c != ALL else True))
                    members.append(np.column_stack([sel, np.full(sel.size, len(rows)), np.full(sel.size, offset)]))
                    k = float(agree[sel].sum())
                    rows.append({"metric": metric, "display_name": meta["display_name"], "question": q,
                                 "comparison": name, "category": c, "n": int(sel.size),
                                 "n_prompts": int(np.unique(units.prompt[sel]).size),
                                 "metric_ties": int((m_a[sel] == m_b[sel]).sum()), "agree": k,
                                 "accuracy": k / sel.size if sel.size else np.nan})
        offset += 1
    if not rows:
        return pd.DataFrame(columns=ACCURACY_COLUMNS)
    pairs = np.concatenate(members)
    vote, cell, which = pairs[:, 0], pairs[:, 1], pairs[:, 2]
    values = np.stack(agree_all)[which, vote]
    res = units.resampling
    a_idx = units.annotator[vote] if res.annotator is not None else None
    num = res.totals(units.prompt[vote], a_idx, cell, values, len(rows))
    den = res.totals(units.prompt[vote], a_idx, cell, np.ones(vote.size), len(rows))
    present = np.zeros((res.prompt.shape[1], len(rows)), dtype=bool)
    present[units.prompt[vote], cell] = True
    out = pd.DataFrame(rows)
    out["accuracy_lo"], out["accuracy_hi"] = stats.t_widened(out["accuracy"].to_numpy(np.float64),
                                                             *stats.ratio_ci(num, den, level),
                                                             res.degrees_of_freedom(present), level, (0.0, 1.0))
    return out[ACCURACY_COLUMNS]


def metric_ordering(v: pd.DataFrame, scores: pd.DataFrame | None, preference: pd.DataFrame,
                    n_resamples: int = 1000, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """`ORDERING_COLUMNS`, per comparison x question (overall rows of `preference`) x metric: the metric's paired
    difference A - B over the prompts people voted on in that comparison and question (each run's scored images of a
    prompt averaged), which system it prefers, and whether that is the side people preferred (`people_score` above
    or below 1/2; `same_order` is empty when either side is exactly even)."""
    from k3eval.errors import UserError
    from k3eval.metrics.paired import paired_difference

    scores = as_long(scores)
    if scores.empty or preference.empty:
        return pd.DataFrame(columns=ORDERING_COLUMNS)
    overall = preference[preference["category"] == ALL]
    rows = []
    for r in overall.itertuples(index=False):
        d = v[(v["model_a"] == r.model_a) & (v["model_b"] == r.model_b) & (v["question"] == r.question)]
        prompts = set(d["prompt_id"].astype(str))
        first = d.drop_duplicates("prompt_id")
        cats = pd.Series(first["category"].to_numpy(), index=first["prompt_id"].astype(str))
        for metric in scores["metric"].drop_duplicates():
            meta = _meta(scores, metric)
            s = scores[(scores["metric"] == metric) & scores["prompt_id"].astype(str).isin(prompts)]
            s = s[np.isfinite(s["value"].to_numpy(np.float64))]
            means = s.groupby(["model", s["prompt_id"].astype(str)])["value"].mean()
            if r.model_a not in means.index.get_level_values(0) or r.model_b not in means.index.get_level_values(0):
                continue
            try:
                pdiff = paired_difference(means.loc[r.model_a], means.loc[r.model_b], cats, metric=metric,
                                          n_resamples=n_resamples, seed=seed, level=level)
            except UserError:  # fewer than 2 prompts scored for both systems
                continue
            sign = 1.0 if meta["higher_is_better"] else -1.0
            m_side = np.sign(sign * pdiff.diff)
            p_side = np.sign(r.score - 0.5)
            side = {1.0: r.model_a, -1.0: r.model_b, 0.0: "even"}
            rows.append({"comparison": r.comparison, "model_a": r.model_a, "model_b": r.model_b,
                         "question": r.question, "metric": metric, "display_name": meta["display_name"],
                         "n_prompts": pdiff.n_prompts, "metric_diff": pdiff.diff, "metric_diff_lo": pdiff.diff_lo,
                         "metric_diff_hi": pdiff.diff_hi, "metric_p": pdiff.p_value,
                         "metric_prefers": side[float(m_side)], "people_score": r.score,
                         "people_prefer": side[float(p_side)], "people_verdict": r.verdict,
                         "same_order": None if m_side == 0 or p_side == 0 else bool(m_side == p_side)})
    return pd.DataFrame(rows, columns=ORDERING_COLUMNS)


def predictor_ranking(accuracy: pd.DataFrame, ordering: pd.DataFrame) -> pd.DataFrame:
    """`RANKING_COLUMNS`: per question, the metrics by overall pairwise accuracy (all comparisons, all categories),
    best first; `rank` separates only metrics whose intervals do not overlap; how many comparisons each orders as
    people did, of all and of those with a clear verdict."""
    if accuracy.empty:
        return pd.DataFrame(columns=RANKING_COLUMNS)
    top = accuracy[(accuracy["comparison"] == ALL) & (accuracy["category"] == ALL) & (accuracy["n"] > 0)]
    frames = []
    for q, g in top.groupby("question", sort=False):
        g = g.sort_values("accuracy", ascending=False, kind="stable").copy()
        lo = g["accuracy_lo"].fillna(g["accuracy"]).to_numpy(np.float64)
        hi = g["accuracy_hi"].fillna(g["accuracy"]).to_numpy(np.float64)
        # separated_ranks ranks by "interval wholly above": higher accuracy is better
        g["rank"] = stats.separated_ranks(lo, hi)
        o = ordering[ordering["question"] == q]
        clear = o[o["people_verdict"] != "no clear difference"]
        for same, total, frame in (("ordered_like_people", "comparisons", o),
                                   ("ordered_like_clear_verdicts", "clear_verdicts", clear)):
            g[same] = [int(frame.loc[frame["metric"] == m, "same_order"].eq(True).sum()) for m in g["metric"]]
            g[total] = [int((frame["metric"] == m).sum()) for m in g["metric"]]
        frames.append(g)
    return pd.concat(frames, ignore_index=True)[RANKING_COLUMNS]


__all__ = ["ACCURACY_COLUMNS", "ORDERING_COLUMNS", "RANKING_COLUMNS", "as_long", "load_image_scores",
           "metric_ordering", "pairwise_accuracy", "predictor_ranking"]
