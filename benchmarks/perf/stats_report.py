"""Statistics and report at study scale, with inputs synthesised here (seeded).

1. `analyze_votes` on ~30,000 votes over 6 generators (15 comparisons x 2 questions, 12 categories), 1,000 bootstrap
   resamples: preference with intervals per comparison/question/category, Bradley-Terry with bootstrap intervals,
   agreement, quality control. Target: at most 5 s on the 2-core development machine.
2. A full report (`build_report`) for 2,100 prompts x 4 generators (run folders with 64x64 PNGs, stored scores)
   and a 30,000-vote study. Targets: at most 60 s, index.html at most 25 MB.

Reference tools in the same run, on the same data (ratios > 1 mean k3eval is faster):
- Bradley-Terry bootstrap: k3eval's batched Newton over 1,000 resamples vs choix.ilsr_pairwise refitted per resample
  (timed on 50 resamples, scaled to 1,000);
- Krippendorff's alpha (ordinal, missing ratings) vs the krippendorff package;
- the prompt-level sign-flip test of one comparison (10,000 random sign patterns): `stats.sign_flip_pvalues` vs
  `scipy.stats.permutation_test` (one-sample, permutation_type="samples").

    .venv/bin/python benchmarks/perf/stats_report.py            # writes benchmarks/perf/results/stats_report.json
    .venv/bin/python benchmarks/perf/stats_report.py --quick    # smaller, for a smoke check (not committed)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from k3eval import stats  # noqa: E402
from k3eval.sbs.analysis import analyze_votes, regular_votes  # noqa: E402
from k3eval.sbs.simulate import synthetic_votes  # noqa: E402

CATEGORIES = [f"category-{k:02d}" for k in range(12)]


def _timed(fn, repeat: int = 1):
    best = float("inf")
    out = None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def bench_stats(n_prompts: int, votes_per_prompt: int, resamples: int) -> dict:
    models = [f"gen-{k}" for k in range(6)]
    votes = synthetic_votes(models, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0], n_prompts, CATEGORIES, n_annotators=60,
                            votes_per_prompt=votes_per_prompt, seed=0)
    analyze_votes(votes.head(2000), n_resamples=10, seed=0)  # warm-up: imports (scipy) are not the statistics
    seconds, res = _timed(lambda: analyze_votes(votes, n_resamples=resamples, seed=0), repeat=2)
    out = {"votes": int(len(votes)), "generators": len(models), "prompts": n_prompts, "categories": len(CATEGORIES),
           "resamples": resamples, "preference_rows": int(len(res.preference)),
           "analyze_seconds": round(seconds, 3), "target_seconds": 5.0, "within_target": seconds <= 5.0}

    # reference 1: Bradley-Terry bootstrap, refitting with choix per resample
    import choix

    v = regular_votes(votes)
    d = v[v["question"] == "alignment"]
    index = {m: k for k, m in enumerate(models)}
    i = d["model_a"].map(index).to_numpy()
    j = d["model_b"].map(index).to_numpy()
    s = d["score"].to_numpy()
    groups = d["prompt_id"].to_numpy()
    t_ours, _ = _timed(lambda: stats.bradley_terry(i, j, s, groups=groups, n_resamples=resamples, seed=0,
                                                   models=list(range(6))))
    _, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)]
    rng = np.random.default_rng(0)
    n_ref = 50

    def choix_boot():
        for _ in range(n_ref):
            pick = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
            data = []
            for a, b, x in zip(i[pick], j[pick], s[pick]):
                # ties as half: each vote counted twice, a tie once each way (same maximiser)
                data += [(a, b), (a, b)] if x == 1 else [(b, a), (b, a)] if x == 0 else [(a, b), (b, a)]
            choix.ilsr_pairwise(6, data, alpha=1e-6)

    t_ref, _ = _timed(choix_boot)
    t_ref_scaled = t_ref * resamples / n_ref
    out["bradley_terry_bootstrap"] = {"votes": int(len(d)), "k3eval_seconds": round(t_ours, 3),
                                      "choix_seconds_scaled": round(t_ref_scaled, 2), "choix_resamples_timed": n_ref,
                                      "speedup": round(t_ref_scaled / t_ours, 1)}

    # reference 2: Krippendorff's alpha, ordinal, with missing ratings
    import krippendorff

    ratings = d.assign(value=d["result"].map({"win": 2.0, "equal": 1.0, "both_bad": 1.0, "loss": 0.0}))
    matrix, _, _ = stats.ratings_matrix(ratings, item="item_id", rater="annotator", value="value")
    t_k, a_k = _timed(lambda: stats.krippendorff_alpha(matrix, "ordinal", value_domain=[0, 1, 2]), repeat=3)
    t_kr, a_kr = _timed(lambda: krippendorff.alpha(reliability_data=matrix, level_of_measurement="ordinal",
                                                   value_domain=[0, 1, 2]), repeat=3)
    out["krippendorff_alpha"] = {"matrix": list(matrix.shape), "k3eval_seconds": round(t_k, 4),
                                 "krippendorff_package_seconds": round(t_kr, 4), "speedup": round(t_kr / t_k, 1),
                                 "abs_difference": float(abs(a_k - a_kr))}

    # reference 3: the prompt-level test of one comparison, k3eval's batched sign flips vs scipy's permutation_test
    from scipy.stats import permutation_test

    one = d[(d["model_a"] == "gen-0") & (d["model_b"] == "gen-1")]
    per_prompt = (one["score"] - 0.5).groupby(one["prompt_id"]).sum().to_numpy()
    t_v, p_v = _timed(lambda: stats.sign_flip_pvalues(per_prompt, n_flips=10_000, seed=0)[0])
    t_s, p_s = _timed(lambda: permutation_test((per_prompt,), lambda x, axis: x.sum(axis=axis),
                                               permutation_type="samples", n_resamples=10_000, vectorized=True,
                                               rng=0).pvalue)
    out["sign_flip_test_one_comparison"] = {"prompts": int(per_prompt.size), "flips": 10_000,
                                            "k3eval_seconds": round(t_v, 4), "scipy_seconds": round(t_s, 4),
                                            "speedup": round(t_s / t_v, 1), "p_k3eval": round(float(p_v), 4),
                                            "p_scipy": round(float(p_s), 4)}
    return out


def _make_runs(root: Path, n_prompts: int, models: list[str], strengths: list[float]) -> dict[str, Path]:
    from k3eval.runs import RunFolder

    runs = {}
    cats = [CATEGORIES[p % len(CATEGORIES)] for p in range(n_prompts)]
    for k, (name, strength) in enumerate(zip(models, strengths)):
        run = RunFolder(root / name)
        gen = "kandinsky3-flash" if "flash" in name else ("kandinsky3" if "k3" in name else name)
        spi = 0.9 if "flash" in name else 3.2
        run.write_info({"k3eval_run": 1, "identity": {"generator": gen}, "run_name": name, "benchmark": "perf",
                        "generator": {"name": gen, "class": "perf.Synthetic", "params": {"steps": 25},
                                      "device": "cuda", "dtype": "fp16", "weights": {"model": "synthetic"}},
                        "prompt_set": {"name": "perf", "hash": "perf-hash", "n_prompts": n_prompts},
                        "samples": 1, "seed": {"benchmark_seed": 0, "rule": "sha256", "noise": "cpu"},
                        "packages": {"numpy": np.__version__}, "hardware": {"platform": "synthetic"},
                        "status": "complete",
                        "totals": {"images": n_prompts, "expected": n_prompts, "missing": 0,
                                   "status": {"ok": n_prompts}, "seconds_per_image": spi,
                                   "denoise_seconds_mean": 0.8 * spi, "text_seconds_mean": 0.05 * spi,
                                   "decode_seconds_mean": 0.1 * spi, "unet_evals_mean": 8 if "flash" in name else 50,
                                   "peak_memory_mb_mean": 14000.0}})
        rng = np.random.default_rng(k)
        rows = []
        base = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
        for p in range(n_prompts):
            img = np.roll(base, p, axis=1)
            pid = f"p{p:05d}"
            rel, sha, nbytes = run.write_image(pid, 0, img)
            rows.append({"prompt_set": "perf", "prompt_id": pid, "prompt": f"synthetic prompt {p}",
                         "category": cats[p], "sample": 0, "seed": p, "path": rel, "width": 64, "height": 64,
                         "steps": 25, "guidance": 3.0, "seconds": spi, "status": "ok", "sha256": sha,
                         "bytes": nbytes, "generator": gen})
        run.append_rows("perf", rows)
        run.consolidate()
        clip = 0.28 + 0.01 * strength + rng.normal(0, 0.02, n_prompts)
        (run.path / "scores").mkdir(exist_ok=True)
        pd.DataFrame({"prompt_id": [r["prompt_id"] for r in rows], "sample": 0, "category": cats,
                      "path": [r["path"] for r in rows], "sha256": [r["sha256"] for r in rows],
                      "clip_score": clip}).to_parquet(run.path / "scores" / "per_image.parquet")
        per_cat = {c: {"value": float(clip[np.array(cats) == c].mean()), "ci": None,
                       "n": int((np.array(cats) == c).sum()), "flag": None} for c in CATEGORIES}
        summary = {"k3eval_scores": 1, "run": {"path": str(run.path), "generator": gen, "prompt_set_hash": "perf"},
                   "created": "2025-01-01T00:00:00+00:00",
                   "metrics": {"clip_score": {"display_name": "CLIP score", "higher_is_better": True, "unit": "",
                                              "value": float(clip.mean()), "ci": [float(clip.mean()) - 0.001,
                                                                                  float(clip.mean()) + 0.001],
                                              "ci_method": "bootstrap over prompts, 1000 resamples",
                                              "n": n_prompts, "protocol": {"extractor": "synthetic", "n": n_prompts},
                                              "warnings": [], "per_category": per_cat}}}
        (run.path / "scores" / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
        runs[name] = run.path
    return runs


def bench_report(n_prompts: int, votes_per_prompt: int, resamples: int) -> dict:
    from k3eval.report.build import build_report

    models = ["k3-base", "k3-flash", "baseline-a", "baseline-b"]
    strengths = [0.5, 0.4, 0.0, -0.3]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        runs = _make_runs(root / "runs", n_prompts, models, strengths)
        setup = time.perf_counter() - t0
        votes = synthetic_votes(models, strengths, n_prompts, CATEGORIES, n_annotators=60,
                                votes_per_prompt=votes_per_prompt, seed=1)
        votes["prompt_id"] = [f"p{int(p[1:]):05d}" for p in votes["prompt_id"]]
        info = {"name": "perf-study", "simulated": True, "runs": {k: str(v) for k, v in runs.items()},
                "n_annotators": 60, "overlap": 3, "n_items": int(votes["item_id"].nunique()), "n_gold": 0,
                "n_repeats": 0, "questions": ["alignment", "quality"], "seed": 1, "created": "synthetic"}
        seconds, index = _timed(lambda: build_report(runs, root / "report", votes=votes, info=info,
                                                     n_resamples=resamples, seed=0))
        size = index.stat().st_size
        n_fig = len(list((root / "report" / "figures").glob("*.png")))
        n_tab = len(list((root / "report" / "tables").glob("*.csv")))
    return {"prompts": n_prompts, "generators": len(models), "images": n_prompts * len(models),
            "votes": int(len(votes)), "resamples": resamples, "setup_seconds_not_timed": round(setup, 1),
            "report_seconds": round(seconds, 2), "index_html_mb": round(size / 2**20, 2), "figures": n_fig,
            "tables": n_tab, "target_seconds": 60.0, "target_mb": 25.0,
            "within_target": seconds <= 60.0 and size <= 25 * 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke check")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "perf" / "results" / "stats_report.json"))
    args = ap.parse_args()
    # 2,143 prompts x 7 votes x 2 questions = 30,002 votes (a few drawn twice for one annotator are dropped)
    sizes = dict(n_prompts=200, votes_per_prompt=7, resamples=200) if args.quick else dict(
        n_prompts=2143, votes_per_prompt=7, resamples=1000)
    result = {"benchmark": "stats_report", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "quick": args.quick,
              "hardware": {"platform": platform.platform(), "python": platform.python_version(),
                           "cpu_count": os.cpu_count(), "processor": platform.processor(),
                           # the development machine is shared: a high load inflates every wall-clock figure
                           "load_average_1_5_15_at_start": [round(x, 2) for x in os.getloadavg()]},
              "packages": {p: metadata.version(p) for p in ("numpy", "pandas", "scipy", "matplotlib", "choix",
                                                            "krippendorff", "statsmodels")}}
    result["statistics"] = bench_stats(**sizes)
    print(json.dumps(result["statistics"], indent=1))
    rsizes = dict(n_prompts=200, votes_per_prompt=7, resamples=200) if args.quick else dict(
        n_prompts=2100, votes_per_prompt=7, resamples=1000)
    result["report"] = bench_report(**rsizes)
    print(json.dumps(result["report"], indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result["hardware"]["load_average_1_5_15_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
