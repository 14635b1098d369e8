"""Scores averaged over tasks (GenEval's overall, T2I-CompBench's categories) and their prompt-bootstrap intervals:
the interval is calibrated by simulation with known truth, and resampling keeps each task's prompts together."""

from __future__ import annotations

import numpy as np
import pytest

from k3eval.metrics.breakdown import mean_of_means, mean_of_means_ci, prompt_any


def test_mean_of_means_by_hand():
    values = [1, 0, 1, 1, 0, 0]
    tasks = ["a", "a", "a", "b", "b", "b"]
    assert mean_of_means(values, tasks) == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert mean_of_means_ci(values, ["p", "p", "q", "r", "s", "s"], tasks, 0, 0) is None
    any_ok, prompts = prompt_any([0, 1, 0, 0], ["x", "x", "y", "y"])
    assert any_ok.tolist() == [1.0, 0.0] and prompts.tolist() == ["x", "y"]


def test_a_task_with_one_prompt_is_pooled_and_adds_no_spread_of_its_own():
    # task "b" has a single prompt: it is resampled with task "a"'s prompts (a stratum of one shows no variance);
    # every prompt has mean 0.5, so no resample can move the mean of means
    values = [1, 0, 1, 0, 0.5, 0.5]
    groups = ["a1", "a1", "a2", "a2", "b1", "b1"]
    lo, hi = mean_of_means_ci(values, groups, ["a"] * 4 + ["b"] * 2, 500, seed=1)
    assert lo == pytest.approx(0.5) and hi == pytest.approx(0.5)  # both "a" prompts have mean 0.5 too


def test_interval_covers_the_truth_about_95_percent_of_the_time():
    """Known truth: 3 tasks, prompt success rates drawn per prompt around task means, 4 images per prompt (images
    of a prompt are correlated). The 95 % interval must cover the true mean of the task means in 90-99 % of 300
    simulated benchmarks."""
    rng = np.random.default_rng(7)
    truth_means = np.array([0.2, 0.5, 0.8])
    covered = 0
    reps = 300
    for r in range(reps):
        values, groups, tasks = [], [], []
        for t, mu in enumerate(truth_means):
            rates = np.clip(rng.normal(mu, 0.2, size=40), 0, 1)
            for p, rate in enumerate(rates):
                values += list(rng.random(4) < rate)
                groups += [f"{t}-{p}"] * 4
                tasks += [str(t)] * 4
        lo, hi = mean_of_means_ci(np.array(values, float), groups, tasks, 400, seed=r)
        # the truth of this design: the expected rate of a clipped normal per task, averaged over tasks
        covered += lo <= TRUE_OVERALL <= hi
    assert 0.90 <= covered / reps <= 0.99


def test_few_prompts_per_task_still_cover():
    """The case the plain stratified bootstrap gets wrong (about 80 % coverage at 2 prompts per task): 8 tasks of 3
    prompts, one image each; the rescaled, t-widened interval must cover the truth in at least 90 % of 300 runs."""
    rng = np.random.default_rng(11)
    mus = np.linspace(0.2, 0.8, 8)
    covered = 0
    for r in range(300):
        values = np.concatenate([rng.random(3) < m for m in mus]).astype(float)
        tasks = np.repeat(np.arange(8).astype(str), 3)
        lo, hi = mean_of_means_ci(values, np.arange(24).astype(str), tasks, 400, seed=r)
        covered += lo <= mus.mean() <= hi
    assert covered / 300 >= 0.90


def _clipped_normal_mean(mu: float, sd: float) -> float:
    from scipy.stats import norm

    a, b = (0 - mu) / sd, (1 - mu) / sd
    inside = mu * (norm.cdf(b) - norm.cdf(a)) + sd * (norm.pdf(a) - norm.pdf(b))
    return float(inside + 1 - norm.cdf(b))


TRUE_OVERALL = float(np.mean([_clipped_normal_mean(m, 0.2) for m in (0.2, 0.5, 0.8)]))
