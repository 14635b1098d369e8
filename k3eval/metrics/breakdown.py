"""Scores of benchmarks that report per task or category and an average over them (GenEval, T2I-CompBench), with
bootstrap intervals whose unit of resampling is the prompt: all images of a prompt are drawn together, and prompts are
drawn within their task, so every resample keeps the benchmark's mix of tasks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from k3eval.metrics.api import ScoreData, category_entry


def _groups(groups: Sequence, strata: Sequence) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(group index of each value, stratum index of each group, stratum labels)."""
    g_labels, g_index = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    s_labels, s_index = np.unique(np.asarray(strata).astype(str), return_inverse=True)
    group_stratum = np.zeros(len(g_labels), dtype=np.int64)
    group_stratum[g_index] = s_index
    return g_index, group_stratum, s_labels


def mean_of_means(values: Sequence[float], strata: Sequence) -> float:
    """The mean over strata of the mean within each stratum (GenEval's overall score: the mean of the task scores)."""
    v = np.asarray(values, np.float64)
    s = np.asarray(strata).astype(str)
    return float(np.mean([v[s == k].mean() for k in dict.fromkeys(s)]))


def mean_of_means_ci(values: Sequence[float], groups: Sequence, strata: Sequence, n_resamples: int, seed: int,
                     level: float = 0.95) -> tuple[float, float] | None:
    """Interval of `mean_of_means` from the rescaled bootstrap of groups (prompts) within their stratum (task), as
    the study statistics resample (`k3eval.stats.rescaled_resample_weights`, Rao-Wu), t-widened with df = groups -
    strata; None when turned off or with fewer than 2 groups. Every value of a group must share its stratum.
    Values within [0, 1] (shares of correct images, probabilities) give an interval clipped to [0, 1]."""
    from k3eval.stats import percentile_ci, rescaled_resample_weights, stratum_codes, t_widened

    v = np.asarray(values, np.float64)
    g_index, group_stratum, s_labels = _groups(groups, strata)
    n_groups = group_stratum.size
    if n_resamples <= 0 or n_groups < 2:
        return None
    sums = np.bincount(g_index, weights=v, minlength=n_groups)
    counts = np.bincount(g_index, minlength=n_groups).astype(np.float64)
    w = rescaled_resample_weights(group_stratum, n_resamples, seed)
    onehot = np.eye(len(s_labels))[group_stratum]  # groups x strata
    num = w @ (sums[:, None] * onehot)
    den = w @ (counts[:, None] * onehot)
    with np.errstate(invalid="ignore", divide="ignore"):
        stat = (num / den).mean(1)  # a stratum pooled with others can draw none of its groups: nan, left out
    lo, hi = percentile_ci(stat[:, None], level)
    df = np.array([n_groups - len(np.unique(stratum_codes(group_stratum)))])
    bounds = (0.0, 1.0) if v.size and v.min() >= 0.0 and v.max() <= 1.0 else None
    lo, hi = t_widened(np.array([mean_of_means(v, strata)]), lo, hi, df, level, bounds=bounds)
    if not (np.isfinite(lo[0]) and np.isfinite(hi[0])):
        return None
    return float(lo[0]), float(hi[0])


def prompt_any(values: Sequence[float], groups: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt (in order of first appearance) whether any of its images scored > 0, and the prompt labels."""
    v = np.asarray(values, np.float64)
    g = np.asarray(groups).astype(str)
    labels = np.array(list(dict.fromkeys(g)))
    return np.array([float(v[g == p].max() > 0) for p in labels]), labels


def task_breakdown(data: ScoreData, scores: np.ndarray, tasks: Sequence[str]) -> tuple[float, object, dict]:
    """(mean over tasks of the task means, its interval, per-task entries with their own intervals), where `tasks`
    is the task of each scored image, listed in order of first appearance."""
    scores = np.asarray(scores, np.float64)
    t = np.array([str(x) for x in tasks])
    per = {}
    for task in dict.fromkeys(t):
        idx = np.flatnonzero(t == task)
        per[str(task)] = category_entry(scores[idx].mean(), len(idx), data.bootstrap_mean(scores, idx))
    ci = mean_of_means_ci(scores, data.groups, t, data.opts.bootstrap, data.opts.seed)
    return mean_of_means(scores, t), ci, per
