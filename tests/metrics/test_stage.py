"""The benchmark stage `score`: the metrics section is validated and every run of the benchmark is scored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from metrics_helpers import make_run

from k3eval.benchmark import BenchmarkContext
from k3eval.config import BenchmarkSpec
from k3eval.errors import UserError
from k3eval.metrics.stage import run_stage


def _ctx(tmp_path: Path, metrics: dict) -> BenchmarkContext:
    spec = BenchmarkSpec.model_validate({"name": "t", "prompts": {"set": "parti"}, "runs_dir": str(tmp_path / "runs"),
                                         "generators": [{"generator": "tiny-sd", "name": "a"},
                                                        {"generator": "tiny-sd", "name": "b"}],
                                         "metrics": metrics})
    return BenchmarkContext(spec, tmp_path / "bench.yaml", progress=False)


def test_stage_scores_every_run_with_a_synthetic_reference(tmp_path, inception_weights):
    make_run(tmp_path / "runs" / "a", n_prompts=3, samples=1, seed=1)
    make_run(tmp_path / "runs" / "b", n_prompts=3, samples=1, seed=2)
    ctx = _ctx(tmp_path, {"metrics": ["fid", "is"], "inception_weights": str(inception_weights),
                          "reference": "synthetic:4", "is_splits": 3})
    run_stage(ctx)
    assert set(ctx.outputs["score"]) == {"a", "b"}
    for path in ctx.outputs["score"].values():
        m = json.loads(Path(path).read_text())["metrics"]
        assert set(m) == {"fid", "is"}
        assert any("synthetic seeded images" in w for w in m["fid"]["warnings"])
        assert not any("synthetic seeded images" in w for w in m["is"]["warnings"])
        assert m["fid"]["protocol"]["reference"]["n"] == 4


def test_stage_section_errors_name_the_key(tmp_path):
    with pytest.raises(UserError, match="metrics: protocl: unknown key"):
        run_stage(_ctx(tmp_path, {"protocl": "tf"}))
    with pytest.raises(UserError, match="synthetic:N"):
        run_stage(_ctx(tmp_path, {"reference": "synthetic:x"}))
    with pytest.raises(UserError, match="no run named 'c'"):
        run_stage(_ctx(tmp_path, {"reference": "run:c"}))
    with pytest.raises(UserError, match="metrics: --metrics: no metric named"):
        run_stage(_ctx(tmp_path, {"metrics": []}))
    with pytest.raises(UserError, match="unknown metric 'fidd'; did you mean 'fid'"):
        run_stage(_ctx(tmp_path, {"metrics": ["fidd"]}))
    with pytest.raises(UserError, match="'toy' is not among the metrics scored"):
        run_stage(_ctx(tmp_path, {"metrics": ["is"], "settings": {"toy": {"x": 1}}}))


def test_section_is_checked_before_any_run_exists(tmp_path):
    """`score_options` checks the whole section without images (for validating a benchmark before generating); a
    run: reference is made by the generate stage, so its folder need not exist yet."""
    from k3eval.metrics.stage import score_options

    opts = score_options(_ctx(tmp_path, {"metrics": ["fid"], "reference": "run:b"}))
    assert opts.reference == str(tmp_path / "runs" / "b") and not (tmp_path / "runs").exists()
    with pytest.raises(UserError, match="--reference: not found"):
        score_options(_ctx(tmp_path, {"metrics": ["fid"], "reference": "refs/missing.npz"}))
