"""k3eval.sbs.analysis on synthetic votes with known strengths, and on small hand-made frames."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from k3eval import stats
from k3eval.errors import UserError
from k3eval.sbs.analysis import (
    ALL,
    analyze_votes,
    check_votes_frame,
    load_metric_scores,
    metric_agreement_table,
    regular_votes,
    write_stats,
)
from k3eval.sbs.simulate import SimulationRule, synthetic_votes

MODELS = ["weak", "mid", "strong", "best"]
TRUE = [0.0, 0.5, 1.0, 2.0]


@pytest.fixture(scope="module")
def votes():
    return synthetic_votes(MODELS, TRUE, n_prompts=240, categories=["A", "B", "C"], n_annotators=12,
                           votes_per_prompt=6, seed=3, rule=SimulationRule(position_bias=0.0))


@pytest.fixture(scope="module")
def result(votes):
    return analyze_votes(votes, n_resamples=300, seed=1)


def test_counts_and_intervals_match_direct_computation(votes, result):
    pref = result.preference
    v = regular_votes(votes)
    for r in pref.itertuples(index=False):
        d = v[(v["comparison"] == r.comparison) & (v["question"] == r.question)]
        if r.category != ALL:
            d = d[d["category"] == r.category]
        assert r.n == len(d)
        assert r.win == int((d["winner"] == r.model_a).sum()) and r.loss == int((d["winner"] == r.model_b).sum())
        assert r.equal == int((d["winner"] == "tie").sum()) and r.both_bad == int((d["winner"] == "both_bad").sum())
        assert r.win_share + r.equal_share + r.both_bad_share + r.loss_share == pytest.approx(1.0)
        assert (r.win_rate_lo, r.win_rate_hi) == pytest.approx(stats.wilson_ci(r.win, r.win + r.loss))
        assert r.sign_p == pytest.approx(stats.sign_test(r.win, r.loss))
        assert r.score == pytest.approx((r.win + 0.5 * (r.equal + r.both_bad)) / r.n)
        assert r.score_lo <= r.score <= r.score_hi


def test_category_corrections_are_holm_and_bh_within_each_family(result):
    from statsmodels.stats.multitest import multipletests

    pref = result.preference
    cats = pref[pref["category"] != ALL]
    assert len(cats) == len(pref) * 3 // 4  # three categories per overall row
    for _, fam in cats.groupby(["comparison", "question"]):
        np.testing.assert_allclose(fam["p_holm"], multipletests(fam["sign_p"], method="holm")[1])
        np.testing.assert_allclose(fam["p_bh"], multipletests(fam["sign_p"], method="fdr_bh")[1])


def test_recovers_the_known_order(result):
    pref = result.preference
    overall = pref[pref["category"] == ALL]
    # the largest gap (weak vs best) is found on both questions
    assert set(overall.loc[overall["comparison"] == "weak vs best", "verdict"]) == {"best"}
    bt = result.bradley_terry
    for _, d in bt.groupby("question"):
        assert list(d.sort_values("elo")["model"]) == MODELS
        assert d.loc[d["model"] == "best", "rank"].item() == 1
        assert (d["elo_lo"] <= d["elo"]).all() and (d["elo"] <= d["elo_hi"]).all()


def test_agreement_matches_krippendorff_package(votes, result):
    import krippendorff

    v = regular_votes(votes)
    d = v[(v["question"] == "quality") & (v["comparison"] == "weak vs mid")]
    value = d["result"].map({"win": 2.0, "equal": 1.0, "both_bad": 1.0, "loss": 0.0})
    wide = d.assign(value=value).pivot_table(index="annotator", columns="item_id", values="value", aggfunc="last")
    ref = krippendorff.alpha(reliability_data=wide.to_numpy(), level_of_measurement="ordinal", value_domain=[0, 1, 2])
    row = result.agreement.set_index(["comparison", "question"]).loc[("weak vs mid", "quality")]
    assert row["krippendorff_alpha"] == pytest.approx(ref, abs=1e-10)
    assert 0.0 <= row["raw_agreement"] <= 1.0 and row["n_items"] > 0
    assert "ratings" in row["fleiss_note"] or "items" in row["fleiss_note"]


def test_exclude_flagged_drops_only_flagged_annotators(votes):
    v = votes.copy()
    # one annotator always says 'left': flagged for position bias (and a long run)
    lazy = v["annotator"] == "sim-000"
    v.loc[lazy, "answer"] = "left"
    v.loc[lazy, "winner"] = v.loc[lazy, "left_model"]
    full = analyze_votes(v, n_resamples=50, seed=0)
    excl = analyze_votes(v, n_resamples=50, seed=0, exclude_flagged=True)
    assert "sim-000" in full.summary["flagged_annotators"]
    assert excl.summary["n_votes_used"] == full.summary["n_votes_used"] - int(lazy.sum()) - int(
        v["annotator"].isin([a for a in full.summary["flagged_annotators"] if a != "sim-000"]).sum())
    assert set(excl.qc["annotator"]) == set(full.qc["annotator"])  # QC still covers everyone
    assert excl.preference["n"].sum() < full.preference["n"].sum()


def test_metric_agreement_by_hand():
    v = pd.DataFrame({"item_id": [1, 2, 3, 4, 5], "prompt_id": ["p1", "p2", "p3", "p4", "p5"], "category": "c",
                      "sample": 0, "model_a": "A", "model_b": "B", "question": "alignment",
                      "answer": "left", "winner": ["A", "A", "B", "tie", "B"], "annotator": "x"})
    scores = pd.DataFrame({"model": ["A"] * 5 + ["B"] * 5, "prompt_id": [f"p{i}" for i in range(1, 6)] * 2,
                           "sample": 0, "clip_score": [0.3, 0.1, 0.2, 0.5, 0.4, 0.2, 0.2, 0.3, 0.1, 0.4]})
    t = metric_agreement_table(regular_votes(check_votes_frame(v)), scores)
    row = t[t["comparison"] == ALL].iloc[0]
    # p1: A higher, A won -> agree; p2: A lower, A won -> disagree; p3: A lower, B won -> agree; p4 tie: out;
    # p5: equal scores -> out
    assert (row["n"], row["agree"]) == (3, 2)
    assert (row["share_lo"], row["share_hi"]) == pytest.approx(stats.wilson_ci(2, 3))


def test_load_metric_scores_reads_only_what_is_stored(tmp_path):
    (tmp_path / "a" / "scores").mkdir(parents=True)
    pd.DataFrame({"prompt_id": ["p1"], "sample": [0], "clip_score": [0.25]}).to_parquet(
        tmp_path / "a" / "scores" / "per_image.parquet")
    (tmp_path / "b").mkdir()
    df = load_metric_scores({"A": tmp_path / "a", "B": tmp_path / "b"})
    assert df.to_dict("records") == [{"model": "A", "prompt_id": "p1", "sample": 0, "clip_score": 0.25}]


def test_errors_and_writing(votes, result, tmp_path):
    with pytest.raises(UserError, match="lacks columns"):
        analyze_votes(votes.drop(columns=["winner"]))
    with pytest.raises(UserError, match="n_resamples"):
        analyze_votes(votes, n_resamples=0)
    paths = write_stats(result, tmp_path)
    assert {p.name for p in paths} == {"preference.csv", "bradley_terry.csv", "agreement.csv", "qc.csv",
                                       "metric_agreement.csv", "summary.json"}
    back = pd.read_csv(tmp_path / "preference.csv")
    assert len(back) == len(result.preference) and back["win"].sum() == result.preference["win"].sum()


def test_seeded(votes):
    a = analyze_votes(votes, n_resamples=100, seed=5).preference
    b = analyze_votes(votes, n_resamples=100, seed=5).preference
    c = analyze_votes(votes, n_resamples=100, seed=6).preference
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["score_lo"], c["score_lo"])
