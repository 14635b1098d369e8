"""Calibration of the verdict by simulation with known truth: the unit of inference is the prompt.

Studies are drawn by `k3eval.sbs.simulate.clustered_scores`: one comparison, 12 categories, K = 3 annotators per
item, a shared per-item effect that makes annotators agree (Krippendorff's alpha about 0.45), the simulated
annotators' rule for sides, position bias, noise, ties and 'both bad'. Each check draws a few hundred studies with a
fixed seed and runs the same function `analyze_votes` uses (`stats.preference_inference`); the last test proves that
`analyze_votes` returns exactly those numbers. Figures measured here are quoted in docs/statistics.md.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from k3eval import stats
from k3eval.sbs.analysis import ALL, analyze_votes
from k3eval.sbs.simulate import clustered_scores

N_STUDIES = 300
RESAMPLES = 500
FLIPS = 2000
CATEGORIES = 12


def _study_inference(sim, seed: int, two_level: bool = False, n_annotators: int = 12):
    """The headline (overall) score, interval and P-value of one simulated study."""
    strata = sim["category"][::3]  # one label per prompt (K = 3 consecutive votes per prompt)
    res = stats.prompt_resampling(strata, RESAMPLES, seed, n_annotators=n_annotators if two_level else None)
    out = stats.preference_inference(sim["prompt"], np.zeros(sim["prompt"].size, dtype=np.int64), sim["score"], 1,
                                     res, annotator_idx=sim["annotator"], n_flips=FLIPS, seed=seed)
    return out.score[0], out.lo[0], out.hi[0], out.p[0]


def _run(per_category: int, seed: int, difference: float = 0.0, two_level: bool = False,
         annotator_spread: float = 0.0, n_annotators: int = 12, n_studies: int = N_STUDIES) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    reject = cover = vote_reject = 0
    for s in range(n_studies):
        sim = clustered_scores(CATEGORIES, per_category, 3, rng, difference=difference, n_annotators=n_annotators,
                               annotator_spread=annotator_spread)
        _, lo, hi, p = _study_inference(sim, s, two_level, n_annotators)
        reject += p < 0.05
        cover += lo <= sim["truth"] <= hi
        # the vote-level sign test that treats every vote as independent, for contrast
        vote_reject += stats.sign_test(int((sim["score"] == 1).sum()), int((sim["score"] == 0).sum())) < 0.05
    return {"reject": reject / n_studies, "cover": cover / n_studies, "vote_reject": vote_reject / n_studies}


def _alpha(sim, n_annotators: int = 12) -> float:
    value = np.select([sim["score"] == 1, sim["score"] == 0], [2.0, 0.0], 1.0)
    m = np.full((n_annotators, int(sim["item"].max()) + 1), np.nan)
    m[sim["annotator"], sim["item"]] = value
    return stats.krippendorff_alpha(m, "ordinal", value_domain=[0, 1, 2])


def test_simulated_studies_have_the_stated_agreement_and_truth():
    rng = np.random.default_rng(0)
    alphas = [_alpha(clustered_scores(CATEGORIES, 48, 3, rng)) for _ in range(6)]
    assert 0.40 <= np.mean(alphas) <= 0.50
    # the stated truth is the mean score of a very large study (the quadrature agrees with the simulation)
    for diff in (0.0, 0.5):
        sims = [clustered_scores(CATEGORIES, 2000, 3, rng, difference=diff) for _ in range(2)]
        assert np.mean([s["score"].mean() for s in sims]) == pytest.approx(np.mean([s["truth"] for s in sims]),
                                                                          abs=0.006)
    assert clustered_scores(CATEGORIES, 2, 3, rng)["truth"] == 0.5


@pytest.mark.parametrize("per_category", [2, 48])
def test_no_true_difference_false_positives_and_coverage(per_category):
    """With no true difference and alpha about 0.45: the verdict's test rejects at most 7 % of the time at nominal
    5 %, and the headline 95 % interval covers the truth at least 92 % of the time, at 2 and at 48 prompts per
    category. (Over 1,500 studies each: 3.5 % / 95.0 % at 2, 4.5 % / 95.0 % at 48; the vote-level sign test on the
    same studies rejects 12 % and 15 % of the time: the clustering is real.)"""
    out = _run(per_category, seed=1000)
    assert out["reject"] <= 0.07, out
    assert out["cover"] >= 0.92, out
    if per_category == 48:
        assert out["vote_reject"] >= 0.10, out


def test_power_and_coverage_with_a_real_difference():
    """A real difference (expected score of A about 0.56 given the annotators) at 48 prompts per category is
    detected in nearly every study (measured power: see docs/statistics.md), and the interval covers that truth."""
    out = _run(48, seed=7, difference=0.5)
    assert out["reject"] >= 0.9, out
    assert out["cover"] >= 0.92, out


def test_two_level_resampling_controls_annotator_leans():
    """Annotators with their own lean towards one system (sd 0.8 on the latent scale, 8 annotators in the study):
    prompt-level resampling treats them as fixed and calls a population difference far too often; resampling
    annotators as well keeps the false-positive rate near nominal (figures: docs/statistics.md)."""
    one = _run(24, seed=11, annotator_spread=0.8, n_annotators=8, n_studies=200)
    two = _run(24, seed=11, annotator_spread=0.8, n_annotators=8, two_level=True, n_studies=200)
    assert one["reject"] >= 0.2, one
    assert two["reject"] <= 0.08, two
    assert two["cover"] >= 0.92, two


def test_analyze_votes_returns_the_calibrated_numbers():
    """The overall row of `analyze_votes` is exactly `preference_inference` on the same study and seed, so the
    calibration above is the calibration of the verdict users read."""
    rng = np.random.default_rng(3)
    sim = clustered_scores(CATEGORIES, 4, 3, rng, difference=0.3)
    n = sim["prompt"].size
    a_left = rng.random(n) < 0.5
    winner = np.where(sim["score"] == 1, "A", np.where(sim["score"] == 0, "B", "tie"))
    votes = pd.DataFrame({"item_id": sim["item"], "prompt_id": [f"p{p:04d}" for p in sim["prompt"]],
                          "category": [f"c{c:02d}" for c in sim["category"]], "sample": 0, "model_a": "A",
                          "model_b": "B", "left_model": np.where(a_left, "A", "B"),
                          "right_model": np.where(a_left, "B", "A"), "question": "alignment",
                          "answer": "equal", "winner": winner, "annotator": [f"a{a:02d}" for a in sim["annotator"]]})
    for two_level in (False, True):
        res = analyze_votes(votes, n_resamples=RESAMPLES, seed=5, n_flips=FLIPS, two_level=two_level)
        row = res.preference[res.preference["category"] == ALL].iloc[0]
        # annotator codes in analyze_votes are the sorted names a00..a11: the simulation's indices when all 12 voted
        assert sorted(set(sim["annotator"])) == list(range(12))
        score, lo, hi, p = _study_inference(sim, 5, two_level)
        assert (row["score"], row["score_lo"], row["score_hi"], row["p_value"]) == pytest.approx((score, lo, hi, p))
        assert row["n_prompts"] == CATEGORIES * 4 and row["family"].startswith("study: 1 comparisons")
