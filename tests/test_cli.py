"""The `k3eval` command: help without torch, listings, generate, benchmark validation, one-line user errors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from k3eval.cli import main

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "k3eval", *args], capture_output=True, text=True, cwd=cwd or REPO,
                          timeout=600)


def test_help_does_not_import_torch():
    code = ("import sys\nfrom k3eval.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers', 'pandas') if m in sys.modules)\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout
    assert "generate" in out.stdout and "prompts" in out.stdout


def test_prompts_list_and_show(capsys):
    assert main(["prompts", "list"]) == 0
    out = capsys.readouterr().out
    for name, size in [("parti", "1632"), ("geneval", "553"), ("t2i-compbench", "2400"), ("coco30k", "30000")]:
        line = next(ln for ln in out.splitlines() if ln.startswith(name + " "))
        assert size in line
    assert "Apache-2.0" in out and "CC BY 4.0" in out and "drawbench:PATH" in out
    assert main(["prompts", "show", "parti", "--category", "Animals", "--limit", "3"]) == 0
    rows = [ln.split("\t") for ln in capsys.readouterr().out.strip().splitlines()]
    assert len(rows) == 3 and all(r[1] == "Animals" and r[0].startswith("parti-") for r in rows)
    # --categories as everywhere else (the old --category stays an alias), and the other selection options
    assert main(["prompts", "show", "parti", "--categories", "Animals,Food & Beverage", "--per-category", "2"]) == 0
    rows = [ln.split("\t") for ln in capsys.readouterr().out.strip().splitlines()]
    assert sorted(r[1] for r in rows) == ["Animals", "Animals", "Food & Beverage", "Food & Beverage"]
    assert main(["prompts", "show", "parti", "--categories", "Animalz"]) == 2
    assert "did you mean 'Animals'" in capsys.readouterr().err


def test_generators_list(capsys):
    assert main(["generators", "list"]) == 0
    out = capsys.readouterr().out
    assert "tiny-kandinsky3" in out and "tiny-sd" in out and "diffusers:ORG/NAME" in out


def test_generate_command(tmp_path, capsys):
    prompts = tmp_path / "p.csv"
    prompts.write_text("id,prompt,category\na,a red cube,x\nb,a blue ball,y\nc,a green cone,x\n", encoding="utf-8")
    out = tmp_path / "run"
    code = main(["generate", "tiny-sd", "--prompts", str(prompts), "--out", str(out), "--categories", "x",
                 "--samples", "2", "--set", "steps=3", "--quiet"])
    assert code == 0
    assert "4 generated" in capsys.readouterr().out
    df = pd.read_parquet(out / "manifest.parquet")
    assert sorted(set(df["prompt_id"])) == ["a", "c"] and set(df["steps"]) == {3} and len(df) == 4


@pytest.mark.parametrize("args,message", [
    (["generate", "tiny-sd", "--prompts", "parti", "--out", "X", "--limit", "0"], "--limit: must be at least 1"),
    (["generate", "tiny-sd", "--prompts", "partii", "--out", "X"], "unknown prompt set 'partii'; did you mean 'parti'"),
    (["generate", "tiny-sdd", "--prompts", "parti", "--out", "X"], "did you mean 'tiny-sd'"),
    (["generate", "tiny-sd", "--prompts", "missing.csv", "--out", "X"], "prompt file not found: missing.csv"),
    (["generate", "tiny-sd", "--prompts", "parti", "--out", "X", "--set", "stepz=2"], "did you mean 'steps'"),
    (["generate", "tiny-sd", "--prompts", "parti", "--out", "X", "--dtype", "fp8"], "unknown dtype 'fp8'"),
    (["generate", "tiny-sd", "--prompts", "parti", "--out", "X", "--shard", "3/2"], "need 0 <= I < N"),
    (["run", "nothing.yaml"], "benchmark file not found"),
])
def test_user_errors_exit_2_without_traceback(tmp_path, args, message):
    res = run_cli(*args, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "X").exists()  # nothing written half-way


BENCH = """name: t
seed: 1
prompts: {set: PROMPTS}
generators:
  - generator: tiny-sd
    params: {steps: 2}
"""


@pytest.mark.parametrize("edit,message", [
    (("seed: 1", "seed: 1\nsampels: 2"), "sampels: unknown key"),
    (("generator: tiny-sd", "generator: tiny-sdx"), "generators.0.generator: unknown generator 'tiny-sdx'"),
    (("seed: 1", "seed: one"), "seed: Input should be a valid integer"),
    (("prompts: {set: PROMPTS}", "prompts: {set: PROMPTS, per_category: 0}"), "prompts.per_category"),
])
def test_benchmark_validation_errors(tmp_path, capsys, edit, message):
    path = tmp_path / "b.yaml"
    path.write_text(BENCH.replace(*edit).replace("PROMPTS", "parti"), encoding="utf-8")
    assert main(["run", str(path), "--stage", "generate"]) == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err


def test_run_generate_stage(tmp_path, monkeypatch):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cube\na blue ball\na green cone\n", encoding="utf-8")
    bench = tmp_path / "b.yaml"
    bench.write_text(BENCH.replace("PROMPTS", str(prompts)) + "  - generator: tiny-sd\n    name: sd-4steps\n"
                     "    params: {steps: 4}\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(bench), "--stage", "generate", "--limit", "2", "--quiet"]) == 0
    for name, steps in [("tiny-sd", 2), ("sd-4steps", 4)]:
        df = pd.read_parquet(tmp_path / "runs" / "t" / name / "manifest.parquet")
        assert len(df) == 2 and set(df["steps"]) == {steps}
    a = pd.read_parquet(tmp_path / "runs/t/tiny-sd/manifest.parquet")["seed"].tolist()
    b = pd.read_parquet(tmp_path / "runs/t/sd-4steps/manifest.parquet")["seed"].tolist()
    assert a == b  # paired seeds across the runs of a benchmark
    assert main(["run", str(bench), "--stage", "generatee"]) == 2


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    res = run_cli("demo", "--quiet", "--out", "my-report", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("demo report:"))
    index = Path(line.split(":", 1)[1].strip())
    assert index == tmp_path / "my-report" / "index.html"  # --out wins over the YAML's report.out
    html = index.read_text(encoding="utf-8")
    assert "<html" in html and "data:image/" in html
    assert (tmp_path / "runs" / "smoke" / "tiny-sd" / "manifest.parquet").exists()


NOISE_BENCH = """name: v
prompts: {set: PROMPTS}
generators_file: catalog.yaml
generators:
  - generator: noise
    params: {height: 16, width: 16, delay: 0.0}
"""


def test_whole_benchmark_checked_before_the_first_image(tmp_path, monkeypatch, capsys):
    """A reference the benchmark names must exist before generating; a device or output folder only for the stages
    that run now; an error in any section stops the run before the first image."""
    (tmp_path / "catalog.yaml").write_text("noise:\n  class: test_crash_safety:NoiseGenerator\n  offline: true\n")
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cube\na blue ball\n", encoding="utf-8")
    bench = tmp_path / "b.yaml"
    base = NOISE_BENCH.replace("PROMPTS", str(prompts))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("x")
    bench.write_text(base + "metrics: {reference: refs/coco.npz, device: banana-free}\n")
    assert main(["run", str(bench), "--stage", "generate", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"b.yaml: metrics: --reference: not found: .*refs/coco.npz", err), err
    assert not (tmp_path / "runs").exists()
    (tmp_path / "refs").mkdir()
    (tmp_path / "refs" / "coco.npz").write_bytes(b"made later by k3eval reference build")
    assert main(["run", str(bench), "--stage", "generate", "--quiet"]) == 2
    assert "metrics: device: unknown device 'banana-free'" in capsys.readouterr().err  # a typo is found at once
    bench.write_text(base + "metrics: {reference: refs/coco.npz, device: cuda:7}\nreport: {out: a-file}\n"
                     "study: {annotators: 2, simulate: {annotators: 2}}\n")
    assert main(["run", str(bench), "--stage", "generate", "--quiet"]) == 0  # cuda:7 and a-file: later stages
    assert len(pd.read_parquet(tmp_path / "runs/v/noise/manifest.parquet")) == 2
    assert main(["run", str(bench), "--stage", "report", "--quiet"]) == 2
    assert re.search(r"b.yaml: report.out \S*a-file: this is a file, not a folder", capsys.readouterr().err)
    bench.write_text(base + "study: {annotators: 2, simulate: {annotatorz: 2}}\n")
    assert main(["run", str(bench), "--stage", "generate", "--force", "--quiet"]) == 2
    assert "study.simulate: annotatorz: unknown key" in capsys.readouterr().err
    assert len(pd.read_parquet(tmp_path / "runs/v/noise/manifest.parquet")) == 2  # --force did not start
