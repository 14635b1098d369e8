"""Benchmark definitions: every shipped YAML validates; errors say where; the generate stage makes and imports runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from k3eval.benchmark import BenchmarkContext, run_benchmark
from k3eval.config import load_benchmark, validate_section
from k3eval.errors import UserError
from k3eval.runs import RunFolder

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "benchmarks").glob("*.yaml"))


def test_all_shipped_benchmarks_are_there():
    names = {p.stem for p in SHIPPED}
    assert {"smoke", "kandinsky3_paper", "coco30k_fid", "geneval", "t2i_compbench"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_benchmark_validates(path):
    spec = load_benchmark(path)  # also checks every generator name is registered
    ctx = BenchmarkContext(spec, path, root=ROOT)
    assert len(ctx.prompts()) > 0
    from k3eval.metrics.stage import MetricsSection
    from k3eval.report.stage import ReportSection
    from k3eval.sbs.stage import StudySection

    if spec.metrics is not None:
        validate_section(str(path), "metrics", MetricsSection, spec.metrics)
    if spec.study is not None:
        validate_section(str(path), "study", StudySection, spec.study)
    if spec.report is not None:
        validate_section(str(path), "report", ReportSection, spec.report)


def test_paper_benchmark_matches_the_report_setup():
    spec = load_benchmark(ROOT / "benchmarks" / "kandinsky3_paper.yaml")
    labels = {r.label for r in spec.generators} | {i.name for i in spec.imported or []}
    assert {"kandinsky3", "kandinsky3-flash", "kandinsky22", "sdxl", "dall-e-3", "midjourney-5.2",
            "kandinsky3-beautified", "kandinsky3-flash-beautified"} <= labels
    pairs = {(c.a, c.b) for c in spec.comparisons}
    assert {("kandinsky3", "kandinsky22"), ("kandinsky3", "sdxl"), ("kandinsky3", "dall-e-3"),
            ("kandinsky3", "kandinsky3-flash"), ("kandinsky3-beautified", "kandinsky3"),
            ("kandinsky3-flash-beautified", "kandinsky3-flash")} <= pairs
    prompts = BenchmarkContext(spec, ROOT / "benchmarks" / "kandinsky3_paper.yaml").prompts()
    counts = prompts.categories()
    assert len(counts) == 12 and max(counts.values()) == 100 and len(prompts) == 981
    assert spec.study["annotators"] == 12


def _write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "bench.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


BASE = {"name": "t", "prompts": {"set": "parti", "limit": 2}, "generators": [{"generator": "tiny-sd"}]}


@pytest.mark.parametrize("change, message", [
    ({"sampels": 2}, r"bench.yaml: sampels: unknown key"),
    ({"samples": "two"}, r"bench.yaml: samples: Input should be a valid integer"),
    ({"generators": [{"generator": "sdxxl"}]}, r"generators.0.generator: unknown generator 'sdxxl'; did you mean"),
    ({"generators": [{"generator": "tiny-sd", "parms": {}}]}, r"generators.0.parms: unknown key"),
    ({"comparisons": [{"a": "tiny-sd", "b": "dalle"}]}, r"comparisons.0.b: no run named 'dalle'"),
    ({"imported": [{"name": "x", "images": "folder"}]}, r"imported.0: .*give both 'images' and 'mapping'"),
    ({"imported": [{"name": "tiny-sd", "path": "runs/x"}]}, r"imported run 'tiny-sd' has the name of another run"),
])
def test_benchmark_errors_say_where(tmp_path, change, message):
    with pytest.raises(UserError, match=message):
        load_benchmark(_write(tmp_path, {**BASE, **change}))


def test_generate_stage_makes_and_imports_runs(tmp_path, capsys):
    export = tmp_path / "export"
    export.mkdir()
    spec = load_benchmark(_write(tmp_path, BASE))
    prompts = BenchmarkContext(spec, tmp_path / "bench.yaml").prompts()
    rows = []
    for i, p in enumerate(prompts):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
            export / f"{i}.png")
        rows.append(f"{i}.png,{p.id}")
    (tmp_path / "map.csv").write_text("file,prompt_id\n" + "\n".join(rows) + "\n")
    data = {**BASE, "imported": [{"name": "closed", "system": "Closed System", "version": "2", "date": "2024-01-02",
                                  "images": "export", "mapping": "map.csv"},
                                 {"name": "later", "images": "not-yet", "mapping": "map.csv"}],
            "comparisons": [{"a": "tiny-sd", "b": "closed"}]}
    ctx = run_benchmark(_write(tmp_path, data), stages=["generate"], progress=False, root=tmp_path)
    dirs = ctx.run_dirs()
    assert set(dirs) == {"tiny-sd", "closed"}  # 'later' has no images yet: left out, with a message
    assert dirs["tiny-sd"] == tmp_path / "runs" / "t" / "tiny-sd"
    out = capsys.readouterr().out
    assert "later: no images yet" in out and "k3eval import" in out
    gen, imp = RunFolder(dirs["tiny-sd"]), RunFolder(dirs["closed"])
    assert gen.read_info()["run_name"] == "tiny-sd" and len(gen.ok_rows()) == 2
    info = imp.read_info()
    assert info["imported"]["system"] == "Closed System" and info["imported"]["date"] == "2024-01-02"
    assert set(imp.ok_rows()["prompt_id"]) == set(gen.ok_rows()["prompt_id"])
    # A rerun keeps both (resumes, does not re-import).
    sha = imp.read_manifest()["sha256"].tolist()
    run_benchmark(tmp_path / "bench.yaml", stages=["generate"], progress=False, root=tmp_path)
    assert imp.read_manifest()["sha256"].tolist() == sha and "imported run present" in capsys.readouterr().out


def test_a_missing_reference_file_blocks_scoring_but_not_generating(tmp_path):
    """The reference is built by users after (or apart from) generation: a generate-only run must not need it, while
    a run that scores is refused before anything is made."""
    from k3eval.benchmark import validate_benchmark

    path = _write(tmp_path, {**BASE, "metrics": {"metrics": ["fid"], "reference": "refs/missing.npz"}})
    ctx = BenchmarkContext(load_benchmark(path), path, root=tmp_path)
    validate_benchmark(ctx, ["generate"])
    with pytest.raises(UserError, match=r"metrics: --reference: not found: .*missing.npz"):
        validate_benchmark(ctx, ["generate", "score"])
