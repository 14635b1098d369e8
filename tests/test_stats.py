"""k3eval.stats against independent implementations (scipy, statsmodels, krippendorff, choix) on the same data."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from k3eval import stats
from k3eval.errors import UserError


# ---- proportions and tests -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("level", [0.8, 0.95, 0.99])
def test_wilson_matches_scipy(level):
    from scipy.stats import binomtest

    for n in (1, 2, 7, 30, 385, 1068):
        for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            ref = binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
            lo, hi = stats.wilson_ci(k, n, level)
            assert lo == pytest.approx(ref.low, abs=1e-12)
            assert hi == pytest.approx(ref.high, abs=1e-12)


def test_wilson_edge_cases():
    assert all(np.isnan(stats.wilson_ci(0, 0)))
    with pytest.raises(UserError, match="successes"):
        stats.wilson_ci(5, 3)
    with pytest.raises(UserError, match="level"):
        stats.wilson_ci(1, 3, level=95)


def test_sign_test_matches_binomtest():
    from scipy.stats import binomtest

    for w, l_ in [(0, 1), (5, 5), (12, 3), (3, 12), (60, 40), (194, 0), (117, 77), (1, 0)]:
        assert stats.sign_test(w, l_) == pytest.approx(binomtest(w, w + l_, 0.5).pvalue, rel=1e-10)
    assert np.isnan(stats.sign_test(0, 0))


def test_tie_half_score():
    assert stats.tie_half_score([1, 1, 0.5, 0]) == pytest.approx(0.625)
    assert np.isnan(stats.tie_half_score([]))


def test_tie_half_ci_resamples_prompts_not_votes():
    rng = np.random.default_rng(1)
    # 60 prompts x 10 votes; the prompt decides most of the outcome, so votes on one prompt are correlated
    prompt_p = rng.uniform(0.05, 0.95, size=60)
    groups = np.repeat(np.arange(60), 10)
    out = (rng.random(600) < prompt_p[groups]).astype(float)
    lo_g, hi_g = stats.tie_half_ci(out, groups, n_resamples=2000, seed=0)
    lo_v, hi_v = stats.tie_half_ci(out, np.arange(600), n_resamples=2000, seed=0)
    score = out.mean()
    assert lo_g < score < hi_g and lo_v < score < hi_v
    # per-vote resampling ignores the clustering: its interval must be clearly narrower
    assert (hi_g - lo_g) > 1.5 * (hi_v - lo_v)
    # with independent votes the interval matches the normal approximation 2 * 1.96 * sqrt(p(1-p)/n)
    normal_width = 2 * 1.959964 * np.sqrt(score * (1 - score) / 600)
    assert (hi_v - lo_v) == pytest.approx(normal_width, rel=0.12)
    # seeded: same seed, same interval; another seed, another one
    assert stats.tie_half_ci(out, groups, n_resamples=500, seed=3) == stats.tie_half_ci(out, groups, 500, seed=3)
    assert stats.tie_half_ci(out, groups, n_resamples=500, seed=3) != stats.tie_half_ci(out, groups, 500, seed=4)
    assert all(np.isnan(stats.tie_half_ci([1.0, 0.0], [7, 7])))


# ---- multiple comparisons ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["holm", "fdr_bh"])
def test_corrections_match_statsmodels(method):
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(2)
    fn = stats.holm if method == "holm" else stats.benjamini_hochberg
    for m in (1, 3, 8, 25):
        p = np.concatenate([rng.uniform(0, 0.03, m // 2), rng.uniform(0, 1, m - m // 2)])
        p[0] = p[-1]  # a tie among P-values
        for alpha in (0.05, 0.1):
            rej_ref, adj_ref, _, _ = multipletests(p, alpha=alpha, method=method)
            rej, adj = fn(p, alpha=alpha)
            np.testing.assert_allclose(adj, adj_ref, rtol=1e-12)
            np.testing.assert_array_equal(rej, rej_ref)


def test_corrections_leave_nan_out_of_the_family():
    from statsmodels.stats.multitest import multipletests

    p = np.array([0.01, np.nan, 0.02, 0.5])
    _, adj = stats.holm(p)
    _, ref, _, _ = multipletests(p[~np.isnan(p)], method="holm")
    assert np.isnan(adj[1])
    np.testing.assert_allclose(adj[~np.isnan(p)], ref)
    with pytest.raises(UserError, match="P-values"):
        stats.benjamini_hochberg([0.2, 1.5])


# ---- Bradley-Terry -------------------------------------------------------------------------------------------------
def _simulate_pairs(true_beta, n_votes, rng, tie_rate=0.0, per_group=5):
    k = len(true_beta)
    i = rng.integers(0, k, n_votes)
    j = (i + rng.integers(1, k, n_votes)) % k
    p = 1.0 / (1.0 + np.exp(-(true_beta[i] - true_beta[j])))
    # ties drawn so that the expected score stays p (what the tie-as-half model assumes): a tie with probability
    # tie_rate, otherwise a win with probability (p - tie_rate/2) / (1 - tie_rate)
    tie = rng.random(n_votes) < tie_rate
    out = np.where(tie, 0.5, (rng.random(n_votes) < (p - tie_rate / 2) / (1 - tie_rate)).astype(float))
    groups = np.arange(n_votes) // per_group
    return i, j, out, groups


def test_bradley_terry_matches_choix_with_ties_as_half():
    import choix

    rng = np.random.default_rng(3)
    true = np.array([0.0, 0.4, -0.3, 1.0, 0.2])
    i, j, out, _ = _simulate_pairs(true, 800, rng, tie_rate=0.2)
    # choix knows only wins: counting every vote twice turns a tie into one win each way, a win into two wins,
    # which has the same maximiser as the tie-as-half likelihood
    data = []
    for a, b, s in zip(i, j, out):
        if s == 1.0:
            data += [(a, b), (a, b)]
        elif s == 0.0:
            data += [(b, a), (b, a)]
        else:
            data += [(a, b), (b, a)]
    ref = choix.ilsr_pairwise(len(true), data, alpha=0.0, tol=1e-12)
    ref = ref - ref.mean()
    mine = stats.bradley_terry_fit(stats.pair_score_matrix(i, j, out, len(true)), ridge=0.0)
    np.testing.assert_allclose(mine, ref, atol=1e-6)
    ref_opt = choix.opt_pairwise(len(true), data, alpha=2e-3, tol=1e-10)
    # choix's penalty is alpha/2 |beta|^2 on the doubled data: the same estimate with half the ridge on ours
    mine_ridge = stats.bradley_terry_fit(stats.pair_score_matrix(i, j, out, len(true)), ridge=1e-3)
    np.testing.assert_allclose(mine_ridge, ref_opt - ref_opt.mean(), atol=1e-4)


def test_bradley_terry_batch_equals_single_and_handles_separation():
    rng = np.random.default_rng(4)
    mats = np.stack([stats.pair_score_matrix(*_simulate_pairs(np.array([0, 1.0, 2.0]), 90, rng)[:3], 3)
                     for _ in range(4)])
    batch = stats.bradley_terry_fit(mats)
    for b in range(4):
        np.testing.assert_allclose(batch[b], stats.bradley_terry_fit(mats[b]), atol=1e-9)
    # model 0 always wins: the ridge keeps the estimate finite, and the order is right
    w = np.array([[0, 10, 10], [0, 0, 6], [0, 4, 0]], dtype=float)
    beta = stats.bradley_terry_fit(w)
    assert np.all(np.isfinite(beta)) and beta[0] > beta[1] > beta[2]
    assert stats.to_elo(beta).mean() == pytest.approx(1000.0)
    # Elo differences are 400 log10 of the odds
    elo = stats.to_elo(np.array([0.0, np.log(10.0)]))
    assert elo[1] - elo[0] == pytest.approx(400.0)


def test_separated_ranks():
    lo = np.array([1100, 1050, 1000, 900])
    hi = np.array([1200, 1120, 1060, 950])
    # 0 and 1 overlap -> both rank 1; 2 is below 0 only -> 2; 3 is below all three -> 4
    np.testing.assert_array_equal(stats.separated_ranks(lo, hi), [1, 1, 2, 4])


def test_bradley_terry_result_and_errors():
    rng = np.random.default_rng(5)
    names = np.array(["a", "b", "c"])
    i, j, out, groups = _simulate_pairs(np.array([0.0, 0.8, 1.6]), 600, rng, tie_rate=0.1)
    res = stats.bradley_terry(names[i], names[j], out, groups=groups, n_resamples=300, seed=1)
    df = res.frame()
    assert list(df["model"]) == ["c", "b", "a"]
    assert np.all(df["elo_lo"] < df["elo"]) and np.all(df["elo"] < df["elo_hi"])
    again = stats.bradley_terry(names[i], names[j], out, groups=groups, n_resamples=300, seed=1)
    np.testing.assert_array_equal(res.elo_lo, again.elo_lo)
    with pytest.raises(UserError, match="equal lengths"):
        stats.bradley_terry(["a"], ["b", "c"], [1.0])


def test_bradley_terry_intervals_cover_true_strengths():
    """95 % bootstrap intervals from votes drawn with known strengths cover the (centred) truth about 95 % of the
    time; 80 % intervals about 80 %. 60 data sets x 4 models, so the bounds are loose but would catch intervals
    that are far too narrow (e.g. resampling the wrong unit) or far too wide."""
    true = np.array([-0.6, -0.1, 0.2, 0.5])
    true_elo = stats.to_elo(true)
    hits95, hits80 = [], []
    rng = np.random.default_rng(6)
    for rep in range(60):
        i, j, out, groups = _simulate_pairs(true, 400, rng, tie_rate=0.15, per_group=4)
        for level, hits in ((0.95, hits95), (0.8, hits80)):
            res = stats.bradley_terry(i, j, out, groups=groups, n_resamples=200, seed=rep, level=level,
                                      models=[0, 1, 2, 3])
            hits.extend((res.elo_lo <= true_elo) & (true_elo <= res.elo_hi))
    assert 0.88 <= np.mean(hits95) <= 0.99
    assert 0.68 <= np.mean(hits80) <= 0.90


# ---- agreement -----------------------------------------------------------------------------------------------------
def _ratings(n_raters, n_items, n_values, missing, seed):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, n_values, n_items)
    r = np.where(rng.random((n_raters, n_items)) < 0.7, truth[None, :], rng.integers(0, n_values, (n_raters, n_items)))
    r = r.astype(float)
    r[rng.random(r.shape) < missing] = np.nan
    return r


@pytest.mark.parametrize("level", ["ordinal", "nominal", "interval"])
@pytest.mark.parametrize("missing", [0.0, 0.4])
def test_krippendorff_matches_package(level, missing):
    import krippendorff

    for seed in range(3):
        r = _ratings(5, 40, 3, missing, seed)
        ref = krippendorff.alpha(reliability_data=r, level_of_measurement=level)
        assert stats.krippendorff_alpha(r, level) == pytest.approx(ref, abs=1e-10)
    with pytest.raises(UserError, match="level"):
        stats.krippendorff_alpha(r, "ratio-ish")


def test_krippendorff_ordinal_value_domain_and_degenerate():
    import krippendorff

    r = _ratings(3, 30, 3, 0.2, 9)
    r[r == 1] = 2  # the middle value never occurs; the domain still holds it
    ref = krippendorff.alpha(reliability_data=r, level_of_measurement="ordinal", value_domain=[0, 1, 2])
    assert stats.krippendorff_alpha(r, "ordinal", value_domain=[0, 1, 2]) == pytest.approx(ref, abs=1e-10)
    assert np.isnan(stats.krippendorff_alpha(np.ones((3, 5))))


def test_fleiss_matches_statsmodels():
    from statsmodels.stats.inter_rater import fleiss_kappa

    rng = np.random.default_rng(7)
    for k in (2, 3, 4):
        table = rng.multinomial(k, [0.5, 0.3, 0.2], size=50)
        assert stats.fleiss_kappa(table) == pytest.approx(fleiss_kappa(table, method="fleiss"), abs=1e-12)
    with pytest.raises(UserError, match="same number"):
        stats.fleiss_kappa(np.array([[2, 1, 0], [1, 1, 0]]))


def test_raw_and_majority_agreement_match_brute_force():
    r = _ratings(6, 25, 3, 0.3, 8)
    agree = pairs = 0
    hits = np.zeros(6)
    total = np.zeros(6)
    for u in range(r.shape[1]):
        present = [(a, r[a, u]) for a in range(6) if not np.isnan(r[a, u])]
        for (_, x), (_, y) in itertools.permutations(present, 2):
            pairs += 1
            agree += x == y
        for a, x in present:
            others = [y for b, y in present if b != a]
            if not others:
                continue
            vals, cnt = np.unique(others, return_counts=True)
            if (cnt == cnt.max()).sum() == 1:
                total[a] += 1
                hits[a] += vals[cnt.argmax()] == x
    assert stats.raw_agreement(r) == pytest.approx(agree / pairs)
    pooled, per_rater = stats.majority_agreement(r)
    assert pooled == pytest.approx(hits.sum() / total.sum())
    np.testing.assert_allclose(per_rater, hits / total)
    assert np.isnan(stats.raw_agreement(np.array([[1.0, np.nan], [np.nan, 2.0]])))


def test_ratings_matrix():
    df = pd.DataFrame({"item": ["x", "x", "y"], "rater": ["a", "b", "a"], "value": [2, 0, 1]})
    m, raters, items = stats.ratings_matrix(df)
    assert raters == ["a", "b"] and items == ["x", "y"]
    assert m[0].tolist() == [2.0, 1.0] and m[1, 0] == 0.0 and np.isnan(m[1, 1])


# ---- quality control -----------------------------------------------------------------------------------------------
def test_quality_control_flags_exactly_the_planted_problems():
    rng = np.random.default_rng(10)
    rows = []
    t = 0
    for ann in ["good1", "good2", "lefty", "fast", "nogold", "flipper", "stuck"]:
        for n in range(60):
            t += 1
            item = f"i{n}"
            if ann == "lefty":
                answer = "left" if rng.random() < 0.9 else "right"
            elif ann == "stuck":
                answer = "equal" if n < 30 else str(rng.choice(["left", "right", "equal"]))
            else:
                answer = str(rng.choice(["left", "right", "equal"], p=[0.42, 0.42, 0.16]))
            left, right = ("A", "B") if n % 2 else ("B", "A")
            winner = {"left": left, "right": right, "equal": "tie"}[answer]
            is_gold = n < 6
            gold_answer = ("left" if n % 2 else "right") if is_gold else None
            if is_gold:  # "nogold" always picks the wrong side of a gold item
                answer = gold_answer if ann != "nogold" else {"left": "right", "right": "left"}[gold_answer]
                winner = left if answer == "left" else right
            rows.append(dict(annotator=ann, item_id=item, question="alignment", answer=answer, winner=winner,
                             seconds=1.0 if ann == "fast" else float(rng.uniform(5, 9)), created_at=t,
                             is_gold=is_gold, gold_answer=gold_answer, is_repeat=False, repeat_of=None))
        for n in range(6, 14):  # swapped repeats of non-gold items
            orig = next(r for r in rows if r["annotator"] == ann and r["item_id"] == f"i{n}")
            winner = orig["winner"]
            if ann == "flipper":
                winner = {"A": "B", "B": "A", "tie": "A"}[winner]
            rows.append(dict(orig, item_id=f"r{n}", is_repeat=True, repeat_of=f"i{n}", winner=winner,
                             created_at=t + n))
    qc = stats.quality_control(pd.DataFrame(rows)).set_index("annotator")
    assert set(qc.index[qc["flagged"]]) == {"lefty", "fast", "nogold", "flipper", "stuck"}
    assert "position bias" in qc.loc["lefty", "flags"]
    assert "fast" in qc.loc["fast", "flags"]
    assert "gold accuracy" in qc.loc["nogold", "flags"]
    assert "self-consistency" in qc.loc["flipper", "flags"]
    assert "run of" in qc.loc["stuck", "flags"]
    assert qc.loc["good1", "gold_accuracy"] == 1.0 and qc.loc["good1", "self_consistency"] == 1.0
    assert qc.loc["flipper", "self_consistency"] == 0.0
    assert stats.longest_run("aabbbba") == 4 and stats.longest_run([]) == 0


def test_sign_test_on_arrays_equals_scalars():
    w = np.array([0, 5, 12, 60, 0])
    lo = np.array([1, 5, 3, 40, 0])
    out = stats.sign_test(w, lo)
    assert isinstance(out, np.ndarray) and np.isnan(out[-1])
    np.testing.assert_allclose(out[:-1], [stats.sign_test(int(a), int(b)) for a, b in zip(w[:-1], lo[:-1])])


def test_stratified_weights_keep_strata_sizes_and_match_plain_draw():
    strata = np.array(["a"] * 5 + ["b"] * 3 + ["c"])
    w = stats.stratified_resample_weights(strata, 400, seed=2)
    for s in "abc":
        assert np.all(w[:, strata == s].sum(axis=1) == (strata == s).sum())
    assert w[:, strata == "c"].min() == 1  # a single-prompt stratum is always drawn once
    # one stratum: the same draws as the plain prompt bootstrap, so tie_half_ci and ratio_bootstrap_ci agree
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(30), 4)
    out = rng.choice([0.0, 0.5, 1.0], size=120)
    sums = np.bincount(groups, weights=out)[:, None]
    counts = np.bincount(groups).astype(float)[:, None]
    lo, hi = stats.ratio_bootstrap_ci(stats.group_resample_weights(30, 500, 9), sums, counts)
    assert (lo[0], hi[0]) == pytest.approx(stats.tie_half_ci(out, groups, n_resamples=500, seed=9))
    # the same ratio computed one resample at a time
    wts = stats.group_resample_weights(30, 500, 9)
    ratios = [(row @ sums[:, 0]) / (row @ counts[:, 0]) for row in wts]
    assert (lo[0], hi[0]) == pytest.approx(tuple(np.quantile(ratios, [0.025, 0.975])))
