"""The shipped benchmarks compute the compositional metrics: their metric settings check out, and the GenEval part of
the smoke benchmark (benchmarks/smoke_geneval.yaml, run by `k3eval demo`) generates and scores end to end offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from k3eval.benchmark import BenchmarkContext, run_benchmark
from k3eval.config import load_benchmark

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("name", "metric"), [("geneval", "geneval"), ("t2i_compbench", "t2i_compbench"),
                                              ("smoke_geneval", "geneval")])
def test_benchmarks_name_the_metric_with_valid_settings(name, metric):
    from k3eval.metrics.stage import score_options

    path = ROOT / "benchmarks" / f"{name}.yaml"
    opts = score_options(BenchmarkContext(load_benchmark(path), path, root=ROOT, progress=False))
    assert metric in opts.metrics and metric in opts.settings


@pytest.mark.slow
def test_smoke_geneval_generates_and_scores(tmp_path):
    ctx = run_benchmark(ROOT / "benchmarks" / "smoke_geneval.yaml", stages=["generate", "score"], limit=6,
                        progress=False, root=tmp_path)
    summary = json.loads(Path(ctx.outputs["score"]["tiny-sd"]).read_text())
    ge = summary["metrics"]["geneval"]
    assert summary["synthetic_weights"] and ge["n"] == 6 and ge["value"] is not None
    assert set(ge["per_category"]) == {"single_object", "two_object", "counting"}
