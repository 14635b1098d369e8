"""Statistics shared by metrics and side-by-side studies.

Pure functions on numpy arrays and pandas frames; every random step takes a seed. Sections:
bootstrap intervals; proportions and tests (Wilson, sign test, tie-as-half score); multiple comparisons (Holm,
Benjamini-Hochberg); Bradley-Terry strengths (ties as half a win, Elo scale, bootstrap intervals, ranks); agreement
(raw, with the majority, Krippendorff's alpha, Fleiss' kappa); quality control of annotators.

Outcome coding used throughout: from the point of view of the first model of a pair, 1.0 = win, 0.5 = tie
(equal or both bad: neither image was preferred), 0.0 = loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

from k3eval.errors import UserError

ELO_SCALE = 400.0 / math.log(10.0)  # Elo points per unit of log-strength: P(i beats j) = 1 / (1 + 10^(-d/400))
ELO_CENTRE = 1000.0


# ---- bootstrap -----------------------------------------------------------------------------------------------------
def bootstrap_ci(values: Sequence[float] | np.ndarray, groups: Sequence | None = None,
                 stat: Callable[[np.ndarray], float] = np.mean, n_resamples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of `stat(values)`.

    With `groups` (e.g. prompt ids), whole groups are resampled with replacement, because several values of one
    group (images or votes on one prompt) are correlated and resampling them one by one makes the interval too
    narrow. Returns (low, high); (nan, nan) for fewer than 2 values.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    alpha = (1.0 - level) / 2.0
    if groups is None:
        idx = rng.integers(0, x.size, size=(n_resamples, x.size))
        stats = np.array([stat(x[row]) for row in idx])
    else:
        g = np.asarray(groups)
        _, inverse = np.unique(g, return_inverse=True)
        members = [np.flatnonzero(inverse == k) for k in range(inverse.max() + 1)]
        picks = rng.integers(0, len(members), size=(n_resamples, len(members)))
        stats = np.array([stat(x[np.concatenate([members[k] for k in row])]) for row in picks])
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


def group_resample_weights(n_groups: int, n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, n_groups) counts: how often each group is drawn in each resample (groups drawn with
    replacement, n_groups per resample). Multiplying by per-group sums gives resampled totals without copying data.
    """
    return stratified_resample_weights(np.zeros(n_groups, dtype=np.int64), n_resamples, seed)


def stratified_resample_weights(strata: Sequence | np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Like `group_resample_weights`, but groups are drawn with replacement within each stratum (e.g. prompts within
    their category), so every resample keeps the number of groups per stratum. `strata` has one label per group.
    With a single stratum this is exactly `group_resample_weights` with the same seed."""
    labels = np.asarray(strata)
    n_groups = labels.size
    rng = np.random.default_rng(seed)
    if n_groups == 0:
        return np.zeros((n_resamples, 0))
    _, inverse = np.unique(labels, return_inverse=True)
    # picks[b, slot] = the group drawn into that slot of resample b; a stratum's slots draw only its own groups
    picks = np.empty((n_resamples, n_groups), dtype=np.int64)
    for k in range(int(inverse.max()) + 1):
        members = np.flatnonzero(inverse == k)
        picks[:, members] = members[rng.integers(0, members.size, size=(n_resamples, members.size))]
    picks += (np.arange(n_resamples, dtype=np.int64) * n_groups)[:, None]
    counts = np.bincount(picks.ravel(), minlength=n_resamples * n_groups)
    return counts.reshape(n_resamples, n_groups).astype(np.float64)


def ratio_bootstrap_ci(weights: np.ndarray, sums: np.ndarray, counts: np.ndarray, level: float = 0.95
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Percentile intervals of ratios sum/count for many cells at once from group resampling weights.

    weights: (resamples, groups) from `group_resample_weights`/`stratified_resample_weights`; sums, counts:
    (groups, cells), e.g. per prompt the total score and the number of votes of each cell. Resamples in which a cell
    has no votes are left out of that cell's quantiles. Returns (low, high), each (cells,); nan for cells with fewer
    than two groups holding votes.
    """
    _check_level(level)
    num = weights @ sums
    den = weights @ counts
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(den > 0, num / den, np.nan)
    a = (1.0 - level) / 2.0
    enough = (counts > 0).sum(axis=0) >= 2
    if not enough.any():
        return np.full(sums.shape[1], np.nan), np.full(sums.shape[1], np.nan)
    lo = np.full(sums.shape[1], np.nan)
    hi = np.full(sums.shape[1], np.nan)
    # np.nanquantile loops in Python over columns: use it only for the few cells with empty resamples
    gaps = np.isnan(ratio).any(axis=0)
    for cols, fn in ((enough & ~gaps, np.quantile), (enough & gaps, np.nanquantile)):
        if cols.any():
            q = fn(ratio[:, cols], [a, 1.0 - a], axis=0)
            lo[cols], hi[cols] = q[0], q[1]
    return lo, hi


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise UserError(f"level must be between 0 and 1 (e.g. 0.95), got {level!r}")


# ---- proportions and tests -----------------------------------------------------------------------------------------
@lru_cache(maxsize=16)
def _z(level: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(1.0 - (1.0 - level) / 2.0))


def wilson_ci(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval (no continuity correction) for a proportion `successes / n`; (nan, nan) when n = 0."""
    _check_level(level)
    if n < 0 or successes < 0 or successes > n:
        raise UserError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return (float("nan"), float("nan"))
    z = _z(float(level))
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2.0 * n)) / denom
    half = z / denom * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


def sign_test(wins, losses):
    """Exact two-sided sign test of wins against losses (ties left out): P-value of H0 'each side wins half'.

    Because the null is p = 1/2 the two-sided P-value is twice the smaller tail, capped at 1; nan with no votes.
    Scalars give a float; arrays (of equal shape) give an array, computed in one call.
    """
    from scipy.stats import binom

    w = np.asarray(wins, dtype=np.int64)
    lo = np.asarray(losses, dtype=np.int64)
    n = w + lo
    p = np.where(n > 0, np.minimum(1.0, 2.0 * binom.cdf(np.minimum(w, lo), np.maximum(n, 1), 0.5)), np.nan)
    return float(p) if p.ndim == 0 else p


def tie_half_score(outcomes: Sequence[float] | np.ndarray) -> float:
    """(W + T/2) / N for outcomes coded 1 / 0.5 / 0; nan for no votes."""
    x = np.asarray(outcomes, dtype=np.float64)
    return float(x.mean()) if x.size else float("nan")


def tie_half_ci(outcomes: Sequence[float] | np.ndarray, groups: Sequence, n_resamples: int = 1000, seed: int = 0,
                level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the tie-as-half score, resampling whole groups (prompts), not votes.

    Votes on one prompt share the prompt's difficulty, so they are correlated; resampling prompts keeps that in the
    interval. A resample's score is sum(outcomes of drawn prompts) / count(votes of drawn prompts).
    Returns (nan, nan) with fewer than 2 groups.
    """
    _check_level(level)
    x = np.asarray(outcomes, dtype=np.float64)
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = int(inverse.max()) + 1 if x.size else 0
    if n_groups < 2:
        return (float("nan"), float("nan"))
    sums = np.bincount(inverse, weights=x, minlength=n_groups)
    counts = np.bincount(inverse, minlength=n_groups).astype(np.float64)
    w = group_resample_weights(n_groups, n_resamples, seed)
    scores = (w @ sums) / (w @ counts)
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(scores, [a, 1.0 - a])
    return (float(lo), float(hi))


# ---- multiple comparisons ------------------------------------------------------------------------------------------
def _finite_p(pvalues: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pvalues, dtype=np.float64)
    if np.any((p < 0) | (p > 1)):
        raise UserError(f"P-values must lie in [0, 1], got {p[(p < 0) | (p > 1)][:3].tolist()}")
    return p, np.flatnonzero(~np.isnan(p))


def holm(pvalues: Sequence[float] | np.ndarray, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Holm step-down adjustment (family-wise error). Returns (reject, adjusted P-values); nan P-values stay nan
    and do not count towards the family size."""
    p, ok = _finite_p(pvalues)
    adj = np.full(p.shape, np.nan)
    m = ok.size
    if m:
        order = ok[np.argsort(p[ok], kind="stable")]
        steps = np.minimum(1.0, (m - np.arange(m)) * p[order])
        adj[order] = np.maximum.accumulate(steps)
    return np.where(np.isnan(adj), False, adj <= alpha), adj


def benjamini_hochberg(pvalues: Sequence[float] | np.ndarray, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Benjamini-Hochberg step-up adjustment (false discovery rate). Returns (reject, adjusted P-values)."""
    p, ok = _finite_p(pvalues)
    adj = np.full(p.shape, np.nan)
    m = ok.size
    if m:
        order = ok[np.argsort(p[ok], kind="stable")]
        steps = p[order] * m / np.arange(1, m + 1)
        adj[order] = np.minimum(1.0, np.minimum.accumulate(steps[::-1])[::-1])
    return np.where(np.isnan(adj), False, adj <= alpha), adj


# ---- Bradley-Terry -------------------------------------------------------------------------------------------------
def pair_score_matrix(i: Sequence[int] | np.ndarray, j: Sequence[int] | np.ndarray,
                      outcome: Sequence[float] | np.ndarray, n_models: int,
                      weights: np.ndarray | None = None) -> np.ndarray:
    """W[a, b] = total score of model a against model b (a win adds 1 to W[i, j], a tie adds 0.5 to both)."""
    i = np.asarray(i, dtype=np.int64)
    j = np.asarray(j, dtype=np.int64)
    s = np.asarray(outcome, dtype=np.float64)
    w = np.ones_like(s) if weights is None else np.asarray(weights, dtype=np.float64)
    out = np.zeros(n_models * n_models)
    np.add.at(out, i * n_models + j, w * s)
    np.add.at(out, j * n_models + i, w * (1.0 - s))
    return out.reshape(n_models, n_models)


def bradley_terry_fit(wins: np.ndarray, ridge: float = 1e-6, max_iter: int = 200, tol: float = 1e-10) -> np.ndarray:
    """Maximum-likelihood Bradley-Terry log-strengths from score matrices, centred to mean 0.

    `wins` is (K, K) or a batch (B, K, K) of pair score matrices (see `pair_score_matrix`; fractional scores from
    ties are allowed: a tie is half a win each way, i.e. the likelihood of a tie is sqrt(p_ij * p_ji)).
    Model: P(a beats b) = 1 / (1 + exp(-(beta_a - beta_b))). Newton's method on the concave log-likelihood with a
    small ridge penalty `ridge/2 * |beta|^2` (the same device as choix's `alpha`), which keeps the estimate finite
    when a model wins or loses every comparison and when the comparison graph is disconnected.
    """
    w = np.asarray(wins, dtype=np.float64)
    single = w.ndim == 2
    if single:
        w = w[None]
    if w.ndim != 3 or w.shape[1] != w.shape[2]:
        raise UserError(f"wins must be (K, K) or (B, K, K), got shape {np.asarray(wins).shape}")
    b_count, k, _ = w.shape
    n = w + np.swapaxes(w, 1, 2)
    row_wins = w.sum(axis=2)
    beta = np.zeros((b_count, k))
    # The log-likelihood only sees differences: adding 11^T/K to the (negative) Hessian removes the flat direction,
    # and since the gradient sums to zero every step keeps sum(beta) = 0.
    centre = np.ones((k, k)) / k
    eye = np.eye(k)
    for _ in range(max_iter):
        d = beta[:, :, None] - beta[:, None, :]
        p = 1.0 / (1.0 + np.exp(-d))
        grad = row_wins - (n * p).sum(axis=2) - ridge * beta
        q = n * p * (1.0 - p)
        neg_hess = -q
        idx = np.arange(k)
        neg_hess[:, idx, idx] = q.sum(axis=2)
        step = np.linalg.solve(neg_hess + ridge * eye + centre, grad[:, :, None])[:, :, 0]
        # Limit the step: far from the optimum (near-separated data) a full Newton step can overshoot.
        big = np.abs(step).max(axis=1, keepdims=True)
        step = np.where(big > 5.0, step * (5.0 / np.maximum(big, 1e-300)), step)
        beta = beta + step
        if float(np.abs(step).max()) < tol:
            break
    beta = beta - beta.mean(axis=1, keepdims=True)
    return beta[0] if single else beta


def to_elo(beta: np.ndarray) -> np.ndarray:
    """Log-strengths to the Elo scale: 400 / ln(10) points per unit, centred at 1000."""
    b = np.asarray(beta, dtype=np.float64)
    return ELO_CENTRE + ELO_SCALE * (b - b.mean(axis=-1, keepdims=True))


def separated_ranks(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Rank 1 + the number of models whose interval lies wholly above this model's interval: models whose
    intervals overlap share a rank, so a rank never claims a difference the data do not support."""
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    return 1 + (lo[None, :] > hi[:, None]).sum(axis=1)


@dataclass
class BradleyTerryResult:
    """Strengths of `models` (log scale, mean 0), their Elo ratings and bootstrap intervals, and ranks."""

    models: list[str]
    beta: np.ndarray
    elo: np.ndarray
    elo_lo: np.ndarray
    elo_hi: np.ndarray
    rank: np.ndarray
    n_votes: int
    n_groups: int
    n_resamples: int
    level: float
    seed: int

    def frame(self) -> pd.DataFrame:
        df = pd.DataFrame({"model": self.models, "strength": self.beta, "elo": self.elo, "elo_lo": self.elo_lo,
                           "elo_hi": self.elo_hi, "rank": self.rank})
        return df.sort_values(["rank", "elo"], ascending=[True, False]).reset_index(drop=True)


def bradley_terry(model_i: Sequence[str], model_j: Sequence[str], outcome: Sequence[float],
                  groups: Sequence | None = None, n_resamples: int = 1000, seed: int = 0, level: float = 0.95,
                  ridge: float = 1e-6, models: Sequence[str] | None = None) -> BradleyTerryResult:
    """Bradley-Terry strengths with percentile bootstrap intervals on the Elo scale.

    One entry per vote: the two models and the outcome for `model_i` (1 / 0.5 / 0). `groups` (prompt ids) are
    resampled whole, as in `tie_half_ci`; without groups each vote is its own group. Ranks separate only models
    whose intervals do not overlap (`separated_ranks`).
    """
    _check_level(level)
    mi = np.asarray(model_i, dtype=object)
    mj = np.asarray(model_j, dtype=object)
    s = np.asarray(outcome, dtype=np.float64)
    if not (mi.size == mj.size == s.size):
        raise UserError(f"model_i, model_j and outcome must have equal lengths, got {mi.size}, {mj.size}, {s.size}")
    names = list(models) if models is not None else sorted(set(mi.tolist()) | set(mj.tolist()))
    index = {m: k for k, m in enumerate(names)}
    unknown = (set(mi.tolist()) | set(mj.tolist())) - set(index)
    if unknown:
        raise UserError(f"votes name models not in `models`: {sorted(unknown)}")
    k = len(names)
    ii = np.array([index[m] for m in mi], dtype=np.int64)
    jj = np.array([index[m] for m in mj], dtype=np.int64)
    beta = bradley_terry_fit(pair_score_matrix(ii, jj, s, k), ridge=ridge)
    g = np.arange(s.size) if groups is None else np.asarray(groups)
    _, inverse = np.unique(g, return_inverse=True)
    n_groups = int(inverse.max()) + 1 if s.size else 0
    if n_groups >= 2 and n_resamples > 0:
        # Per-group score matrices, flattened, so each resample's matrix is one weighted sum (a matrix product).
        per_group = np.zeros((n_groups, k * k))
        np.add.at(per_group, (inverse, ii * k + jj), s)
        np.add.at(per_group, (inverse, jj * k + ii), 1.0 - s)
        w = group_resample_weights(n_groups, n_resamples, seed)
        boot = bradley_terry_fit((w @ per_group).reshape(n_resamples, k, k), ridge=ridge)
        a = (1.0 - level) / 2.0
        elo_boot = to_elo(boot)
        lo, hi = np.quantile(elo_boot, [a, 1.0 - a], axis=0)
    else:
        lo = hi = np.full(k, np.nan)
    elo = to_elo(beta)
    rank = separated_ranks(lo, hi) if n_groups >= 2 else np.ones(k, dtype=int)
    return BradleyTerryResult(names, beta, elo, lo, hi, rank, int(s.size), n_groups, n_resamples, level, seed)


# ---- agreement -----------------------------------------------------------------------------------------------------
def ratings_matrix(frame: pd.DataFrame, item: str = "item", rater: str = "rater", value: str = "value"
                   ) -> tuple[np.ndarray, list, list]:
    """Long ratings (one row per rating) to a (raters, items) float matrix with nan where a rater skipped an item.

    Returns (matrix, rater labels, item labels), labels sorted. A rater rating an item twice keeps the last rating.
    """
    r_codes, raters = pd.factorize(frame[rater], sort=True)
    i_codes, items = pd.factorize(frame[item], sort=True)
    m = np.full((len(raters), len(items)), np.nan)
    m[r_codes, i_codes] = frame[value].to_numpy(dtype=np.float64)  # later rows overwrite earlier ones
    return m, list(raters), list(items)


def _value_counts(reliability: np.ndarray, domain: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(items, values) counts of each value per item, and the value domain (sorted)."""
    r = np.asarray(reliability, dtype=np.float64)
    vals = np.unique(r[~np.isnan(r)]) if domain is None else np.asarray(domain, dtype=np.float64)
    counts = np.stack([(r == v).sum(axis=0) for v in vals], axis=1).astype(np.float64) if vals.size else \
        np.zeros((r.shape[1], 0))
    return counts, vals


def raw_agreement(reliability: np.ndarray) -> float:
    """Share of agreeing pairs among all pairs of ratings of the same item (items with 2+ ratings, pooled).

    `reliability` is (raters, items) with nan for missing ratings. nan when no item has two ratings.
    """
    counts, _ = _value_counts(reliability)
    m = counts.sum(axis=1)
    pairs = (m * (m - 1)).sum()
    if pairs == 0:
        return float("nan")
    return float((counts * (counts - 1)).sum() / pairs)


def majority_agreement(reliability: np.ndarray) -> tuple[float, np.ndarray]:
    """Agreement with the majority of the other raters (leave one out).

    For every rating of an item with 2+ ratings, whether it equals the strict majority answer of the item's other
    ratings (ratings whose other raters are split evenly are left out). Returns (pooled share, per-rater share),
    nan where nothing counts. Leaving the rating out keeps a rater from agreeing with themself.
    """
    r = np.asarray(reliability, dtype=np.float64)
    counts, vals = _value_counts(r)
    rater, item = np.nonzero(~np.isnan(r))
    code = np.searchsorted(vals, r[rater, item])
    others = counts[item].copy()
    others[np.arange(code.size), code] -= 1.0
    top = others.max(axis=1) if code.size else np.zeros(0)
    valid = ((others == top[:, None]).sum(axis=1) == 1) & (top > 0)
    agree = valid & (others[np.arange(code.size), code] == top)
    hits = np.bincount(rater, weights=agree.astype(float), minlength=r.shape[0])
    total = np.bincount(rater, weights=valid.astype(float), minlength=r.shape[0])
    per_rater = np.divide(hits, total, out=np.full(r.shape[0], np.nan), where=total > 0)
    pooled = float(hits.sum() / total.sum()) if total.sum() else float("nan")
    return pooled, per_rater


def krippendorff_alpha(reliability: np.ndarray, level: str = "ordinal",
                       value_domain: Sequence[float] | None = None) -> float:
    """Krippendorff's alpha for (raters, items) ratings with nan for missing ones.

    `level`: 'nominal', 'ordinal' or 'interval'. Built from the coincidence matrix: each item with m >= 2 ratings
    adds every ordered pair of its ratings with weight 1/(m-1). Ordinal distances use the pooled value frequencies
    (Krippendorff 2011). The value domain defaults to the values present. nan when there is no variation or fewer
    than two pairable ratings.
    """
    if level not in ("nominal", "ordinal", "interval"):
        raise UserError(f"level must be 'nominal', 'ordinal' or 'interval', got {level!r}")
    counts, vals = _value_counts(reliability, None if value_domain is None else np.asarray(value_domain))
    m = counts.sum(axis=1)
    use = m >= 2
    counts, m = counts[use], m[use]
    if counts.shape[0] == 0 or vals.size < 2:
        return float("nan")
    # o[c, k] = sum over items of n_c * n_k (minus self-pairs on the diagonal) / (m - 1)
    o = (counts / (m - 1)[:, None]).T @ counts - np.diag((counts / (m - 1)[:, None]).sum(axis=0))
    n_c = o.sum(axis=1)
    n = n_c.sum()
    if level == "nominal":
        delta = 1.0 - np.eye(vals.size)
    elif level == "interval":
        delta = (vals[:, None] - vals[None, :]) ** 2
    else:
        cum = np.concatenate([[0.0], np.cumsum(n_c)])
        lo_idx = np.minimum.outer(np.arange(vals.size), np.arange(vals.size))
        hi_idx = np.maximum.outer(np.arange(vals.size), np.arange(vals.size))
        between = cum[hi_idx + 1] - cum[lo_idx]
        delta = (between - (n_c[:, None] + n_c[None, :]) / 2.0) ** 2
    expected = (np.outer(n_c, n_c) * delta).sum()
    if expected == 0:
        return float("nan")
    return float(1.0 - (n - 1.0) * (o * delta).sum() / expected)


def fleiss_kappa(table: np.ndarray) -> float:
    """Fleiss' kappa from an (items, categories) table of counts; every item must have the same number of ratings.

    nan when all ratings fall into one category (chance agreement is then 1).
    """
    t = np.asarray(table, dtype=np.float64)
    if t.ndim != 2 or t.shape[0] == 0:
        raise UserError(f"table must be a non-empty (items, categories) array, got shape {t.shape}")
    per_item = t.sum(axis=1)
    if not np.all(per_item == per_item[0]) or per_item[0] < 2:
        raise UserError("Fleiss' kappa needs the same number (2 or more) of ratings for every item; "
                        f"got between {int(per_item.min())} and {int(per_item.max())}")
    r = per_item[0]
    p_item = ((t * t).sum(axis=1) - r) / (r * (r - 1.0))
    p_cat = t.sum(axis=0) / t.sum()
    pe = float((p_cat ** 2).sum())
    if pe >= 1.0:
        return float("nan")
    return float((p_item.mean() - pe) / (1.0 - pe))


# ---- quality control -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QCConfig:
    """Thresholds of the annotator quality-control flags."""

    min_gold_accuracy: float = 0.7  # share of gold items answered as expected
    min_self_consistency: float = 0.6  # share of swapped repeats answered with the same winner
    position_alpha: float = 0.05  # Holm-corrected binomial test of the left share among left/right answers
    speed_ratio: float = 0.33  # flag an annotator whose median seconds is below this share of everyone's median
    max_run: int = 15  # flag a run of this many identical answers in a row (in time order)
    min_votes: int = 10  # fewer votes than this: reported, never flagged on rates (too few to judge)
    min_checks: int = 3  # fewer gold items or repeats than this: their accuracy is reported, never flagged


def longest_run(values: Sequence) -> int:
    """Length of the longest run of equal consecutive values (0 for an empty sequence)."""
    v = list(values)
    best = cur = 0
    prev = object()
    for x in v:
        cur = cur + 1 if x == prev else 1
        best = max(best, cur)
        prev = x
    return best


def quality_control(votes: pd.DataFrame, config: QCConfig | None = None) -> pd.DataFrame:
    """One row per annotator with the quality-control figures and flags, from a votes frame (docs/FORMATS.md).

    Columns: annotator, flagged, flags (';'-separated reasons), n_votes, gold_n, gold_accuracy, repeat_n,
    self_consistency, lr_n, left_share, position_p, position_p_holm, median_seconds, longest_run. Gold accuracy and
    self-consistency are flagged only with at least `min_checks` gold items / repeats.
    Self-consistency compares the winner (a model, 'tie' or 'both_bad', so independent of the side) of a swapped
    repeat with the annotator's own vote on the original item and question. Position bias: exact two-sided binomial
    test of left against right answers (the sign test), Holm-corrected over annotators.
    """
    cfg = config or QCConfig()
    cols = ["annotator", "flagged", "flags", "n_votes", "gold_n", "gold_accuracy", "repeat_n", "self_consistency",
            "lr_n", "left_share", "position_p", "position_p_holm", "median_seconds", "longest_run"]
    if votes.empty:
        return pd.DataFrame(columns=cols)
    v = votes.sort_values(["annotator", "created_at"] if "created_at" in votes else ["annotator"], kind="stable")
    codes, names = pd.factorize(v["annotator"], sort=True)
    k = len(names)
    answer = v["answer"].to_numpy(dtype=object)
    is_gold = v["is_gold"].to_numpy(dtype=bool) & v["gold_answer"].notna().to_numpy()
    is_repeat = v["is_repeat"].to_numpy(dtype=bool)
    seconds = v["seconds"].to_numpy(dtype=np.float64) if "seconds" in v else np.full(len(v), np.nan)

    def per(weights: np.ndarray) -> np.ndarray:
        return np.bincount(codes, weights=weights.astype(np.float64), minlength=k)

    n_votes = per(np.ones(len(v)))
    gold_n = per(is_gold)
    gold_ok = per(is_gold & (answer == v["gold_answer"].to_numpy(dtype=object)))
    # swapped repeats against the same annotator's vote on the original item and question
    rep = v.loc[is_repeat & v["repeat_of"].notna().to_numpy(), ["annotator", "repeat_of", "question", "winner"]]
    orig = v.loc[~is_repeat, ["annotator", "item_id", "question", "winner"]].drop_duplicates(
        ["annotator", "item_id", "question"], keep="last")
    pairs = rep.assign(item_id=rep["repeat_of"]).merge(
        orig, on=["annotator", "item_id", "question"], suffixes=("", "_orig"))
    rcodes = names.get_indexer(pairs["annotator"])
    repeat_n = np.bincount(rcodes, minlength=k).astype(np.float64)
    same = np.bincount(rcodes, weights=(pairs["winner"] == pairs["winner_orig"]).to_numpy(dtype=np.float64),
                       minlength=k)
    n_left = per(answer == "left")
    n_right = per(answer == "right")
    lr_n = n_left + n_right
    position_p = np.array([sign_test(int(a), int(b)) for a, b in zip(n_left, n_right)])
    _, position_holm = holm(position_p)
    medians = pd.Series(seconds).groupby(codes).median().reindex(range(k)).to_numpy(dtype=np.float64)
    overall_median = float(np.nanmedian(seconds)) if np.isfinite(seconds).any() else float("nan")
    # longest run of identical answers: a new run starts where the annotator or the answer changes
    starts = np.ones(len(v), dtype=bool)
    starts[1:] = (codes[1:] != codes[:-1]) | (answer[1:] != answer[:-1])
    run_id = np.cumsum(starts) - 1
    run_len = np.bincount(run_id)
    longest = np.zeros(k, dtype=np.int64)
    np.maximum.at(longest, codes[starts], run_len)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = pd.DataFrame({"annotator": list(names), "n_votes": n_votes.astype(int), "gold_n": gold_n.astype(int),
                            "gold_accuracy": np.where(gold_n > 0, gold_ok / gold_n, np.nan),
                            "repeat_n": repeat_n.astype(int),
                            "self_consistency": np.where(repeat_n > 0, same / repeat_n, np.nan),
                            "lr_n": lr_n.astype(int), "left_share": np.where(lr_n > 0, n_left / lr_n, np.nan),
                            "position_p": position_p, "position_p_holm": position_holm, "median_seconds": medians,
                            "longest_run": longest})
    flags = []
    for r in out.itertuples(index=False):
        f = []
        if r.gold_n >= cfg.min_checks and r.gold_accuracy < cfg.min_gold_accuracy:
            f.append(f"gold accuracy {r.gold_accuracy:.0%} < {cfg.min_gold_accuracy:.0%}")
        if r.repeat_n >= cfg.min_checks and r.self_consistency < cfg.min_self_consistency:
            f.append(f"self-consistency {r.self_consistency:.0%} < {cfg.min_self_consistency:.0%}")
        if r.lr_n >= cfg.min_votes and r.position_p_holm < cfg.position_alpha:
            f.append(f"position bias: left {r.left_share:.0%} (Holm p={r.position_p_holm:.2g})")
        if r.n_votes >= cfg.min_votes and np.isfinite(overall_median) and overall_median > 0 \
                and r.median_seconds < cfg.speed_ratio * overall_median:
            f.append(f"fast: median {r.median_seconds:.1f} s vs {overall_median:.1f} s overall")
        if r.longest_run >= cfg.max_run:
            f.append(f"run of {r.longest_run} identical answers")
        flags.append("; ".join(f))
    out["flags"] = flags
    out["flagged"] = out["flags"] != ""
    return out[cols]


__all__ = [
    "ELO_CENTRE", "ELO_SCALE", "BradleyTerryResult", "QCConfig", "benjamini_hochberg", "bootstrap_ci", "bradley_terry",
    "bradley_terry_fit", "fleiss_kappa", "group_resample_weights", "holm", "krippendorff_alpha", "longest_run",
    "majority_agreement", "pair_score_matrix", "quality_control", "ratings_matrix", "ratio_bootstrap_ci",
    "raw_agreement", "separated_ranks", "sign_test", "stratified_resample_weights", "tie_half_ci", "tie_half_score",
    "to_elo", "wilson_ci",
]
