"""Paired differences of a per-image metric between two runs on the same prompts (`k3eval score-diff`, the report).

The unit is the prompt: each run's images of a prompt are averaged (runs may have different numbers of samples),
d_p = mean_A(p) - mean_B(p) over the prompts both runs scored. The difference is the mean of d_p; its interval
comes from the rescaled bootstrap of prompts within their category (`k3eval.stats.rescaled_resample_weights`),
widened by t / z for the design's degrees of freedom (`stats.t_widened`), as every prompt-level interval of k3eval;
its P-value from the sign-flip permutation test of the d_p (`stats.sign_flip_pvalues`: exchangeable runs on every
prompt). `a_higher` is the share of prompts where A's mean is strictly higher (`ties`: exactly equal), with an
interval from the same resamples. Nothing is recomputed: the scores are read from RUN/scores/per_image.parquet.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from k3eval.errors import UserError

# protocol keys that describe the run rather than the metric's rule (they may differ between comparable runs)
RUN_KEYS = {"n", "n_truncated", "seed", "device", "versions", "reference", "logit_scale_exp"}


@dataclass
class PairedDifference:
    """A - B for one metric over the prompts both runs scored."""

    metric: str
    run_a: str
    run_b: str
    n_prompts: int
    mean_a: float
    mean_b: float
    diff: float
    diff_lo: float
    diff_hi: float
    p_value: float
    a_higher: float
    a_higher_lo: float
    a_higher_hi: float
    ties: float
    method: str

    def row(self) -> dict[str, Any]:
        return asdict(self)


def prompt_means(per_image: pd.DataFrame, column: str) -> pd.Series:
    """Mean of `column` per prompt_id (the images of one prompt averaged), non-finite values left out."""
    vals = pd.to_numeric(per_image[column], errors="coerce")
    ok = np.isfinite(vals.to_numpy(dtype=np.float64))
    return vals[ok].groupby(per_image["prompt_id"].astype(str)[ok]).mean()


def paired_difference(a: pd.Series, b: pd.Series, categories: pd.Series | None = None, *, metric: str = "",
                      run_a: str = "A", run_b: str = "B", n_resamples: int = 1000, seed: int = 0,
                      level: float = 0.95, n_flips: int = 10_000) -> PairedDifference:
    """Paired difference of prompt means `a` and `b` (Series indexed by prompt_id) over their common prompts;
    `categories` (prompt_id -> category) stratifies the resampling."""
    from k3eval import stats

    common = a.index.intersection(b.index)
    if len(common) < 2:
        raise UserError(f"{metric}: {run_a} and {run_b} share {len(common)} scored prompt(s); a paired comparison "
                        "needs at least 2 prompts scored in both runs")
    common = common.sort_values()
    xa, xb = a.loc[common].to_numpy(np.float64), b.loc[common].to_numpy(np.float64)
    d = xa - xb
    strata = (categories.reindex(common).fillna("").astype(str).to_numpy() if categories is not None
              else np.zeros(len(common)))
    w = stats.rescaled_resample_weights(strata, n_resamples, seed)
    total = w.sum(1)
    higher, tie = (d > 0).astype(np.float64), (d == 0).astype(np.float64)
    boot = np.column_stack([w @ d, w @ higher]) / total[:, None]
    lo, hi = stats.percentile_ci(boot, level)
    df = np.array([len(common) - len(np.unique(stats.stratum_codes(strata)))])
    d_lo, d_hi = stats.t_widened(np.array([d.mean()]), lo[:1], hi[:1], df, level)
    s_lo, s_hi = stats.t_widened(np.array([higher.mean()]), lo[1:], hi[1:], df, level, bounds=(0.0, 1.0))
    p = float(stats.sign_flip_pvalues(d[:, None], n_flips=n_flips, seed=seed)[0])
    method = (f"prompt means paired over {len(common)} prompts; rescaled bootstrap (Rao-Wu) of prompts within their "
              f"category, {n_resamples} resamples, seed {seed}, t-widened; sign-flip test over prompts")
    return PairedDifference(metric, run_a, run_b, len(common), float(xa.mean()), float(xb.mean()), float(d.mean()),
                            float(d_lo[0]), float(d_hi[0]), p, float(higher.mean()), float(s_lo[0]), float(s_hi[0]),
                            float(tie.mean()), method)


def _load(run: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    import json

    p = Path(run)
    per, summ = p / "scores" / "per_image.parquet", p / "scores" / "summary.json"
    if not per.exists() or not summ.exists():
        raise UserError(f"{p}: no stored scores (scores/per_image.parquet and summary.json); run `k3eval score {p}`")
    return pd.read_parquet(per), json.loads(summ.read_text(encoding="utf-8"))


def per_image_metrics(summary: dict[str, Any], per_image: pd.DataFrame) -> list[str]:
    """The metrics of a run stored per image: summary entries with a per_image.parquet column of their name."""
    return [m for m in summary.get("metrics", {}) if m in per_image.columns]


def protocol_differences(pa: dict[str, Any], pb: dict[str, Any]) -> list[str]:
    """Keys of two metric protocols that differ, leaving out those that describe the run (`RUN_KEYS`)."""
    keys = (set(pa) | set(pb)) - RUN_KEYS
    return sorted(k for k in keys if pa.get(k) != pb.get(k))


def compare_runs(run_a: str | Path, run_b: str | Path, metrics: list[str] | None = None, *, n_resamples: int = 1000,
                 seed: int = 0, level: float = 0.95) -> list[PairedDifference]:
    """Paired differences A - B of every per-image metric both runs stored (or of `metrics`). A metric computed
    under different protocols (other weights, model, preprocessing) is refused: its values are not comparable."""
    per_a, sum_a = _load(run_a)
    per_b, sum_b = _load(run_b)
    both = [m for m in per_image_metrics(sum_a, per_a) if m in per_image_metrics(sum_b, per_b)]
    if metrics is None:
        metrics = both
        if not metrics:
            raise UserError(f"{run_a} and {run_b} have no per-image metric in common (score both with the same "
                            "--metrics)")
    for m in metrics:
        if m not in both:
            raise UserError(f"--metrics: {m!r} is not stored per image in both runs (in both: {', '.join(both)})")
    cats = None
    if "category" in per_a.columns and "category" in per_b.columns:
        pc = pd.concat([per_a[["prompt_id", "category"]], per_b[["prompt_id", "category"]]])
        cats = pc.assign(prompt_id=pc["prompt_id"].astype(str)).drop_duplicates("prompt_id").set_index(
            "prompt_id")["category"]
    name_a, name_b = Path(run_a).name, Path(run_b).name
    out = []
    for m in metrics:
        diff = protocol_differences(sum_a["metrics"][m].get("protocol", {}), sum_b["metrics"][m].get("protocol", {}))
        if diff:
            raise UserError(f"{m}: {name_a} and {name_b} were scored under different protocols ({', '.join(diff)} "
                            "differ): rescore both with the same settings")
        out.append(paired_difference(prompt_means(per_a, m), prompt_means(per_b, m), cats, metric=m, run_a=name_a,
                                     run_b=name_b, n_resamples=n_resamples, seed=seed, level=level))
    return out


def format_differences(diffs: list[PairedDifference]) -> str:
    """A plain-text table for the terminal."""
    lines = [f"{'metric':<14} {'prompts':>7} {'A':>9} {'B':>9} {'A - B [95% CI]':<30} {'p':>7} {'A higher':>9}"]
    for d in diffs:
        ci = f"{d.diff:+.4g} [{d.diff_lo:+.4g}, {d.diff_hi:+.4g}]"
        lines.append(f"{d.metric:<14} {d.n_prompts:>7} {d.mean_a:>9.4g} {d.mean_b:>9.4g} {ci:<30} {d.p_value:>7.2g} "
                     f"{100 * d.a_higher:>8.0f}%")
    if diffs:
        lines.append(f"A = {diffs[0].run_a}, B = {diffs[0].run_b}; {diffs[0].method}")
    return "\n".join(lines)
