"""Statistics shared by metrics and side-by-side studies.

Pure functions on numpy arrays and pandas frames; every random step takes a seed. Sections: resampling (the rescaled
bootstrap of Rao and Wu over prompts within categories, optionally times annotators; percentile intervals widened by
t_df / z), prompt-level tests (sign-flip permutation test, bootstrap test) and the prompt-level inference on the
tie-as-half score that decides a verdict; proportions and vote-level tests (Wilson, sign test: descriptive); multiple
comparisons (Holm, Benjamini-Hochberg); Bradley-Terry strengths (ties as half a win, Elo scale, bootstrap intervals,
ranks); agreement (raw, with the majority, Krippendorff's alpha, Fleiss' kappa, with item-bootstrap parts); quality
control of annotators (the one rule set of `sbs status`, `sbs stats` and the report).

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


# ---- resampling and prompt-level inference -----------------------------------------------------------------------
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


def rescaled_resample_weights(strata: Sequence | np.ndarray, n_resamples: int, seed: int | Sequence[int]
                              ) -> np.ndarray:
    """(n_resamples, n_units) weights of the rescaled bootstrap of Rao and Wu (1988) with m_h = n_h - 1.

    `strata` has one label per unit (e.g. each prompt's category). In each stratum of n_h units, n_h - 1 units are
    drawn with replacement and every draw weighs n_h / (n_h - 1). Then the bootstrap variance of a stratified total is
    the usual unbiased one; a plain bootstrap (n_h draws of weight 1) shrinks it by (n_h - 1) / n_h, to half at two
    units per stratum, and its 95 % interval covers about 83 %. A stratum of one unit shows no variance of its own:
    such strata are pooled into one (merged into the smallest other stratum when the pool still holds one unit), which
    can only widen an interval. With a single unit every weight is 1 (no interval can be given).
    """
    labels = np.asarray(strata)
    n = labels.size
    if n_resamples < 1:
        raise UserError(f"n_resamples must be at least 1, got {n_resamples}")
    rng = np.random.default_rng(seed)
    if n <= 1:
        return np.ones((n_resamples, n))
    groups = _pooled_strata(labels)
    scale = np.empty(n)
    cols = []
    for members in groups:
        cols.append(members[rng.integers(0, members.size, size=(n_resamples, members.size - 1))])
        scale[members] = members.size / (members.size - 1)
    picks = np.concatenate(cols, axis=1) + (np.arange(n_resamples, dtype=np.int64) * n)[:, None]
    counts = np.bincount(picks.ravel(), minlength=n_resamples * n).reshape(n_resamples, n)
    return counts * scale


def _pooled_strata(labels: np.ndarray) -> list[np.ndarray]:
    """Unit positions of each stratum after pooling the strata of a single unit (see `rescaled_resample_weights`)."""
    _, inverse = np.unique(labels, return_inverse=True)
    groups = [np.flatnonzero(inverse == k) for k in range(int(inverse.max()) + 1)] if labels.size else []
    singles = [g for g in groups if g.size == 1]
    groups = [g for g in groups if g.size > 1]
    if len(singles) > 1:
        groups.append(np.concatenate(singles))
    elif singles:
        if groups:
            k = int(np.argmin([g.size for g in groups]))
            groups[k] = np.concatenate([groups[k], singles[0]])
        else:
            groups = singles
    return groups


def stratum_codes(strata: Sequence | np.ndarray) -> np.ndarray:
    """The stratum of each unit as `rescaled_resample_weights` resamples it (single-unit strata pooled): int codes."""
    labels = np.asarray(strata)
    codes = np.zeros(labels.size, dtype=np.int64)
    for k, members in enumerate(_pooled_strata(labels)):
        codes[members] = k
    return codes


def t_widened(est: np.ndarray, lo: np.ndarray, hi: np.ndarray, df: np.ndarray, level: float = 0.95,
              bounds: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stretch percentile intervals about their estimates by t_df / z (the design degrees of freedom of survey
    practice: df = resampled units - strata). A bootstrap interval uses normal quantiles; with few units per stratum
    the variance itself is uncertain and the interval under-covers (about 93.5 % for 95 % at 12 strata of 2 prompts,
    df = 12). Large df leave the interval unchanged; df < 1 gives nan; `bounds` clips (e.g. (0, 1) for a share)."""
    from scipy.stats import t as student_t

    _check_level(level)
    d = np.asarray(df, dtype=np.float64)
    q = 1.0 - (1.0 - level) / 2.0
    with np.errstate(invalid="ignore"):
        f = np.where(d >= 1, student_t.ppf(q, np.maximum(d, 1)) / _z(float(level)), np.nan)
    e = np.asarray(est, dtype=np.float64)
    new_lo = e - (e - np.asarray(lo, dtype=np.float64)) * f
    new_hi = e + (np.asarray(hi, dtype=np.float64) - e) * f
    if bounds is not None:
        new_lo, new_hi = np.clip(new_lo, *bounds), np.clip(new_hi, *bounds)
    return new_lo, new_hi


@dataclass
class Resampling:
    """The resampling shared by every bootstrap of one analysis, so that its intervals are mutually consistent.

    `prompt`: (resamples, prompts) weights from `rescaled_resample_weights` (prompts within their category);
    `annotator`: None, or (resamples, annotators) weights of a second, independent level (two-level resampling, for
    studies with few annotators). A vote of prompt p and annotator a weighs prompt[b, p] * annotator[b, a] in
    resample b (the product, "pigeonhole", bootstrap of a crossed design, which errs on the wide side).
    """

    prompt: np.ndarray
    annotator: np.ndarray | None = None
    stratum: np.ndarray | None = None  # each prompt's stratum code (`stratum_codes`), for degrees of freedom

    @property
    def n_resamples(self) -> int:
        return int(self.prompt.shape[0])

    def degrees_of_freedom(self, present: np.ndarray) -> np.ndarray:
        """Design degrees of freedom per cell from a (prompts, cells) boolean 'prompt has votes in the cell': prompts
        minus the strata they fall in (prompts - 1 without strata)."""
        pres = np.asarray(present, dtype=bool)
        codes = self.stratum if self.stratum is not None else np.zeros(pres.shape[0], dtype=np.int64)
        onehot = np.zeros((pres.shape[0], int(codes.max()) + 1 if codes.size else 1))
        onehot[np.arange(codes.size), codes] = 1.0
        strata_hit = (pres.T.astype(np.float64) @ onehot > 0).sum(axis=1)
        return pres.sum(axis=0) - strata_hit

    def totals(self, prompt_idx: np.ndarray, annotator_idx: np.ndarray | None, cell_idx: np.ndarray,
               values: np.ndarray, n_cells: int) -> np.ndarray:
        """(resamples, n_cells) resampled sums of `values` per cell: one entry per (vote, cell) with the vote's
        prompt index (a column of `prompt`), annotator index (ignored with one level) and cell."""
        from scipy import sparse

        p = np.asarray(prompt_idx, dtype=np.int64)
        c = np.asarray(cell_idx, dtype=np.int64)
        x = np.asarray(values, dtype=np.float64)
        n_b = self.n_resamples
        if self.annotator is None:
            m = sparse.csr_matrix((x, (p, c)), shape=(self.prompt.shape[1], n_cells))
            return np.asarray((m.T @ self.prompt.T).T)
        n_a = self.annotator.shape[1]
        key = p * n_a + np.asarray(annotator_idx, dtype=np.int64)
        units, inverse = np.unique(key, return_inverse=True)
        up, ua = units // n_a, units % n_a
        m = sparse.csr_matrix((x, (inverse, c)), shape=(units.size, n_cells))
        out = np.empty((n_b, n_cells))
        step = max(1, 2_000_000 // max(units.size, 1))  # bounds the (resamples x units) block in memory
        for s in range(0, n_b, step):
            w = self.prompt[s:s + step][:, up] * self.annotator[s:s + step][:, ua]
            out[s:s + step] = np.asarray((m.T @ w.T).T)
        return out


def prompt_resampling(strata: Sequence | np.ndarray, n_resamples: int, seed: int,
                      n_annotators: int | None = None) -> Resampling:
    """The `Resampling` of an analysis: prompts (one `strata` label each) within their stratum and, when
    `n_annotators` is given, annotators as a second level; both rescaled (`rescaled_resample_weights`), seeded."""
    prompt = rescaled_resample_weights(strata, n_resamples, seed)
    codes = stratum_codes(strata)
    if n_annotators is None:
        return Resampling(prompt, None, codes)
    if n_annotators < 2:
        raise UserError(f"two-level resampling needs at least 2 annotators, got {n_annotators}")
    # a second stream from the same seed: the annotator draw does not change the prompt draw
    return Resampling(prompt, rescaled_resample_weights(np.zeros(n_annotators), n_resamples, seed + 7_919_017),
                      codes)


def ratio_ci(num: np.ndarray, den: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile intervals of num / den per column from (resamples, cells) resampled totals; resamples in which
    a cell has no weight are left out of that cell's quantiles. Returns (low, high), each (cells,)."""
    _check_level(level)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(den > 0, num / den, np.nan)
    return percentile_ci(ratio, level)


def percentile_ci(boot: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval per column of (resamples, cells) bootstrap values, ignoring nan; nan where a column
    has no finite value."""
    _check_level(level)
    a = (1.0 - level) / 2.0
    lo = np.full(boot.shape[1], np.nan)
    hi = np.full(boot.shape[1], np.nan)
    gaps = np.isnan(boot).any(axis=0)
    some = ~np.isnan(boot).all(axis=0)
    # np.nanquantile loops in Python over columns: use it only for the few cells with empty resamples
    for cols, fn in ((~gaps, np.quantile), (gaps & some, np.nanquantile)):
        if cols.any():
            q = fn(boot[:, cols], [a, 1.0 - a], axis=0)
            lo[cols], hi[cols] = q[0], q[1]
    return lo, hi


@lru_cache(maxsize=20)
def _all_signs(n: int) -> np.ndarray:
    """(2^n, n) every pattern of +-1 signs."""
    return (((np.arange(2 ** n)[:, None] >> np.arange(n)[None, :]) & 1) * 2 - 1).astype(np.float64)


def sign_flip_pvalues(d: np.ndarray, n_flips: int = 10_000, seed: int = 0, exact_max: int = 16) -> np.ndarray:
    """Two-sided sign-flip permutation P-values of T = sum of d over units, for many cells at once.

    d: (units, cells), e.g. per prompt the sum of (score - 1/2) over its votes in each cell (0 where a prompt has no
    vote there). Null hypothesis: every unit's value is symmetric about 0 (the two systems are exchangeable on each
    prompt), which holds however strongly the votes on one prompt agree, so the test keeps its level with clustered
    votes. A cell with at most `exact_max` nonzero units is tested exactly over all 2^n sign patterns; the others
    share `n_flips` seeded random patterns, with p = (1 + #{|T*| >= |T|}) / (n_flips + 1). nan for a cell with no
    nonzero unit.
    """
    x = np.asarray(d, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    nonzero = x != 0
    n_nz = nonzero.sum(axis=0)
    t_obs = np.abs(x.sum(axis=0))
    tol = 1e-9 * (np.abs(x).sum(axis=0) + 1.0)
    p = np.full(x.shape[1], np.nan)
    for c in np.flatnonzero((n_nz > 0) & (n_nz <= exact_max)):
        t = _all_signs(int(n_nz[c])) @ x[nonzero[:, c], c]
        p[c] = float(np.mean(np.abs(t) >= t_obs[c] - tol[c]))
    big = np.flatnonzero(n_nz > exact_max)
    if big.size:
        from scipy import sparse

        rows = np.flatnonzero(nonzero[:, big].any(axis=1))
        sub = x[np.ix_(rows, big)]
        # Multiples of 1/2 (sums of scores 1, 1/2, 0 minus 1/2 per vote) add up exactly in float32 while the totals stay
        # below 2^22; a cell holds few of all prompts, so the product runs over the nonzero entries only
        dtype = np.float32 if np.all(sub * 2 == np.round(sub * 2)) and np.abs(sub).sum() < 2 ** 22 else np.float64
        d_t = sparse.csr_matrix(sub.T.astype(dtype))  # (cells, prompts)
        rng = np.random.default_rng(seed)
        hits = np.zeros(big.size)
        step = max(1, 4_000_000 // max(rows.size, 1))
        lut = np.array([-1, 1], dtype=dtype)
        for s in range(0, n_flips, step):
            k = min(step, n_flips - s)
            # one random bit per sign: a (prompts, flips) block of +-1
            bits = np.unpackbits(np.frombuffer(rng.bytes((rows.size * k + 7) // 8), dtype=np.uint8),
                                 count=rows.size * k)
            signs = lut[bits.reshape(rows.size, k)]
            hits += (np.abs(d_t @ signs) >= (t_obs[big] - tol[big])[:, None]).sum(axis=1)
        p[big] = (1.0 + hits) / (n_flips + 1.0)
    return p


def bootstrap_pvalues(estimate: np.ndarray, boot: np.ndarray, null: float) -> np.ndarray:
    """Two-sided bootstrap P-values of H0 `value = null` per column: the share of resamples whose distance from
    the estimate is at least the estimate's distance from the null (the centred bootstrap distribution stands in
    for the null distribution), as (1 + count) / (1 + resamples); resamples with nan are left out."""
    est = np.asarray(estimate, dtype=np.float64)
    b = np.asarray(boot, dtype=np.float64)
    finite = np.isfinite(b)
    far = (np.abs(b - est[None, :]) >= np.abs(est - null)[None, :] - 1e-12) & finite
    n = finite.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n > 0) & np.isfinite(est), (1.0 + far.sum(axis=0)) / (1.0 + n), np.nan)


def design_effect(sums: np.ndarray, sumsq: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Intra-cluster correlation and design effect per cell from per-cluster totals, each (clusters, cells).

    One-way ANOVA estimator of rho (clipped to [0, 1]) with the unequal-size n0 of Snedecor and Cochran; design
    effect 1 + (m - 1) rho with m the mean votes per cluster, so n / design effect is the effective number of
    independent votes. nan where a cell has fewer than 2 clusters or no replication within clusters.
    """
    s, q, n = (np.asarray(a, dtype=np.float64) for a in (sums, sumsq, counts))
    big_n = n.sum(axis=0)
    k = (n > 0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        grand = s.sum(axis=0) / big_n
        within = q.sum(axis=0) - np.where(n > 0, s * s / np.where(n > 0, n, 1.0), 0.0).sum(axis=0)
        between = np.where(n > 0, s * s / np.where(n > 0, n, 1.0), 0.0).sum(axis=0) - big_n * grand ** 2
        msb = between / (k - 1)
        msw = within / (big_n - k)
        n0 = (big_n - (n * n).sum(axis=0) / big_n) / (k - 1)
        rho = (msb - msw) / (msb + (n0 - 1.0) * msw)
        ok = (k >= 2) & (big_n > k) & np.isfinite(rho)
        rho = np.where(ok, np.clip(rho, 0.0, 1.0), np.nan)
        deff = 1.0 + (big_n / k - 1.0) * rho
    return rho, deff


MIN_INTERVAL_PROMPTS = 10  # fewer prompts than this: no interval (a bootstrap over so few units under-covers)


@dataclass
class PreferenceInference:
    """Per cell (e.g. comparison x question x category): tie-as-half score, its interval and P-value, with the number
    of prompts, the intra-prompt correlation and design effect, and why an interval is missing ('' when given)."""

    score: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    p: np.ndarray
    n_prompts: np.ndarray
    icc: np.ndarray
    design_effect: np.ndarray
    ci_note: list[str]
    test: str


def preference_inference(prompt_idx: np.ndarray, cell_idx: np.ndarray, score: np.ndarray, n_cells: int,
                         resampling: Resampling, annotator_idx: np.ndarray | None = None, n_flips: int = 10_000,
                         seed: int = 0, level: float = 0.95, min_prompts: int = MIN_INTERVAL_PROMPTS
                         ) -> PreferenceInference:
    """Prompt-level inference on the tie-as-half score of many cells at once; the prompt is the unit.

    One entry per (vote, cell): the vote's prompt (a column of `resampling.prompt`), cell and score for model A
    (1 / 0.5 / 0). The score is (W + T/2) / N over the cell's votes. Interval: percentile interval of the same ratio
    over `resampling` (rescaled bootstrap of prompts within their category, and of annotators with two levels);
    none with fewer than `min_prompts` prompts, or when every resample gives the same value (all prompts alike).
    P-value of H0 'score = 1/2': with one level the sign-flip permutation test over prompts of
    d_p = sum over the prompt's votes of (score - 1/2) (`sign_flip_pvalues`, seeded); with two levels the bootstrap
    test of `bootstrap_pvalues` on the two-level resamples (the sign flip cannot exchange annotators).
    """
    p_idx = np.asarray(prompt_idx, dtype=np.int64)
    c_idx = np.asarray(cell_idx, dtype=np.int64)
    x = np.asarray(score, dtype=np.float64)
    n_p = resampling.prompt.shape[1]
    flat = p_idx * n_cells + c_idx
    size = n_p * n_cells
    sums = np.bincount(flat, weights=x, minlength=size).reshape(n_p, n_cells)
    sumsq = np.bincount(flat, weights=x * x, minlength=size).reshape(n_p, n_cells)
    counts = np.bincount(flat, minlength=size).reshape(n_p, n_cells).astype(np.float64)
    n = counts.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        est = sums.sum(axis=0) / n
    n_prompts = (counts > 0).sum(axis=0)
    num = resampling.totals(p_idx, annotator_idx, c_idx, x, n_cells)
    den = resampling.totals(p_idx, annotator_idx, c_idx, np.ones(x.size), n_cells)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = np.where(den > 0, num / den, np.nan)
    lo, hi = t_widened(est, *percentile_ci(boot, level), resampling.degrees_of_freedom(counts > 0), level, (0.0, 1.0))
    notes = []
    for c in range(n_cells):
        if n_prompts[c] < min_prompts:
            notes.append(f"no interval: {n_prompts[c]} prompts (< {min_prompts})")
        elif not hi[c] - lo[c] > 1e-12:
            notes.append("no interval: every prompt has the same score")
        else:
            notes.append("")
    missing = np.array([bool(t) for t in notes], dtype=bool)
    lo[missing] = np.nan
    hi[missing] = np.nan
    if resampling.annotator is None:
        p = sign_flip_pvalues(sums - counts / 2.0, n_flips=n_flips, seed=seed)
        test = (f"sign-flip permutation test over prompts (exact up to 16 prompts, else {n_flips} seeded random "
                "flips)")
    else:
        p = bootstrap_pvalues(est, boot, 0.5)
        test = f"two-level bootstrap test (prompts and annotators, {resampling.n_resamples} resamples)"
    icc, deff = design_effect(sums, sumsq, counts)
    return PreferenceInference(est, lo, hi, p, n_prompts, icc, deff, notes, test)


def tie_half_ci(outcomes: Sequence[float] | np.ndarray, groups: Sequence, n_resamples: int = 1000, seed: int = 0,
                level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the tie-as-half score, resampling whole groups (prompts), not votes, with the rescaled
    bootstrap of `rescaled_resample_weights` (one stratum).

    Votes on one prompt share the prompt's difficulty, so they are correlated; resampling prompts keeps that in the
    interval. A resample's score is sum(weighted outcomes) / sum(weighted vote counts). (nan, nan) with fewer than
    2 groups.
    """
    _check_level(level)
    x = np.asarray(outcomes, dtype=np.float64)
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = int(inverse.max()) + 1 if x.size else 0
    if n_groups < 2:
        return (float("nan"), float("nan"))
    r = Resampling(rescaled_resample_weights(np.zeros(n_groups), n_resamples, seed))
    zero = np.zeros(x.size, dtype=np.int64)
    lo, hi = ratio_ci(r.totals(inverse, None, zero, x, 1), r.totals(inverse, None, zero, np.ones(x.size), 1), level)
    lo, hi = t_widened(np.array([x.mean()]), lo, hi, np.array([n_groups - 1]), level, (0.0, 1.0))
    return (float(lo[0]), float(hi[0]))


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
                  ridge: float = 1e-6, models: Sequence[str] | None = None, resampling: Resampling | None = None,
                  annotators: Sequence[int] | None = None) -> BradleyTerryResult:
    """Bradley-Terry strengths with percentile bootstrap intervals on the Elo scale.

    One entry per vote: the two models and the outcome for `model_i` (1 / 0.5 / 0). Without `resampling`, `groups`
    (prompt ids; each vote its own group when None) are resampled whole with the rescaled bootstrap
    (`rescaled_resample_weights`, one stratum, `n_resamples`, `seed`). With `resampling` (the analysis' shared one),
    `groups` are its prompt column indices and `annotators` its annotator indices (two levels); `n_resamples` and
    `seed` are then those of `resampling`. Ranks separate only models whose intervals do not overlap.
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
    if resampling is None:
        g = np.arange(s.size) if groups is None else np.asarray(groups)
        _, inverse = np.unique(g, return_inverse=True)
        n_groups = int(inverse.max()) + 1 if s.size else 0
        resampling = Resampling(rescaled_resample_weights(np.zeros(n_groups), n_resamples, seed)) \
            if n_groups >= 2 else None
        ann = None
    else:
        inverse = np.asarray(groups, dtype=np.int64)
        n_groups = int(np.unique(inverse).size)
        ann = None if annotators is None else np.asarray(annotators, dtype=np.int64)
        n_resamples = resampling.n_resamples
    if resampling is not None and n_groups >= 2 and n_resamples > 0:
        # every resample's score matrix as one sparse product: a vote adds s to cell (i, j) and 1 - s to (j, i)
        cells = np.concatenate([ii * k + jj, jj * k + ii])
        vals = np.concatenate([s, 1.0 - s])
        two = np.concatenate([inverse, inverse])
        ann2 = None if ann is None else np.concatenate([ann, ann])
        boot = bradley_terry_fit(resampling.totals(two, ann2, cells, vals, k * k).reshape(-1, k, k), ridge=ridge)
        present = np.zeros((resampling.prompt.shape[1], 1), dtype=bool)
        present[inverse, 0] = True
        lo, hi = t_widened(to_elo(beta), *percentile_ci(to_elo(boot), level),
                           np.repeat(resampling.degrees_of_freedom(present), k), level)
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
    num, den = _raw_parts(counts)
    return float(num.sum() / den.sum()) if den.sum() else float("nan")


def _raw_parts(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per item: agreeing ordered pairs of ratings, and all ordered pairs."""
    m = counts.sum(axis=1)
    return (counts * (counts - 1)).sum(axis=1), m * (m - 1)


def _majority_parts(r: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per rating (rater, item, counts, agrees with the strict majority of the item's other ratings)."""
    counts, vals = _value_counts(r)
    rater, item = np.nonzero(~np.isnan(r))
    code = np.searchsorted(vals, r[rater, item])
    others = counts[item].copy()
    others[np.arange(code.size), code] -= 1.0
    top = others.max(axis=1) if code.size else np.zeros(0)
    valid = ((others == top[:, None]).sum(axis=1) == 1) & (top > 0)
    agree = valid & (others[np.arange(code.size), code] == top)
    return rater, item, valid, agree


def majority_agreement(reliability: np.ndarray) -> tuple[float, np.ndarray]:
    """Agreement with the majority of the other raters (leave one out).

    For every rating of an item with 2+ ratings, whether it equals the strict majority answer of the item's other
    ratings (ratings whose other raters are split evenly are left out). Returns (pooled share, per-rater share),
    nan where nothing counts. Leaving the rating out keeps a rater from agreeing with themself.
    """
    r = np.asarray(reliability, dtype=np.float64)
    rater, _, valid, agree = _majority_parts(r)
    hits = np.bincount(rater, weights=agree.astype(float), minlength=r.shape[0])
    total = np.bincount(rater, weights=valid.astype(float), minlength=r.shape[0])
    per_rater = np.divide(hits, total, out=np.full(r.shape[0], np.nan), where=total > 0)
    pooled = float(hits.sum() / total.sum()) if total.sum() else float("nan")
    return pooled, per_rater


def _coincidences(counts: np.ndarray) -> np.ndarray:
    """(items, values, values) contribution of each item to Krippendorff's coincidence matrix: every ordered pair
    of its ratings with weight 1/(m-1); zero for items with fewer than 2 ratings."""
    m = counts.sum(axis=1)
    use = m >= 2
    w = np.where(use, 1.0 / np.where(use, m - 1.0, 1.0), 0.0)
    pairs = counts[:, :, None] * counts[:, None, :]
    idx = np.arange(counts.shape[1])
    pairs[:, idx, idx] -= counts
    return pairs * w[:, None, None]


def _alpha_from_coincidences(o: np.ndarray, vals: np.ndarray, level: str) -> np.ndarray:
    """Krippendorff's alpha from (B, values, values) coincidence matrices; nan where there is no variation."""
    n_c = o.sum(axis=2)
    n = n_c.sum(axis=1)
    v = vals.size
    if level == "nominal":
        delta = np.broadcast_to(1.0 - np.eye(v), o.shape)
    elif level == "interval":
        delta = np.broadcast_to((vals[:, None] - vals[None, :]) ** 2, o.shape)
    else:
        # ordinal: distances from the pooled value frequencies (Krippendorff 2011)
        cum = np.concatenate([np.zeros((o.shape[0], 1)), np.cumsum(n_c, axis=1)], axis=1)
        lo_idx = np.minimum.outer(np.arange(v), np.arange(v))
        hi_idx = np.maximum.outer(np.arange(v), np.arange(v))
        between = cum[:, hi_idx + 1] - cum[:, lo_idx]
        delta = (between - (n_c[:, :, None] + n_c[:, None, :]) / 2.0) ** 2
    expected = (n_c[:, :, None] * n_c[:, None, :] * delta).sum(axis=(1, 2))
    observed = (o * delta).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(expected > 0, 1.0 - (n - 1.0) * observed / expected, np.nan)


def krippendorff_alpha(reliability: np.ndarray, level: str = "ordinal",
                       value_domain: Sequence[float] | None = None) -> float:
    """Krippendorff's alpha for (raters, items) ratings with nan for missing ones.

    `level`: 'nominal', 'ordinal' or 'interval'. Built from the coincidence matrix: each item with m >= 2 ratings
    adds every ordered pair of its ratings with weight 1/(m-1). Ordinal distances use the pooled value frequencies
    (Krippendorff 2011). The value domain defaults to the values present. nan when there is no variation or fewer
    than two pairable ratings.
    """
    _check_alpha_level(level)
    counts, vals = _value_counts(reliability, None if value_domain is None else np.asarray(value_domain))
    if not (counts.sum(axis=1) >= 2).any() or vals.size < 2:
        return float("nan")
    return float(_alpha_from_coincidences(_coincidences(counts).sum(axis=0)[None], vals, level)[0])


def _check_alpha_level(level: str) -> None:
    if level not in ("nominal", "ordinal", "interval"):
        raise UserError(f"level must be 'nominal', 'ordinal' or 'interval', got {level!r}")


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
    return float(_fleiss_weighted(t, np.ones((1, t.shape[0])))[0])


def _fleiss_weighted(t: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Fleiss' kappa of an (items, categories) table with equal ratings per item, for (B, items) item weights."""
    r = t[0].sum()
    p_item = ((t * t).sum(axis=1) - r) / (r * (r - 1.0))
    total = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        p_bar = (w @ p_item) / total
        pe = (((w @ t) / (r * total[:, None])) ** 2).sum(axis=1)
        return np.where(pe < 1.0 - 1e-15, (p_bar - pe) / (1.0 - pe), np.nan)


@dataclass
class AgreementParts:
    """Per-item pieces of every agreement statistic, so that a weighted sum over items (a bootstrap resample of
    items) gives each statistic without recomputing from ratings. Build with `agreement_parts`."""

    raw: tuple[np.ndarray, np.ndarray]
    majority: tuple[np.ndarray, np.ndarray]
    coincidences: np.ndarray
    ordinal_values: np.ndarray
    fleiss_table: np.ndarray
    fleiss_items: np.ndarray
    n_items: int


def agreement_parts(nominal: np.ndarray, ordinal: np.ndarray, ordinal_domain: Sequence[float]) -> AgreementParts:
    """Per-item parts of raw agreement and agreement with the majority (from `nominal`), Krippendorff's ordinal alpha
    (from `ordinal` over `ordinal_domain`) and Fleiss' kappa (nominal, on the items with the most common number of
    ratings), both (raters, items) with nan for missing ratings and the same items in the same order."""
    counts, _ = _value_counts(nominal)
    n_items = counts.shape[0]
    _, item, valid, agree = _majority_parts(np.asarray(nominal, dtype=np.float64))
    hits = np.bincount(item, weights=agree.astype(float), minlength=n_items)
    total = np.bincount(item, weights=valid.astype(float), minlength=n_items)
    o_counts, vals = _value_counts(ordinal, np.asarray(ordinal_domain, dtype=np.float64))
    m = counts.sum(axis=1)
    k = int(pd.Series(m[m >= 2]).mode().iloc[0]) if (m >= 2).any() else 0
    use = m == k if k else np.zeros(n_items, dtype=bool)
    return AgreementParts(_raw_parts(counts), (hits, total), _coincidences(o_counts).reshape(n_items, -1), vals,
                          counts[use], use, n_items)


def agreement_values(parts: AgreementParts, weights: np.ndarray) -> dict[str, np.ndarray]:
    """raw_agreement, majority_agreement, krippendorff_alpha (ordinal) and fleiss_kappa for each row of (B, items)
    item weights (a row of ones gives the estimates themselves); nan where a statistic is undefined."""
    w = np.asarray(weights, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        raw = (w @ parts.raw[0]) / (w @ parts.raw[1])
        majority = (w @ parts.majority[0]) / (w @ parts.majority[1])
    v = parts.ordinal_values.size
    alpha = _alpha_from_coincidences((w @ parts.coincidences).reshape(-1, v, v), parts.ordinal_values, "ordinal") \
        if v >= 2 else np.full(w.shape[0], np.nan)
    fleiss = _fleiss_weighted(parts.fleiss_table, w[:, parts.fleiss_items]) if parts.fleiss_items.any() else \
        np.full(w.shape[0], np.nan)
    return {"raw_agreement": raw, "majority_agreement": majority, "krippendorff_alpha": alpha,
            "fleiss_kappa": fleiss}


# ---- quality control -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QCConfig:
    """Thresholds of the annotator quality-control flags (one rule set for `sbs status`, `sbs stats` and the report)."""

    min_gold_accuracy: float = 0.7  # share of gold items answered as expected
    min_gold: int = 3  # fewer gold items than this: accuracy reported, never flagged
    consistency_alpha: float = 0.05  # one-sided binomial test: consistent repeats above chance
    min_repeat_items: int = 5  # fewer repeated items than this: consistency reported, never flagged
    position_alpha: float = 0.05  # Holm-corrected binomial test of the left share among left/right answers
    speed_ratio: float = 1.0 / 3.0  # flag an annotator whose median seconds is below this share of everyone's median
    max_run: int = 10  # flag a run of this many identical answers in a row on one question (in time order)
    min_votes: int = 10  # fewer votes (left/right answers for position) than this: reported, never flagged


QC_FLAGS = ("gold", "inconsistent", "left_bias", "fast", "same_answer_run")


def qc_rules(config: QCConfig | None = None) -> dict[str, str]:
    """Each quality-control flag and its rule in words (for the dashboard, `sbs status` and the docs)."""
    c = config or QCConfig()
    return {
        "gold": f"under {c.min_gold_accuracy:.0%} of gold items answered as expected ({c.min_gold}+ gold items)",
        "inconsistent": f"swapped repeats answered the same way (same model, tie or both bad on every question) "
                        f"not more often than chance (one-sided binomial test, p >= {c.consistency_alpha:g}; chance "
                        f"from the annotator's own answer shares; {c.min_repeat_items}+ repeated items)",
        "left_bias": f"left vs right answers on regular items unbalanced (exact binomial test, Holm-corrected over "
                     f"annotators, p < {c.position_alpha:g}; {c.min_votes}+ left/right answers)",
        "fast": f"median answer time below {c.speed_ratio:.2g} of the study's median ({c.min_votes}+ votes)",
        "same_answer_run": f"{c.max_run} or more identical answers in a row on one question",
    }


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


QC_COLUMNS = ["annotator", "flagged", "flags", "reasons", "n_votes", "gold_n", "gold_correct", "gold_accuracy",
              "repeat_n", "repeat_consistent", "self_consistency", "consistency_chance", "consistency_p", "lr_n",
              "left_share", "position_p", "position_p_holm", "median_seconds", "longest_run"]


def quality_control(votes: pd.DataFrame, config: QCConfig | None = None) -> pd.DataFrame:
    """One row per annotator with the quality-control figures and flags, from a votes frame (docs/FORMATS.md).

    Columns `QC_COLUMNS`; `flags` holds the flag codes of `qc_rules` joined by ', ', `reasons` the same in words with
    the annotator's figures. Gold: votes on a gold item's gold question. Self-consistency is judged per repeated
    *item*: a swapped repeat counts as consistent when, on every question the annotator answered both times, it
    names the same winner (a model, 'tie' or 'both_bad', so it does not depend on the side) as their own vote on
    the original item. Chance: the probability that two independent answers drawn from the annotator's own answer
    shares on regular items name the same winner, multiplied over the questions compared, averaged over items.
    Position bias: exact two-sided binomial test of left against right answers on regular and repeated items (gold
    items have a known side), Holm-corrected over annotators. Runs: per question, in time order.
    """
    from scipy.stats import binom

    cfg = config or QCConfig()
    if votes.empty:
        return pd.DataFrame(columns=QC_COLUMNS)
    order = "created_at" if "created_at" in votes else ("position" if "position" in votes else None)
    v = votes.sort_values(["annotator", order] if order else ["annotator"], kind="stable").reset_index(drop=True)
    codes, names = pd.factorize(v["annotator"], sort=True)
    k = len(names)
    answer = v["answer"].to_numpy(dtype=object)
    is_gold_item = v["is_gold"].to_numpy(dtype=bool)
    is_gold = is_gold_item & v["gold_answer"].notna().to_numpy()
    is_repeat = v["is_repeat"].to_numpy(dtype=bool)
    seconds = v["seconds"].to_numpy(dtype=np.float64) if "seconds" in v else np.full(len(v), np.nan)

    def per(weights: np.ndarray, idx: np.ndarray = codes) -> np.ndarray:
        return np.bincount(idx, weights=np.asarray(weights, dtype=np.float64), minlength=k)

    n_votes = per(np.ones(len(v)))
    gold_n = per(is_gold)
    gold_ok = per(is_gold & (answer == v["gold_answer"].to_numpy(dtype=object)))
    repeat_n, consistent, chance = _repeat_consistency(v, names, is_gold_item, is_repeat)
    with np.errstate(invalid="ignore", divide="ignore"):
        # one-sided: P(at least this many consistent items | chance), small when clearly better than chance
        consistency_p = np.where(repeat_n > 0, binom.sf(consistent - 1, repeat_n, np.clip(chance, 0, 1)), np.nan)
    lr = ~is_gold_item
    n_left = per((answer == "left") & lr)
    n_right = per((answer == "right") & lr)
    lr_n = n_left + n_right
    position_p = np.array([sign_test(int(a), int(b)) for a, b in zip(n_left, n_right)])
    _, position_holm = holm(position_p)
    medians = pd.Series(seconds).groupby(codes).median().reindex(range(k)).to_numpy(dtype=np.float64)
    overall_median = float(np.nanmedian(seconds)) if np.isfinite(seconds).any() else float("nan")
    # longest run of identical answers per question: a new run starts where annotator, question or answer changes
    q = v["question"].to_numpy(dtype=object)
    by_q = np.lexsort((np.arange(len(v)), q, codes))
    c_s, q_s, a_s = codes[by_q], q[by_q], answer[by_q]
    starts = np.ones(len(v), dtype=bool)
    starts[1:] = (c_s[1:] != c_s[:-1]) | (q_s[1:] != q_s[:-1]) | (a_s[1:] != a_s[:-1])
    run_len = np.bincount(np.cumsum(starts) - 1)
    longest = np.zeros(k, dtype=np.int64)
    np.maximum.at(longest, c_s[starts], run_len)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = pd.DataFrame({
            "annotator": list(names), "n_votes": n_votes.astype(int), "gold_n": gold_n.astype(int),
            "gold_correct": gold_ok.astype(int), "gold_accuracy": np.where(gold_n > 0, gold_ok / gold_n, np.nan),
            "repeat_n": repeat_n.astype(int), "repeat_consistent": consistent.astype(int),
            "self_consistency": np.where(repeat_n > 0, consistent / repeat_n, np.nan),
            "consistency_chance": chance, "consistency_p": consistency_p, "lr_n": lr_n.astype(int),
            "left_share": np.where(lr_n > 0, n_left / lr_n, np.nan), "position_p": position_p,
            "position_p_holm": position_holm, "median_seconds": medians, "longest_run": longest})
    flags, reasons = [], []
    for r in out.itertuples(index=False):
        f: dict[str, str] = {}
        if r.gold_n >= cfg.min_gold and r.gold_accuracy < cfg.min_gold_accuracy:
            f["gold"] = f"gold accuracy {r.gold_accuracy:.0%} of {r.gold_n} < {cfg.min_gold_accuracy:.0%}"
        if r.repeat_n >= cfg.min_repeat_items and r.consistency_p >= cfg.consistency_alpha:
            f["inconsistent"] = (f"{r.repeat_consistent} of {r.repeat_n} repeats consistent, chance "
                                 f"{r.consistency_chance:.0%} (p={r.consistency_p:.2g})")
        if r.lr_n >= cfg.min_votes and r.position_p_holm < cfg.position_alpha:
            f["left_bias"] = f"left {r.left_share:.0%} of {r.lr_n} (Holm p={r.position_p_holm:.2g})"
        if r.n_votes >= cfg.min_votes and np.isfinite(overall_median) and overall_median > 0 \
                and r.median_seconds < cfg.speed_ratio * overall_median:
            f["fast"] = f"median {r.median_seconds:.1f} s vs {overall_median:.1f} s overall"
        if r.longest_run >= cfg.max_run:
            f["same_answer_run"] = f"{r.longest_run} identical answers in a row"
        flags.append(", ".join(f))
        reasons.append("; ".join(f"{code}: {text}" for code, text in f.items()))
    out["flags"] = flags
    out["reasons"] = reasons
    out["flagged"] = out["flags"] != ""
    return out[QC_COLUMNS]


def _repeat_consistency(v: pd.DataFrame, names: pd.Index, is_gold_item: np.ndarray,
                        is_repeat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per annotator (in the order of `names`): repeated items compared, consistent ones, and the mean chance of
    consistency."""
    k = len(names)
    repeat_n, consistent, chance = np.zeros(k), np.zeros(k), np.full(k, np.nan)
    has_orig = is_repeat & v["repeat_of"].notna().to_numpy()
    if not has_orig.any():
        return repeat_n, consistent, chance
    # the annotator's answer shares per question on regular items, as roles (first model, second model, tie, both
    # bad) so that comparisons pool: P(two independent answers name the same winner) = sum of squared shares
    regular = v.loc[~is_repeat & ~is_gold_item]
    if {"model_a", "model_b"} <= set(v.columns):
        w = regular["winner"].to_numpy(dtype=object)
        regular = regular.assign(winner=np.where(w == regular["model_a"].to_numpy(dtype=object), "<a>", np.where(
            w == regular["model_b"].to_numpy(dtype=object), "<b>", w)))
    shares = regular.groupby(["annotator", "question", "winner"], sort=False).size()
    shares = shares / shares.groupby(level=[0, 1]).transform("sum")
    same_by_chance = (shares ** 2).groupby(level=[0, 1]).sum()
    rep = v.loc[has_orig, ["annotator", "repeat_of", "question", "winner", "item_id"]]
    orig = v.loc[~is_repeat, ["annotator", "item_id", "question", "winner"]].drop_duplicates(
        ["annotator", "item_id", "question"], keep="last")
    pairs = rep.rename(columns={"item_id": "repeat_item"}).assign(item_id=rep["repeat_of"].to_numpy(dtype=object)) \
        .merge(orig.assign(item_id=orig["item_id"].to_numpy(dtype=object)), on=["annotator", "item_id", "question"],
               suffixes=("", "_orig"))
    if pairs.empty:
        return repeat_n, consistent, chance
    pairs["same"] = pairs["winner"] == pairs["winner_orig"]
    key = pd.MultiIndex.from_arrays([pairs["annotator"], pairs["question"]])
    pairs["chance"] = same_by_chance.reindex(key).to_numpy(dtype=np.float64)
    items = pairs.groupby(["annotator", "repeat_item"], sort=False).agg(same=("same", "all"),
                                                                      chance=("chance", "prod")).reset_index()
    idx = names.get_indexer(items["annotator"])
    repeat_n = np.bincount(idx, minlength=k).astype(np.float64)
    consistent = np.bincount(idx, weights=items["same"].to_numpy(dtype=np.float64), minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        # an item whose chance is unknown (no regular answers on that question) leaves the mean unknown
        chance = np.bincount(idx, weights=items["chance"].to_numpy(dtype=np.float64), minlength=k) / repeat_n
    return repeat_n, consistent, np.where(repeat_n > 0, chance, np.nan)


__all__ = [
    "ELO_CENTRE", "ELO_SCALE", "MIN_INTERVAL_PROMPTS", "QC_COLUMNS", "QC_FLAGS", "AgreementParts",
    "BradleyTerryResult", "PreferenceInference", "QCConfig", "Resampling", "agreement_parts", "agreement_values",
    "benjamini_hochberg", "bootstrap_ci", "bootstrap_pvalues", "bradley_terry", "bradley_terry_fit", "design_effect",
    "fleiss_kappa", "holm", "krippendorff_alpha", "longest_run", "majority_agreement", "pair_score_matrix",
    "percentile_ci", "preference_inference", "prompt_resampling", "qc_rules", "quality_control", "ratings_matrix",
    "ratio_ci", "raw_agreement", "rescaled_resample_weights", "separated_ranks", "sign_flip_pvalues", "sign_test",
    "stratum_codes", "t_widened", "tie_half_ci", "tie_half_score", "to_elo", "wilson_ci",
]
