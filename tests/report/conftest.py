"""Report fixtures: three small run folders (written through RunFolder), stored scores, and a simulated study."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from k3eval.runs import RunFolder

# 18 prompts: enough for an overall interval (10+ prompts), too few for any category's (6 each)
PROMPTS = [(f"p{k:02d}", f"a test prompt number {k} with a {c.lower()} subject", c)
           for k, c in enumerate(["Animals", "Vehicles", "Food"] * 6)]
GENERATORS = {"k3-base": ("kandinsky3", 0.0), "k3-flash": ("kandinsky3-flash", 0.4), "other": ("tiny-sd", -0.4)}


def make_run(path: Path, name: str, generator: str, seed: int, seconds: float) -> Path:
    run = RunFolder(path)
    run.write_info({"k3eval_run": 1, "identity": {"generator": generator},
                    "generator": {"name": generator, "class": "tests.Fake", "params": {"steps": 4, "guidance": 3.0},
                                  "device": "cpu", "dtype": "fp32", "weights": {"random_weights": True}},
                    "prompt_set": {"name": "test-set", "hash": "abc123", "n_prompts": len(PROMPTS)},
                    "samples": 1, "seed": {"benchmark_seed": 0, "rule": "sha256 rule", "noise": "cpu noise"},
                    "packages": {"torch": "2.x", "numpy": "2.x"}, "hardware": {"platform": "test", "cpu_count": 2},
                    "status": "complete", "run_name": name, "benchmark": "report-test",
                    "totals": {"images": len(PROMPTS), "expected": len(PROMPTS), "missing": 0,
                               "status": {"ok": len(PROMPTS)}, "seconds_per_image": seconds,
                               "denoise_seconds_mean": seconds * 0.7, "text_seconds_mean": seconds * 0.1,
                               "decode_seconds_mean": seconds * 0.15, "unet_evals_mean": 8 if "flash" not in
                               generator else 2, "peak_memory_mb_mean": 900.0}})
    rng = np.random.default_rng(seed)
    rows = []
    for pid, text, cat in PROMPTS:
        img = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
        rel, sha, nbytes = run.write_image(pid, 0, img)
        rows.append({"prompt_set": "test-set", "prompt_id": pid, "prompt": text, "category": cat, "sample": 0,
                     "seed": 1, "path": rel, "width": 32, "height": 32, "steps": 4, "guidance": 3.0,
                     "seconds": seconds, "status": "ok", "sha256": sha, "bytes": nbytes, "generator": generator})
    run.append_rows("test", rows)
    run.consolidate()
    return path


def write_scores(path: Path, name: str, strength: float, seed: int) -> None:
    """scores/ as docs/FORMATS.md describes (what the metrics stage stores)."""
    rng = np.random.default_rng(seed)
    man = pd.read_parquet(path / "manifest.parquet")
    clip = 0.25 + 0.02 * strength + rng.normal(0, 0.01, len(man))
    (path / "scores").mkdir(exist_ok=True)
    pd.DataFrame({"prompt_id": man["prompt_id"], "sample": man["sample"], "category": man["category"],
                  "path": man["path"], "sha256": man["sha256"], "clip_score": clip}).to_parquet(
        path / "scores" / "per_image.parquet")
    per_cat = {c: {"value": float(clip[man["category"] == c].mean()), "ci": None,
                   "n": int((man["category"] == c).sum()), "flag": "too_small"} for c in sorted(set(man["category"]))}
    summary = {"k3eval_scores": 1, "run": {"path": str(path), "generator": name, "prompt_set_hash": "abc123"},
               "created": "2025-01-01T00:00:00+00:00",
               "metrics": {"clip_score": {"display_name": "CLIP score", "higher_is_better": True, "unit": "",
                                          "value": float(clip.mean()), "ci": [float(clip.mean() - 0.01),
                                                                              float(clip.mean() + 0.01)],
                                          "ci_method": "bootstrap over prompts, 1000 resamples", "n": len(man),
                                          "protocol": {"extractor": "tiny-clip", "resize": "bicubic", "dtype": "fp32",
                                                       "n": len(man), "seed": 0},
                                          "warnings": ["8 images: too few for a stable value"],
                                          "per_category": per_cat}}}
    (path / "scores" / "summary.json").write_text(json.dumps(summary), encoding="utf-8")


@pytest.fixture(scope="session")
def report_runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report-runs")
    runs = {}
    for k, (name, (gen, strength)) in enumerate(GENERATORS.items()):
        runs[name] = make_run(root / name, name, gen, seed=k, seconds=2.0 if "flash" not in gen else 0.5)
        write_scores(runs[name], name, strength, seed=10 + k)
    return runs


@pytest.fixture(scope="session")
def report_study(report_runs, tmp_path_factory):
    """A study over the three runs answered by simulated annotators; returns (name, db url)."""
    from k3eval.sbs import create_study, dispose_engines
    from k3eval.sbs.simulate import simulate_study

    url = f"sqlite:///{tmp_path_factory.mktemp('report-db') / 'votes.db'}"
    create_study("report-study", report_runs, annotators=4, overlap=3, gold=0.1, repeats=0.1, seed=0, db_url=url)
    simulate_study("report-study", seed=0, db_url=url)
    yield "report-study", url
    dispose_engines()


@pytest.fixture(scope="session")
def full_report(report_runs, report_study, tmp_path_factory) -> Path:
    from k3eval.report.build import build_report

    name, url = report_study
    return build_report(report_runs, tmp_path_factory.mktemp("report") / "out", study=name, db_url=url,
                        n_resamples=200, seed=0, examples=2)
