"""Statistics shared by metrics and side-by-side studies: bootstrap intervals (more in later sections)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


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
