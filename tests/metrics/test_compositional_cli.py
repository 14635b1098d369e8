"""`k3eval score --metrics geneval,t2i_compbench`, `k3eval export geneval` and `k3eval import --layout geneval` as a
user runs them, in subprocesses: offline end to end with the synthetic models, and bad input as one line (exit 2, no
traceback) that leaves nothing half-written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from metrics_helpers import make_run, make_set_run

REPO = Path(__file__).resolve().parents[2]
TINY = ["--set", "geneval.detector=synthetic", "--set", "geneval.clip_pretrained=synthetic",
        "--set", "geneval.detector_scale=[96,64]"]


def k3eval(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "k3eval", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from k3eval.metrics.geneval import shipped_metadata
    from k3eval.metrics.t2i_compbench import shipped_prompts

    root = tmp_path_factory.mktemp("compositional_cli")
    ge = make_set_run(root / "ge", "geneval", list(shipped_metadata())[:3], samples=2)
    cb = make_set_run(root / "cb", "t2i-compbench",
                      [next(p for p, (_, c) in shipped_prompts().items() if c == cat) for cat in ("color", "spatial")],
                      samples=2)
    return {"ge": ge, "cb": cb, "parti": make_run(root / "parti", n_prompts=2, samples=1), "root": root}


@pytest.mark.slow
def test_score_export_and_import_from_the_command_line(runs):
    r = k3eval("score", runs["ge"], "--metrics", "geneval", *TINY, "--quiet", "--bootstrap", "50")
    assert r.returncode == 0, r.stderr
    assert "GenEval" in r.stdout and "SYNTHETIC" in r.stdout
    out = runs["root"] / "official"
    r = k3eval("export", "geneval", runs["ge"], "--out", out)
    assert r.returncode == 0 and "6 images of 3 prompts" in r.stdout
    assert sorted(p.name for p in out.iterdir()) == ["00000", "00001", "00002"]
    back = runs["root"] / "back"
    r = k3eval("import", out, "--layout", "geneval", "--name", "elsewhere", "--out", back, "--allow-missing")
    assert r.returncode == 0, r.stderr
    r = k3eval("score", back, "--metrics", "geneval", *TINY, "--quiet", "--bootstrap", "50")
    assert r.returncode == 0, r.stderr
    a = json.loads((runs["ge"] / "scores" / "summary.json").read_text())["metrics"]["geneval"]
    b = json.loads((back / "scores" / "summary.json").read_text())["metrics"]["geneval"]
    assert a["value"] == b["value"] and a["tasks"] == b["tasks"]


@pytest.mark.slow
def test_t2i_compbench_from_the_command_line(runs):
    r = k3eval("score", runs["cb"], "--metrics", "t2i_compbench", "--set", "t2i_compbench.vqa_model=synthetic",
               "--set", "t2i_compbench.detector=synthetic", "--set", "t2i_compbench.depth_model=synthetic",
               "--set", "t2i_compbench.clip_pretrained=synthetic", "--set", "t2i_compbench.vqa_image_size=64",
               "--quiet", "--bootstrap", "50")
    assert r.returncode == 0, r.stderr
    m = json.loads((runs["cb"] / "scores" / "summary.json").read_text())["metrics"]["t2i_compbench"]
    assert set(m["per_category"]) == {"color", "spatial"} and m["parser"] == "rule-based v1"


def bad_layout(root: Path) -> Path:
    folder = root / "bad_layout"
    (folder / "00000" / "samples").mkdir(parents=True, exist_ok=True)
    (folder / "00000" / "metadata.jsonl").write_text("{not json")
    return folder


@pytest.mark.parametrize(("make_args", "message"), [
    (lambda r: ["score", r["parti"], "--metrics", "geneval", *TINY],
     "geneval scores runs of the 'geneval' prompt set, t2i_compbench runs of 't2i-compbench'"),
    (lambda r: ["score", r["ge"], "--metrics", "t2i_compbench"], "is not a T2I-CompBench prompt"),
    (lambda r: ["export", "geneval", r["parti"], "--out", r["root"] / "x"], "is not a GenEval prompt"),
    (lambda r: ["import", bad_layout(r["root"]), "--layout", "geneval", "--name", "x", "--out", r["root"] / "y"],
     "00000/metadata.jsonl: not valid JSON"),
    (lambda r: ["import", r["root"], "--layout", "geneval", "--name", "x", "--out", r["root"] / "y"],
     "not laid out the GenEval way"),
    (lambda r: ["import", r["root"], "--layout", "geneval", "--mapping", "m.csv", "--name", "x", "--out", "y"],
     "--layout geneval: the folder's metadata.jsonl files give the prompts"),
])
def test_bad_input_is_one_line(runs, make_args, message):
    before = sorted(str(p) for p in runs["root"].rglob("*") if "scores" not in p.parts)
    r = k3eval(*make_args(runs))
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    after = sorted(str(p) for p in runs["root"].rglob("*") if "scores" not in p.parts)
    assert [p for p in after if p not in before and "bad_layout" not in p] == []


@pytest.mark.parametrize(("make_args", "message"), [
    (lambda r: ["score", r["ge"], "--metrics", "geneval", "--set", "geneval.threshold=2"],
     "--set geneval: threshold: Input should be less than or equal to 1"),
    (lambda r: ["score", r["ge"], "--metrics", "geneval", "--set", "geneval.detector_backend=mmdet"],
     "--set geneval.detector_backend=mmdet: mmdet is not installed"),
    (lambda r: ["export", "geneval", r["ge"], "--out", r["ge"]], "already exists"),
    (lambda r: ["import", r["root"], "--name", "x", "--out", r["root"] / "y"], "import needs --mapping CSV"),
])
def test_more_bad_input_in_process(runs, make_args, message, capsys):
    from k3eval.cli import main

    assert main([str(a) for a in make_args(runs)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
