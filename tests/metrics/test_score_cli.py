"""`k3eval score` as a user runs it, in subprocesses: bad invocations end with one line (exit 2, no traceback) and
leave the run folder as it was; offline scoring from the command line works and prints clean output."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from metrics_helpers import make_run

REPO = Path(__file__).resolve().parents[2]
OFFLINE = ["--inception-weights", "synthetic", "--clip-pretrained", "synthetic", "--cmmd-pretrained", "synthetic"]


def _k3eval(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "k3eval", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=600)


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("score_cli")
    good = make_run(root / "good", n_prompts=3, samples=2)
    holed = make_run(root / "holed", n_prompts=3, samples=1, seed=4)
    (holed / "images" / "p001" / "0.png").unlink()
    (root / "not_a_run").mkdir()
    return {"good": good, "holed": holed, "not_a_run": root / "not_a_run"}


BAD = [
    ("good", ["--metrics", ""], "--metrics: no metric named"),
    ("good", ["--metrics", " , "], "--metrics: no metric named"),
    ("good", ["--metrics", "fidd"], "did you mean 'fid'"),
    ("good", ["--metrics", "kid"], "compare with reference images"),
    ("good", ["--metrics", "fid", "--reference", "/nonexistent/ref.npz"], "--reference: not found: /nonexistent"),
    ("good", ["--metrics", "fid", "--reference", "synthetic:x"], "'synthetic:N' needs an integer N >= 2"),
    ("good", ["--protocol", "bilinear"], "--protocol: unknown value 'bilinear'; accepted: clean, tf"),
    ("good", ["--dtype", "float16"], "--dtype: unknown value 'float16'"),
    ("good", ["--workers", "-1"], "--workers"),
    ("good", ["--set", "clip_score.scale=2"], "clip_score takes no settings"),
    ("good", ["--set", "scale=2"], "--set scale=2: name the metric and its setting, as NAME.KEY=VALUE"),
    ("good", ["--metrics", "is", "--set", "fid.x=1"], "'fid' is not among the metrics scored (is)"),
    ("good", ["--metrics", "is", "--inception-weights", "/nonexistent/w.pth"], "--inception-weights: file not found"),
    ("holed", ["--metrics", "is"], "p001/0.png (file not found)"),
    ("not_a_run", ["--metrics", "is"], "not a run folder"),
]


def test_bad_invocations_exit_2_with_one_line_and_change_nothing(runs):
    for which, args, message in BAD:
        folder = runs[which]
        before = _tree(folder)
        res = _k3eval("score", str(folder), *OFFLINE, "--quiet", *args)
        out = res.stdout + res.stderr
        assert res.returncode == 2, (args, out)
        assert "Traceback" not in out, (args, out)
        assert message in res.stderr, (args, res.stderr)
        assert _tree(folder) == before, args  # no scores/ written, nothing touched


def test_offline_scoring_from_the_command_line(runs, tmp_path):
    """The README's offline command: synthetic weights and a synthetic reference, no network, clean output."""
    import json

    # a fresh cache: the synthetic open_clip checkpoint is built in this process, where open_clip used to log to root
    res = subprocess.run([sys.executable, "-m", "k3eval", "score", str(runs["good"]), *OFFLINE, "--reference",
                          "synthetic:6", "--metrics", "clip_score,fid,kid,is,cmmd", "--kid-subset-size", "4",
                          "--quiet"], capture_output=True, text=True, cwd=REPO, timeout=600,
                         env={**os.environ, "K3EVAL_CACHE": str(tmp_path / "cache")})
    assert res.returncode == 0, res.stderr
    assert "WARNING:root" not in res.stderr and "initialized randomly" not in res.stderr
    assert "(n=6)" in res.stdout and ", )" not in res.stdout and "(n=6, clean)" in res.stdout
    metrics = json.loads((runs["good"] / "scores" / "summary.json").read_text())["metrics"]
    for name in ("fid", "kid", "cmmd"):
        assert any("synthetic seeded images" in w for w in metrics[name]["warnings"]), name
    for name in ("clip_score", "is"):  # they do not use the reference: its warning is not theirs
        assert not any("reference" in w for w in metrics[name]["warnings"]), (name, metrics[name]["warnings"])

