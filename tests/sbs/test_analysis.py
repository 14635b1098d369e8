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
    load_metric_scores,
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
        assert r.n == len(d) and r.n_prompts == d["prompt_id"].nunique()
        assert r.win == int((d["winner"] == r.model_a).sum()) and r.loss == int((d["winner"] == r.model_b).sum())
        assert r.equal == int((d["winner"] == "tie").sum()) and r.both_bad == int((d["winner"] == "both_bad").sum())
        assert r.win_share + r.equal_share + r.both_bad_share + r.loss_share == pytest.approx(1.0)
        assert (r.win_rate_lo, r.win_rate_hi) == pytest.approx(stats.wilson_ci(r.win, r.win + r.loss))
        assert r.score == pytest.approx((r.win + 0.5 * (r.equal + r.both_bad)) / r.n)
        assert r.score_lo < r.score < r.score_hi and r.score_ci_note == ""
        # the P-value is the sign-flip test over this row's prompts (Monte Carlo: close to the exact value)
        per_prompt = (d["score"] - 0.5).groupby(d["prompt_id"]).sum().to_numpy()
        assert r.p_value == pytest.approx(stats.sign_flip_pvalues(per_prompt, n_flips=20_000, seed=9)[0], abs=0.02)
        assert r.small_sample == (r.n_prompts < stats.MIN_INTERVAL_PROMPTS)


def test_corrections_holm_and_bh_within_each_family(result):
    from statsmodels.stats.multitest import multipletests

    pref = result.preference
    cats = pref[pref["category"] != ALL]
    assert len(cats) == len(pref) * 3 // 4  # three categories per overall row
    for _, fam in cats.groupby(["comparison", "question"]):
        np.testing.assert_allclose(fam["p_holm"], multipletests(fam["p_value"], method="holm")[1])
        np.testing.assert_allclose(fam["p_bh"], multipletests(fam["p_value"], method="fdr_bh")[1])
        assert fam["family"].nunique() == 1 and fam["family"].iloc[0].startswith("categories of")
    # the overall rows form one family: every comparison x question of the study
    overall = pref[pref["category"] == ALL]
    assert len(overall) == 6 * 2 and set(overall["family"]) == {"study: 6 comparisons x 2 questions"}
    np.testing.assert_allclose(overall["p_holm"], multipletests(overall["p_value"], method="holm")[1])
    np.testing.assert_allclose(overall["p_bh"], multipletests(overall["p_value"], method="fdr_bh")[1])
    for r in overall.itertuples(index=False):
        called = r.verdict != "no clear difference"
        assert called == (r.p_holm < 0.05)
        if called:
            assert r.verdict == (r.model_a if r.score > 0.5 else r.model_b)


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
    for s_ in ("raw_agreement", "majority_agreement", "krippendorff_alpha", "fleiss_kappa"):
        assert row[f"{s_}_lo"] < row[s_] < row[f"{s_}_hi"], s_


def test_exclude_flagged_drops_only_flagged_annotators(votes):
    v = votes.copy()
    # one annotator always says 'left': flagged for position bias (and a long run)
    lazy = v["annotator"] == "sim-000"
    v.loc[lazy, "answer"] = "left"
    v.loc[lazy, "winner"] = v.loc[lazy, "left_model"]
    full = analyze_votes(v, n_resamples=50, seed=0)
    excl = analyze_votes(v, n_resamples=50, seed=0, exclude_flagged=True)
    assert "sim-000" in full.summary["flagged_annotators"]
    assert excl.summary["n_annotators_used"] == 12 - len(full.summary["flagged_annotators"])
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
    t = analyze_votes(v, scores, n_resamples=50).metric_agreement
    row = t[(t["comparison"] == ALL) & (t["category"] == ALL)].iloc[0]
    # p1: A higher, A won -> agree; p2: A lower, A won -> disagree; p3: A lower, B won -> agree; p4 tie vote: out;
    # p5: equal scores -> half
    assert (row["n"], row["agree"], row["metric_ties"]) == (4, 2.5, 1)
    assert np.isnan(row["accuracy_lo"]) or row["accuracy_lo"] <= row["accuracy"] <= row["accuracy_hi"]


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
                                       "metric_agreement.csv", "metric_ordering.csv", "metric_ranking.csv",
                                       "summary.json"}
    back = pd.read_csv(tmp_path / "preference.csv")
    assert len(back) == len(result.preference) and back["win"].sum() == result.preference["win"].sum()


def test_seeded(votes):
    a = analyze_votes(votes, n_resamples=100, seed=5).preference
    b = analyze_votes(votes, n_resamples=100, seed=5).preference
    c = analyze_votes(votes, n_resamples=100, seed=6).preference
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["score_lo"], c["score_lo"])


def test_study_order_is_kept_everywhere(votes):
    order = [("strong", "best"), ("weak", "mid"), ("mid", "best"), ("weak", "strong"), ("mid", "strong"),
             ("weak", "best")]
    res = analyze_votes(votes, n_resamples=50, seed=0, comparisons=order, questions=["quality", "alignment"])
    want = [f"{a} vs {b}" for a, b in order]
    assert list(dict.fromkeys(res.preference["comparison"])) == want == res.summary["comparisons"]
    assert list(dict.fromkeys(res.preference["question"])) == ["quality", "alignment"]
    assert [c for c in dict.fromkeys(res.agreement["comparison"]) if c != ALL] == want
    assert list(dict.fromkeys(res.bradley_terry["question"])) == ["quality", "alignment"]


def test_small_strata_get_no_interval_rather_than_a_zero_width_one():
    """A category with 4 prompts: no interval (stated), never a zero-width one like 66.7 % [66.7, 66.7]; the overall
    row over enough prompts keeps its interval; small_sample counts prompts, not votes."""
    rows = []
    for k in range(24):
        cat = "tiny" if k < 4 else "big"
        for a in range(5):  # 5 votes per prompt: 20 votes in the tiny category, but only 4 prompts
            winner = "A" if (k < 4 or (k + a) % 3) else "B"
            rows.append(dict(item_id=k, prompt_id=f"p{k}", category=cat, sample=0, model_a="A", model_b="B",
                             question="alignment", answer="left", winner=winner, annotator=f"x{a}"))
    res = analyze_votes(pd.DataFrame(rows), n_resamples=200, seed=0)
    pref = res.preference.set_index("category")
    tiny = pref.loc["tiny"]
    assert tiny["n"] == 20 and tiny["n_prompts"] == 4 and tiny["small_sample"]
    assert np.isnan(tiny["score_lo"]) and np.isnan(tiny["score_hi"]) and "4 prompts" in tiny["score_ci_note"]
    assert pref.loc[ALL, "score_lo"] < pref.loc[ALL, "score"] < pref.loc[ALL, "score_hi"]
    widths = res.preference["score_hi"] - res.preference["score_lo"]
    assert not (widths <= 0).any()
    # every prompt of a category alike (all votes for A): no interval either, said so
    same = pd.DataFrame([dict(r, category="same") for r in rows if r["item_id"] < 4] +
                        [dict(r, item_id=r["item_id"] + 100, prompt_id=r["prompt_id"] + "b", category="same")
                         for r in rows if r["item_id"] < 4] +
                        [dict(r, item_id=r["item_id"] + 200, prompt_id=r["prompt_id"] + "c", category="same")
                         for r in rows if r["item_id"] < 4])
    row = analyze_votes(same, n_resamples=100, seed=0).preference.iloc[0]
    assert row["n_prompts"] == 12 and np.isnan(row["score_lo"]) and "same score" in row["score_ci_note"]


def test_two_level_resampling_widens_the_interval_and_tests_by_bootstrap(votes):
    one = analyze_votes(votes, n_resamples=300, seed=2)
    two = analyze_votes(votes, n_resamples=300, seed=2, two_level=True)
    o, t = (r.preference[r.preference["category"] == ALL] for r in (one, two))
    assert ((t["score_hi"] - t["score_lo"]).to_numpy() >= (o["score_hi"] - o["score_lo"]).to_numpy() - 1e-9).all()
    assert two.summary["two_level"] and "annotators" in two.summary["bootstrap"]
    assert "bootstrap test" in two.summary["test"] and "sign-flip" in one.summary["test"]
    assert (t["p_value"] >= 1 / 301).all()
    one_annotator = votes.assign(annotator="solo").drop_duplicates(["item_id", "question"])
    with pytest.raises(UserError, match="at least 2 annotators"):
        analyze_votes(one_annotator, n_resamples=10, two_level=True)


def test_summary_states_the_scheme_once(result):
    s = result.summary
    assert s["stats_version"] == 2 and s["bootstrap"].startswith("rescaled bootstrap (Rao-Wu")
    assert "Bradley-Terry" in s["bootstrap"] and "Holm" in s["multiplicity"]
    assert s["n_flips"] == 10_000 and s["min_interval_prompts"] == stats.MIN_INTERVAL_PROMPTS
