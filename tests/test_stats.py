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
    assert "left_bias" in qc.loc["lefty", "flags"].split(", ")
    assert qc.loc["fast", "flags"] == "fast" and qc.loc["nogold", "flags"] == "gold"
    assert qc.loc["flipper", "flags"] == "inconsistent" and "repeats consistent" in qc.loc["flipper", "reasons"]
    assert "same_answer_run" in qc.loc["stuck", "flags"]
    assert qc.loc["good1", "gold_accuracy"] == 1.0 and qc.loc["good1", "self_consistency"] == 1.0
    assert qc.loc["flipper", "self_consistency"] == 0.0 and qc.loc["flipper", "repeat_n"] == 8
    # chance of naming the same winner twice at random: the sum of the squared answer shares on regular items
    reg = pd.DataFrame(rows)
    reg = reg[(reg["annotator"] == "good1") & ~reg["is_gold"] & ~reg["is_repeat"]]
    shares = reg["winner"].value_counts(normalize=True)
    assert qc.loc["good1", "consistency_chance"] == pytest.approx(float((shares ** 2).sum()))
    from scipy.stats import binomtest

    assert qc.loc["good1", "consistency_p"] == pytest.approx(
        binomtest(8, 8, qc.loc["good1", "consistency_chance"], alternative="greater").pvalue)
    assert stats.longest_run("aabbbba") == 4 and stats.longest_run([]) == 0
    assert set(stats.qc_rules()) == set(stats.QC_FLAGS)


def test_self_consistency_needs_enough_repeated_items_and_counts_items_not_votes():
    """A repeat is one item with two questions: it counts once, consistent only if both answers match. Fewer than
    `min_repeat_items` repeated items never flag anyone, however inconsistent."""
    rows = []
    for n in range(40):
        for q in ("alignment", "quality"):
            rows.append(dict(annotator="x", item_id=n, question=q, answer="left", winner=["A", "B"][n % 2],
                             model_a="A", model_b="B", is_gold=False, gold_answer=None, is_repeat=False,
                             repeat_of=None, created_at=2 * n, seconds=5.0))
    for k, n in enumerate(range(4)):  # four repeats: the alignment answer flips, the quality answer holds
        for q in ("alignment", "quality"):
            flip = {"A": "B", "B": "A"} if q == "alignment" else {"A": "A", "B": "B"}
            rows.append(dict(rows[2 * n + (q == "quality")], item_id=100 + k, is_repeat=True, repeat_of=n,
                             winner=flip[["A", "B"][n % 2]], created_at=200 + k))
    qc = stats.quality_control(pd.DataFrame(rows)).set_index("annotator")
    assert qc.loc["x", "repeat_n"] == 4 and qc.loc["x", "repeat_consistent"] == 0
    assert "inconsistent" not in qc.loc["x", "flags"]  # only 4 repeated items (< 5)
    cfg = stats.QCConfig(min_repeat_items=4)
    assert "inconsistent" in stats.quality_control(pd.DataFrame(rows), cfg).set_index("annotator").loc["x", "flags"]


def test_sign_test_on_arrays_equals_scalars():
    w = np.array([0, 5, 12, 60, 0])
    lo = np.array([1, 5, 3, 40, 0])
    out = stats.sign_test(w, lo)
    assert isinstance(out, np.ndarray) and np.isnan(out[-1])
    np.testing.assert_allclose(out[:-1], [stats.sign_test(int(a), int(b)) for a, b in zip(w[:-1], lo[:-1])])


def test_rescaled_weights_keep_strata_and_give_the_unbiased_variance():
    strata = np.array(["a"] * 2 + ["b"] * 2 + ["c"] * 5 + ["d"] + ["e"])
    w = stats.rescaled_resample_weights(strata, 20000, seed=2)
    # n_h - 1 draws of weight n_h / (n_h - 1): each stratum keeps its total weight n_h
    for s_ in "abc":
        np.testing.assert_allclose(w[:, strata == s_].sum(axis=1), (strata == s_).sum())
    # the two single-prompt strata are pooled into one stratum of two: one is drawn, with weight 2
    single = w[:, np.isin(strata, ["d", "e"])]
    assert set(np.unique(single)) == {0.0, 2.0} and np.all(single.sum(axis=1) == 2)
    np.testing.assert_array_equal(stats.stratum_codes(strata), [0, 0, 1, 1, 2, 2, 2, 2, 2, 3, 3])
    # the bootstrap variance of a stratified total is the unbiased sum_h n_h s_h^2 (a plain bootstrap gives
    # sum_h (n_h - 1) s_h^2: half of it at two units per stratum)
    rng = np.random.default_rng(0)
    y = rng.normal(size=strata.size)
    expected = sum((strata == s_).sum() * np.var(y[strata == s_], ddof=1) for s_ in "abc")
    expected += 2 * np.var(y[np.isin(strata, ["d", "e"])], ddof=1)
    assert np.var(w @ y) == pytest.approx(expected, rel=0.05)
    assert np.all(stats.rescaled_resample_weights(["x"], 5, 0) == 1.0)
    with pytest.raises(UserError, match="n_resamples"):
        stats.rescaled_resample_weights(strata, 0, 0)


def test_resampling_totals_equal_a_loop_over_votes():
    rng = np.random.default_rng(4)
    n_votes, n_prompts, n_ann, n_cells = 300, 40, 6, 5
    prompt = rng.integers(0, n_prompts, n_votes)
    ann = rng.integers(0, n_ann, n_votes)
    cell = rng.integers(0, n_cells, n_votes)
    x = rng.choice([0.0, 0.5, 1.0], n_votes)
    for two in (False, True):
        r = stats.prompt_resampling(np.arange(n_prompts) % 4, 50, seed=1, n_annotators=n_ann if two else None)
        got = r.totals(prompt, ann, cell, x, n_cells)
        w = r.prompt[:, prompt] * (r.annotator[:, ann] if two else 1.0)
        want = np.stack([(w * (cell == c) * x).sum(axis=1) for c in range(n_cells)], axis=1)
        np.testing.assert_allclose(got, want)
    with pytest.raises(UserError, match="at least 2 annotators"):
        stats.prompt_resampling(np.zeros(3), 10, 0, n_annotators=1)


def test_sign_flip_matches_scipy_permutation_test():
    from scipy.stats import permutation_test

    rng = np.random.default_rng(5)
    d = rng.choice([-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0], size=(14, 3))
    d[:, 2] = 0.0
    d[:4, 2] = [0.5, 1.0, 0.5, 1.5]
    p = stats.sign_flip_pvalues(d, seed=0)
    for c in range(3):
        x = d[d[:, c] != 0, c]
        ref = permutation_test((x,), lambda a, axis: a.sum(axis=axis), permutation_type="samples",
                               n_resamples=np.inf, vectorized=True).pvalue
        assert p[c] == pytest.approx(ref, abs=1e-12)  # exact enumeration below 17 prompts
    # beyond exact_max: Monte Carlo with (1 + hits) / (1 + flips), close to the exact value
    big = rng.choice([-1.0, -0.5, 0.5, 1.0, 1.5], size=40)
    ref = permutation_test((big,), lambda a, axis: a.sum(axis=axis), permutation_type="samples",
                           n_resamples=200_000, vectorized=True, rng=1).pvalue
    assert stats.sign_flip_pvalues(big, n_flips=20_000, seed=3)[0] == pytest.approx(ref, abs=0.015)
    assert stats.sign_flip_pvalues(big, n_flips=999, seed=3)[0] >= 1 / 1000
    assert np.isnan(stats.sign_flip_pvalues(np.zeros((5, 1)))[0])
    # seeded
    assert stats.sign_flip_pvalues(big, 500, seed=1)[0] == stats.sign_flip_pvalues(big, 500, seed=1)[0]


def test_bootstrap_pvalues_and_t_widening():
    boot = np.array([[0.50, 0.6], [0.55, 0.7], [0.60, 0.8], [0.65, 0.9]])
    # column 0: estimate 0.6, null 0.5: only the resample at 0.50 lies 0.1 or more from the estimate; column 1: none
    p = stats.bootstrap_pvalues(np.array([0.6, 0.75]), boot, 0.5)
    assert p[0] == pytest.approx((1 + 1) / 5) and p[1] == pytest.approx((1 + 0) / 5)
    from scipy.stats import norm, t

    lo, hi = stats.t_widened(np.array([0.5]), np.array([0.4]), np.array([0.7]), np.array([12]))
    f = t.ppf(0.975, 12) / norm.ppf(0.975)
    assert (lo[0], hi[0]) == pytest.approx((0.5 - 0.1 * f, 0.5 + 0.2 * f))
    assert np.isnan(stats.t_widened(np.array([0.5]), np.array([0.4]), np.array([0.6]), np.array([0]))[0][0])
    lo, hi = stats.t_widened(np.array([0.95]), np.array([0.9]), np.array([0.99]), np.array([3]), bounds=(0, 1))
    assert hi[0] == 1.0


def test_design_effect_matches_one_way_anova():
    from scipy.stats import f_oneway

    rng = np.random.default_rng(6)
    k, m = 40, 3  # balanced: rho = (F - 1) / (F + m - 1)
    y = rng.normal(size=(k, 1)) * 0.8 + rng.normal(size=(k, m))
    f = f_oneway(*y).statistic  # each row of y is one cluster
    rho, deff = stats.design_effect(y.sum(axis=1)[:, None], (y ** 2).sum(axis=1)[:, None],
                                    np.full((k, 1), float(m)))
    assert rho[0] == pytest.approx((f - 1) / (f + m - 1))
    assert deff[0] == pytest.approx(1 + (m - 1) * rho[0])
    # no clustering at all: clipped at 0; a single cluster: undefined
    flat = np.array([[1.0], [1.0]])
    assert stats.design_effect(flat, flat, np.array([[2.0], [2.0]]))[0][0] == 0.0
    assert np.isnan(stats.design_effect(np.array([[3.0]]), np.array([[5.0]]), np.array([[3.0]]))[0][0])


def test_agreement_resampling_equals_duplicating_items():
    """An item drawn twice in a resample counts as two items: integer item weights give exactly the statistics of
    the ratings matrix with those items repeated (checked against the krippendorff package and statsmodels)."""
    import krippendorff
    from statsmodels.stats.inter_rater import fleiss_kappa

    r = _ratings(4, 30, 3, 0.0, 11)
    r[:, :10] = np.where(np.random.default_rng(1).random((4, 10)) < 0.3, np.nan, r[:, :10])
    parts = stats.agreement_parts(r, r, [0.0, 1.0, 2.0])
    point = stats.agreement_values(parts, np.ones((1, 30)))
    assert point["krippendorff_alpha"][0] == pytest.approx(stats.krippendorff_alpha(r, "ordinal", [0, 1, 2]))
    assert point["raw_agreement"][0] == pytest.approx(stats.raw_agreement(r))
    assert point["majority_agreement"][0] == pytest.approx(stats.majority_agreement(r)[0])
    counts = np.random.default_rng(2).multinomial(30, np.ones(30) / 30)
    got = stats.agreement_values(parts, counts[None, :].astype(float))
    dup = np.repeat(r, counts, axis=1)
    ref = krippendorff.alpha(reliability_data=dup, level_of_measurement="ordinal", value_domain=[0, 1, 2])
    assert got["krippendorff_alpha"][0] == pytest.approx(ref, abs=1e-10)
    assert got["raw_agreement"][0] == pytest.approx(stats.raw_agreement(dup))
    assert got["majority_agreement"][0] == pytest.approx(stats.majority_agreement(dup)[0])
    full = dup[:, (~np.isnan(dup)).sum(axis=0) == 4]
    table = np.stack([(full == v).sum(axis=0) for v in (0.0, 1.0, 2.0)], axis=1)
    assert got["fleiss_kappa"][0] == pytest.approx(fleiss_kappa(table, method="fleiss"), abs=1e-12)


def test_bradley_terry_with_the_shared_resampling_equals_its_own():
    rng = np.random.default_rng(8)
    names = np.array(["a", "b", "c"])
    i, j, out, groups = _simulate_pairs(np.array([0.0, 0.5, 1.0]), 300, rng, per_group=3)
    own = stats.bradley_terry(names[i], names[j], out, groups=groups, n_resamples=200, seed=4)
    shared = stats.prompt_resampling(np.zeros(int(groups.max()) + 1), 200, seed=4)
    via = stats.bradley_terry(names[i], names[j], out, groups=groups, resampling=shared)
    np.testing.assert_allclose(own.elo_lo, via.elo_lo)
    np.testing.assert_allclose(own.elo_hi, via.elo_hi)
