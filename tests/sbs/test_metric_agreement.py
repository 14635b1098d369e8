"""Automatic scores vs people (k3eval.sbs.metric_agreement): pairwise accuracy by hand (ties, direction, categories,
missing scores), its prompt-clustered interval calibrated by simulation, the ordering check and the ranking, and the
scores read from stored runs. The report section: tests/report/test_metric_people.py."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from k3eval.sbs.analysis import ALL, _units, analyze_votes, check_votes_frame, regular_votes
from k3eval.sbs.metric_agreement import load_image_scores, pairwise_accuracy, predictor_ranking


def _votes(winners, categories=None, prompts=None, model_a="A", model_b="B", question="alignment"):
    n = len(winners)
    return pd.DataFrame({"item_id": range(1, n + 1), "prompt_id": prompts or [f"p{i}" for i in range(n)],
                         "category": categories or ["c"] * n, "sample": 0, "model_a": model_a, "model_b": model_b,
                         "question": question, "answer": "left", "winner": winners, "annotator": "x"})


def _long(rows):
    df = pd.DataFrame(rows, columns=["model", "prompt_id", "sample", "metric", "value"])
    df.attrs["metrics"] = {"up": {"display_name": "Up", "higher_is_better": True},
                           "down": {"display_name": "Down", "higher_is_better": False}}
    return df


def test_pairwise_accuracy_by_hand():
    v = _votes(["A", "B", "A", "tie", "both_bad", "B"], categories=["x", "x", "y", "y", "y", "y"])
    a = [0.9, 0.9, 0.1, 0.5, 0.5, 0.3]
    b = [0.1, 0.2, 0.1, 0.4, 0.4, np.nan]  # p2: a tie of the metric; p5: B's image has no score
    rows = []
    for i in range(6):
        for m in ("up", "down"):
            rows += [("A", f"p{i}", 0, m, a[i]), ("B", f"p{i}", 0, m, b[i])]
    t = analyze_votes(v, _long(rows), n_resamples=50).metric_agreement
    got = t.set_index(["metric", "comparison", "category"])
    # votes with a winner and both scores: p0 (A won, A higher), p1 (B won, A higher), p2 (A won, equal scores)
    up = got.loc[("up", ALL, ALL)]
    assert (up["n"], up["agree"], up["metric_ties"]) == (3, 1.5, 1)
    down = got.loc[("down", ALL, ALL)]  # lower is better: the metric prefers B in p0 and p1
    assert (down["n"], down["agree"]) == (3, 1.5)
    assert got.loc[("up", "A vs B", "x"), "agree"] == 1.0 and got.loc[("up", "A vs B", "x"), "n"] == 2
    assert got.loc[("up", "A vs B", "y"), "agree"] == 0.5 and got.loc[("up", "A vs B", "y"), "n"] == 1
    assert set(t["display_name"]) == {"Up", "Down"}


def test_accuracy_interval_is_clustered_by_prompt_and_calibrated():
    """Known truth: each prompt has its own chance that the metric picks the winner (Beta around 0.7, so votes on a
    prompt are correlated), 5 votes per prompt, 48 prompts in 4 categories. The interval covers the true accuracy
    (the mean prompt chance) about 95 % of the time; a vote-level Wilson interval of the same data covers less."""
    from k3eval import stats

    rng = np.random.default_rng(2)
    sims, n_p, per = 200, 48, 5
    cover = wilson_cover = 0
    for k in range(sims):
        chance = rng.beta(2.8, 1.2, n_p)  # mean 0.7, prompts differ a lot
        truth = 0.7
        prompts = np.repeat([f"p{i}" for i in range(n_p)], per)
        cats = np.repeat(np.array(["a", "b", "c", "d"])[np.arange(n_p) % 4], per)
        a_won = rng.random(n_p * per) < 0.5
        agree = rng.random(n_p * per) < np.repeat(chance, per)
        v = _votes(list(np.where(a_won, "A", "B")), list(cats), list(prompts))
        v["sample"] = np.tile(np.arange(per), n_p)
        higher_a = np.where(agree, a_won, ~a_won)
        rows = [("A", p, s, "up", float(h)) for p, s, h in zip(v["prompt_id"], v["sample"], higher_a)]
        rows += [("B", p, s, "up", float(not h)) for p, s, h in zip(v["prompt_id"], v["sample"], higher_a)]
        rv = regular_votes(check_votes_frame(v))
        units = _units(rv, 300, k, False)
        t = pairwise_accuracy(rv, _long(rows), units, [("A", "B")], ["alignment"])
        row = t[(t["comparison"] == ALL) & (t["category"] == ALL)].iloc[0]
        cover += row["accuracy_lo"] <= truth <= row["accuracy_hi"]
        lo, hi = stats.wilson_ci(int(row["agree"]), int(row["n"]))
        wilson_cover += lo <= truth <= hi
    assert 0.91 <= cover / sims <= 0.99, cover / sims
    assert wilson_cover < cover


def test_ordering_and_ranking():
    """A beats B in 16 of 20 prompts; metric 'good' scores A's images higher (mostly the winners), 'bad' scores them
    lower: 'good' orders the comparison as people did and ranks first."""
    rng = np.random.default_rng(0)
    winners = ["A"] * 16 + ["B"] * 4
    v = _votes(winners, categories=["x", "y"] * 10)
    rows = []
    for i, w in enumerate(winners):
        good = (1.0, 0.0) if (w == "A") == (rng.random() < 0.9) else (0.0, 1.0)
        rows += [("A", f"p{i}", 0, "good", good[0] + 0.1), ("B", f"p{i}", 0, "good", good[1]),
                 ("A", f"p{i}", 0, "bad", -good[0]), ("B", f"p{i}", 0, "bad", -good[1] - 0.1)]
    scores = pd.DataFrame(rows, columns=["model", "prompt_id", "sample", "metric", "value"])
    scores.attrs["metrics"] = {m: {"display_name": m.title(), "higher_is_better": True} for m in ("good", "bad")}
    st = analyze_votes(v, scores, n_resamples=200)
    o = st.metric_ordering.set_index("metric")
    assert o.loc["good", "metric_prefers"] == "A" and o.loc["good", "people_prefer"] == "A"
    assert o.loc["good", "same_order"] and not o.loc["bad", "same_order"] and o.loc["bad", "same_order"] is not None
    assert o.loc["good", "metric_diff"] > 0 > o.loc["bad", "metric_diff"] and o.loc["good", "n_prompts"] == 20
    r = st.metric_ranking
    assert r["metric"].tolist() == ["good", "bad"] and r["rank"].tolist() == [1, 2]
    assert r["ordered_like_people"].tolist() == [1, 0] and r["comparisons"].tolist() == [1, 1]
    assert predictor_ranking(st.metric_agreement.iloc[:0], st.metric_ordering).empty


def test_scores_are_read_from_stored_runs(tmp_path):
    for name, val in (("a", 0.3), ("b", 0.6)):
        d = tmp_path / name / "scores"
        d.mkdir(parents=True)
        pd.DataFrame({"prompt_id": ["p1", "p2"], "sample": [0, 0], "pickscore": [val, val + 1],
                      "clip_cosine": [0.1, 0.2], "clip_score": [20.0, 21.0]}).to_parquet(d / "per_image.parquet")
        metrics = {"pickscore": {"display_name": "PickScore", "higher_is_better": True},
                   "clip_score": {"display_name": "CLIP score", "higher_is_better": True},
                   "fid": {"display_name": "FID", "higher_is_better": False}}
        (d / "summary.json").write_text(json.dumps({"metrics": metrics}))
    (tmp_path / "c").mkdir()  # not scored: skipped
    s = load_image_scores({"A": tmp_path / "a", "B": tmp_path / "b", "C": tmp_path / "c"})
    assert set(s["metric"]) == {"pickscore", "clip_score"}  # fid is not per image, clip_cosine is not a metric
    assert len(s) == 8 and s.attrs["metrics"]["pickscore"]["display_name"] == "PickScore"
    assert s[(s["model"] == "B") & (s["metric"] == "pickscore")]["value"].tolist() == [0.6, 1.6]
