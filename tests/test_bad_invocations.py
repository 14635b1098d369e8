"""Bad invocations, each through the real `python -m k3eval` in its own process: every one must exit non-zero with
a one-line error (no traceback) and leave the working folder exactly as it was (no half-made run, report, study
database or benchmark folder).

The working folder holds run folders made by the real generate code (the seeded-noise generator of
test_crash_safety, 16x16), one with a truncated manifest, one whose run.json lacks what a run records, one made
with another benchmark seed, a prompt file, an images folder and benchmark YAML files with one error each.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from test_crash_safety import NoiseGenerator

from k3eval.generate import generate_run
from k3eval.prompts import load_prompt_set

ROOT = Path(__file__).resolve().parents[1]

BENCH = """name: bad
prompts: {set: prompts.csv}
generators:
  - generator: tiny-sd
    params: {steps: 2}
  - generator: tiny-sd
    name: second
    params: {steps: 3}
"""

BENCH_ERRORS = {
    "bench-second-generator.yaml": ("params: {steps: 3}", "params: {stepz: 3}"),
    "bench-metrics.yaml": ("params: {steps: 3}\n", "params: {steps: 3}\nmetrics: {metrics: [clip_score, fidd]}\n"),
    "bench-synthetic.yaml": ("params: {steps: 3}\n", "params: {steps: 3}\nmetrics: {reference: 'synthetic:many'}\n"),
    "bench-reference.yaml": ("params: {steps: 3}\n", "params: {steps: 3}\nmetrics: {reference: refs/coco.npz}\n"),
    "bench-study.yaml": ("params: {steps: 3}\n", "params: {steps: 3}\nstudy: {annotators: 2, reference: tiny-sdd}\n"),
    "bench-overlap.yaml": ("params: {steps: 3}\n", "params: {steps: 3}\nstudy: {annotators: 2, overlap: 3}\n"),
    "bench-report.yaml": ("params: {steps: 3}\n", "params: {steps: 3}\nreport: {resamples: 0}\n"),
    "bench-device.yaml": ("name: bad\n", "name: bad\ndevice: banana\n"),
}


def _absent_cuda() -> str:
    """A CUDA device this machine does not have: `cuda` without a GPU, else one index past the last GPU."""
    import torch

    return f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"


GEN = ["generate", "tiny-sd", "--prompts", "prompts.csv", "--quiet"]
CREATE = ["sbs", "create", "s", "--annotators", "2", "--overlap", "1", "--runs"]
CASES = [
    ("device-unknown", [*GEN, "--out", "out", "--device", "banana"], r"--device: unknown device 'banana'"),
    ("device-absent", [*GEN, "--out", "out", "--device", _absent_cuda()],
     r"--device cuda(:\d+)?: (no CUDA GPU is usable here|this machine has \d+ CUDA device)"),
    ("score-device-unknown", ["score", "runs/good", "--device", "banana"], r"--device: unknown device 'banana'"),
    ("score-device-absent", ["score", "runs/good", "--device", _absent_cuda()],
     r"--device cuda(:\d+)?: (no CUDA GPU is usable here|this machine has \d+ CUDA device)"),
    ("reference-device-absent", ["reference", "build", "runs/good", "--out", "ref.npz", "--device", _absent_cuda()],
     r"--device cuda(:\d+)?: (no CUDA GPU is usable here|this machine has \d+ CUDA device)"),
    ("height-63", [*GEN, "--out", "out", "--set", "height=63"], r"height.*63"),
    ("generate-out-file", [*GEN, "--out", "a-file.txt"], r"--out a-file.txt: this is a file, not a folder"),
    ("generate-out-under-file", [*GEN, "--out", "a-file.txt/run"], r"a-file.txt is a file, so no folder can be"),
    ("generate-out-unwritable", [*GEN, "--out", "/proc/k3eval-test/run"], r"--out /proc/k3eval-test/run: cannot "
     r"write in /proc"),
    ("report-out-file", ["report", "--runs", "runs/good", "--out", "a-file.txt"], r"this is a file, not a folder"),
    ("report-out-unwritable", ["report", "--runs", "runs/good", "--out", "/proc/k3eval-test/report"],
     r"cannot write in /proc"),
    ("run-on-folder", ["run", "runs"], r"runs is a folder; give the benchmark YAML file"),
    ("score-corrupt", ["score", "runs/corrupt"], r"runs/corrupt/manifest.parquet is truncated or corrupt"),
    ("generate-corrupt", [*GEN, "--out", "runs/corrupt"], r"manifest.parquet is truncated or corrupt"),
    ("create-corrupt", [*CREATE, "runs/corrupt", "runs/good"], r"manifest.parquet is truncated or corrupt"),
    ("report-corrupt", ["report", "--runs", "runs/corrupt", "runs/good", "--out", "rep"],
     r"manifest.parquet is truncated or corrupt"),
    ("merge-corrupt", ["runs", "merge", "runs/corrupt"], r"manifest.parquet is truncated or corrupt"),
    ("score-bare-run-json", ["score", "runs/bare"], r"lacks what a run records \(generator.name, prompt_set.name"),
    ("report-bare-run-json", ["report", "--runs", "runs/bare", "runs/good", "--out", "rep"],
     r"lacks what a run records"),
    ("create-unpaired", [*CREATE, "runs/good", "runs/seed1"], r"not a paired comparison \(good vs seed1: benchmark "
     r"seed 0 vs 1\).*--unpaired"),
    ("import-outside", ["import", "images", "--mapping", "outside.csv", "--prompts", "prompts.csv", "--name", "x",
                        "--out", "imported"], r"line 2: file '../a-file.txt' is outside IMAGES_DIR"),
    ("import-gaps", ["import", "images", "--mapping", "partial.csv", "--prompts", "prompts.csv", "--name", "x",
                     "--out", "imported"], r"nothing imported: 3 prompts have no image \(--allow-missing"),
    ("jsonl-not-string", ["generate", "tiny-sd", "--prompts", "bad.jsonl", "--out", "out"],
     r"bad.jsonl, line 2: the prompt \('prompt'\) must be a string, got int 5"),
    ("bench-second-generator", ["run", "bench-second-generator.yaml"],
     r"bench-second-generator.yaml: generators.1 \(second\): generator 'tiny-sd' has no parameter 'stepz'"),
    ("bench-metrics", ["run", "bench-metrics.yaml"], r"bench-metrics.yaml: metrics: .*unknown metric 'fidd'"),
    ("bench-synthetic", ["run", "bench-synthetic.yaml"], r"metrics.reference: 'synthetic:N' needs an integer"),
    ("bench-reference", ["run", "bench-reference.yaml"], r"bench-reference.yaml: metrics: "
     r"--reference: not found: .*refs/coco.npz"),
    ("bench-study", ["run", "bench-study.yaml"], r"study.reference: no run named 'tiny-sdd'"),
    ("bench-overlap", ["run", "bench-overlap.yaml"], r"study.overlap: each item needs 3 distinct annotators"),
    ("bench-report", ["run", "bench-report.yaml", "--stage", "generate"], r"report: resamples: Input should be "
     r"greater than or equal to 1"),
    ("bench-device", ["run", "bench-device.yaml", "--stage", "generate"], r"generators.0 \(tiny-sd\): device: "
     r"unknown device 'banana'"),
]


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("bad-invocations")
    prompts = work / "prompts.csv"
    prompts.write_text("id,prompt,category\np0,a red cube,x\np1,a blue ball,y\np2,a green cone,x\np3,a cat,y\n")
    ps = load_prompt_set(str(prompts))
    gen = NoiseGenerator("noise", {"height": 16, "width": 16})
    for name, seed in (("good", 0), ("corrupt", 0), ("bare", 0), ("seed1", 1)):
        generate_run(gen, ps, work / "runs" / name, seed=seed, progress=False)
    manifest = work / "runs" / "corrupt" / "manifest.parquet"
    manifest.write_bytes(manifest.read_bytes()[:200])
    (work / "runs" / "bare" / "run.json").write_text('{"hello": "not a run"}\n')
    (work / "a-file.txt").write_text("not a folder\n")
    (work / "images").mkdir()
    Image.new("RGB", (96, 96), (200, 10, 10)).save(work / "images" / "p0.png")
    (work / "outside.csv").write_text("file,prompt_id\n../a-file.txt,p0\n")
    (work / "partial.csv").write_text("file,prompt_id\np0.png,p0\n")
    (work / "bad.jsonl").write_text('{"prompt": "a red cube"}\n{"prompt": 5}\n')
    for name, (old, new) in BENCH_ERRORS.items():
        assert old in BENCH
        (work / name).write_text(BENCH.replace(old, new, 1))
    return work


def _state(folder: Path) -> dict[str, tuple]:
    """Every path under `folder` with, for files, size, mtime, mode and sha256: what 'unchanged' means here."""
    out: dict[str, tuple] = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.is_symlink():
            st = p.stat()
            out[str(p.relative_to(folder))] = (st.st_size, st.st_mtime_ns, st.st_mode,
                                               hashlib.sha256(p.read_bytes()).hexdigest())
        else:
            out[str(p.relative_to(folder))] = ("dir",)
    return out


@pytest.mark.parametrize("args,pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_invocation(template, tmp_path, args, pattern):
    work = tmp_path / "work"
    shutil.copytree(template, work)
    before = _state(work)
    env = {k: v for k, v in os.environ.items() if k != "K3EVAL_DB"}  # the default database lands in `work`
    proc = subprocess.run([sys.executable, "-m", "k3eval", *args], cwd=work, capture_output=True, text=True,
                          timeout=600, env=env)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "Traceback" not in output, output
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("k3eval: error:")]
    assert len(errors) == 1 and re.search(pattern, errors[0]), output
    assert _state(work) == before, f"{args} changed the working folder"
