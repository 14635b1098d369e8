"""Crash safety and bad outputs, through the real `python -m k3eval generate` command.

The generator here is a user-added one: a Generator subclass named by one YAML entry in a catalog file passed with
$K3EVAL_GENERATORS (what a user does to add a system without touching k3eval). It draws seeded noise with numpy, so
many generate processes can be started and killed in a few seconds; it returns NaN or all-black images for chosen
prompts when run in fp16, like an fp16 overflow, and fine images in fp32.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from PIL import Image

from k3eval.generators.base import Generator, GenOutput, GenRequest
from k3eval.runs import RunFolder

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TIMING_COLUMNS = ["seconds", "text_seconds", "denoise_seconds", "decode_seconds", "peak_memory_mb"]


class NoiseGenerator(Generator):
    """Seeded noise images; NaN/black for `nan_prompts`/`black_prompts` unless run in fp32 (or always, for
    `always_nan`)."""

    offline: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {"height": 128, "width": 128, "steps": 1, "guidance": 0.0, "delay": 0.0,
                                          "nan_prompts": "", "black_prompts": "", "always_nan": ""}

    def load(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def generate(self, requests: Sequence[GenRequest]) -> list[GenOutput]:
        p = self.params
        half = (self.dtype or "fp32") != "fp32"
        out = []
        for r in requests:
            rng = np.random.default_rng(r.seed)
            image = rng.random((p["height"], p["width"], 3), dtype=np.float32)
            if r.prompt_id in p["always_nan"].split(",") or (half and r.prompt_id in p["nan_prompts"].split(",")):
                image[0, 0, 0] = np.nan
            elif half and r.prompt_id in p["black_prompts"].split(","):
                image[:] = 0.0
            self.calls.append((r.prompt_id, self.dtype or "fp32"))
            if p["delay"]:
                time.sleep(p["delay"])
            out.append(GenOutput(image))
        return out


@pytest.fixture
def user_catalog(tmp_path, monkeypatch):
    """One YAML entry registers the generator; $K3EVAL_GENERATORS points at it (and PYTHONPATH at this file)."""
    catalog = tmp_path / "my_generators.yaml"
    catalog.write_text("noise:\n  class: test_crash_safety:NoiseGenerator\n  offline: true\n"
                       "  description: seeded noise for tests\n  params: {height: 128, width: 128, delay: 0.02}\n")
    monkeypatch.setenv("K3EVAL_GENERATORS", str(catalog))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    return catalog


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "prompts.csv"
    lines = ["id,prompt,category"] + [f"q{i:02d},prompt number {i},{'ab'[i % 2]}" for i in range(16)]
    path.write_text("\n".join(lines) + "\n")
    return path


def k3eval_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "k3eval", *args]


def run_ok(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(k3eval_cmd(*args), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc


def comparable(df):
    cols = [c for c in df.columns if c not in TIMING_COLUMNS]
    return df[cols].to_dict("records")


def check_run_is_whole(run: RunFolder) -> None:
    df = run.read_manifest()
    assert not df.duplicated(["prompt_id", "sample"]).any()
    for r in df.to_dict("records"):
        data = run.image_path(r).read_bytes()
        assert hashlib.sha256(data).hexdigest() == r["sha256"] and len(data) == r["bytes"]
        with Image.open(run.image_path(r)) as im:
            im.load()  # decodes every chunk: a truncated PNG raises here
    assert not [p for p in run.path.rglob("*.tmp")], "temporary files left behind"
    assert not run.journal_dir.exists()


def test_user_generator_from_one_yaml_entry(user_catalog):
    out = run_ok("generators", "list").stdout
    assert "noise" in out and "seeded noise for tests" in out


def test_sigkill_at_random_moments_then_resume(tmp_path, user_catalog, prompt_file):
    args = ["generate", "noise", "--prompts", str(prompt_file), "--samples", "2", "--batch-size", "3", "--quiet"]
    reference = tmp_path / "reference"
    run_ok(*args, "--out", str(reference))
    ref = RunFolder(reference).read_manifest()
    assert len(ref) == 32

    out = tmp_path / "killed"
    rng = random.Random(1234)
    kills = 0
    for _attempt in range(5):
        # Kill once a random number of images is on disk (so the kill lands mid-run), after a random extra moment.
        target = rng.randint(1, 30)
        delay = rng.uniform(0.0, 0.05)
        proc = subprocess.Popen(k3eval_cmd(*args, "--out", str(out)), cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if len(list(out.glob("images/*/*.png"))) >= target:
                time.sleep(delay)
                break
            time.sleep(0.005)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
    assert kills >= 3  # the test is about kills: most attempts must land mid-run

    # A torn journal line and a stray temporary image, as a kill mid-write leaves them.
    run = RunFolder(out)
    journals = sorted(run.journal_dir.glob("*.jsonl")) if run.journal_dir.exists() else []
    if journals:
        with open(journals[0], "a") as f:
            f.write('{"prompt_id": "q00", "sample": 1, "sta')
    stray = out / "images" / "q00" / ".0.png.deadbeef.tmp"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"\x89PNG half")

    run_ok(*args, "--out", str(out))
    check_run_is_whole(run)
    got = run.read_manifest()
    assert comparable(got) == comparable(ref)
    assert run.read_info()["status"] == "complete"


def test_torn_journal_line_does_not_swallow_the_next_row(tmp_path):
    run = RunFolder(tmp_path)
    row = {"prompt_id": "a", "sample": 0, "status": "ok", "path": "images/a/0.png"}
    run.append_rows("w", [row])
    with open(run.journal_path("w"), "a") as f:
        f.write('{"prompt_id": "b", "sample": 0, "st')  # killed mid-line
    run.append_rows("w", [{**row, "prompt_id": "c"}])  # the resumed writer goes on
    assert sorted(run.read_manifest()["prompt_id"]) == ["a", "c"]


def test_stray_temporaries_removed_at_merge(tmp_path):
    run = RunFolder(tmp_path)
    run.write_image("p", 0, np.zeros((4, 4, 3), np.uint8))
    leftovers = [tmp_path / "images" / "p" / ".1.png.x1.tmp", tmp_path / ".manifest.parquet.x2.tmp"]
    for p in leftovers:
        p.write_bytes(b"partial")
    keep = tmp_path / "images" / "p" / "0.png"
    removed = run.remove_stray_temporaries()
    assert sorted(removed) == sorted(leftovers) and keep.exists()


def test_bad_outputs_counted_reported_and_retried(tmp_path, user_catalog, prompt_file):
    out = tmp_path / "run"
    sets = ["--set", "nan_prompts=q01,q04", "--set", "black_prompts=q02", "--set", "always_nan=q05",
            "--set", "delay=0.0"]
    args = ["generate", "noise", "--prompts", str(prompt_file), "--limit", "6", "--out", str(out), "--quiet", *sets]
    first = run_ok(*args, "--dtype", "fp16").stdout
    assert "bad outputs" in first and "--retry-bad" in first
    run = RunFolder(out)
    status = run.read_manifest().set_index("prompt_id")["status"].to_dict()
    assert status == {"q00": "ok", "q01": "nan", "q02": "black", "q03": "ok", "q04": "nan", "q05": "nan"}
    assert run.read_info()["totals"]["status"] == {"ok": 2, "nan": 3, "black": 1}
    assert not (out / "images" / "q01" / "0.png").exists()  # NaN outputs are recorded, never saved as images
    before = run.read_manifest().set_index("prompt_id")

    # A plain rerun keeps bad rows (they are results); --retry-bad remakes them in fp32 with the same seeds.
    assert "0 generated" in run_ok(*args, "--dtype", "fp16").stdout
    run_ok(*args, "--dtype", "fp16", "--retry-bad")
    after = run.read_manifest().set_index("prompt_id")
    assert after["status"].to_dict() == {"q00": "ok", "q01": "ok", "q02": "ok", "q03": "ok", "q04": "ok",
                                         "q05": "nan"}
    assert (after["seed"] == before["seed"]).all()
    assert after.loc["q00", "sha256"] == before.loc["q00", "sha256"]  # good images untouched
    assert bool(after.loc["q01", "retried"]) and after.loc["q01", "retry_dtype"] == "fp32"
    assert run.read_info()["totals"]["status"] == {"ok": 5, "nan": 1}

    # The retried image is what the same seed gives in fp32 from the start.
    fp32 = tmp_path / "fp32"
    run_ok("generate", "noise", "--prompts", str(prompt_file), "--limit", "6", "--out", str(fp32), "--quiet", *sets)
    clean = RunFolder(fp32).read_manifest().set_index("prompt_id")
    assert after.loc["q01", "sha256"] == clean.loc["q01", "sha256"]
    assert after.loc["q02", "sha256"] == clean.loc["q02", "sha256"]


def test_ctrl_c_message_starts_a_line_of_its_own(tmp_path, user_catalog, prompt_file):
    """The progress bar ends each refresh with a carriage return; 'k3eval: interrupted' must not be glued to it."""
    out = tmp_path / "run"
    proc = subprocess.Popen(k3eval_cmd("generate", "noise", "--prompts", str(prompt_file), "--out", str(out),
                                       "--set", "delay=0.2"), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and len(list(out.glob("images/*/*.png"))) < 2:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err
    assert "noise ->" in err  # the bar was drawn
    lines = [ln for ln in err.split("\n") if ln.strip(" \r")]
    assert lines[-1] == "k3eval: interrupted", err[-300:]
    assert RunFolder(out).read_info()["status"] == "running"  # a started run is kept, to resume
