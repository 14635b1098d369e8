"""Paired differences of a per-image metric between two runs (`k3eval score-diff`): by hand, calibrated by
simulation with known truth (the prompt is the unit), and the refusals."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from metrics_helpers import make_run

from k3eval.errors import UserError
from k3eval.metrics.paired import compare_runs, paired_difference, prompt_means
from k3eval.metrics.score import ScoreOptions, score_run


def test_prompt_means_and_difference_by_hand():
    a = pd.DataFrame({"prompt_id": ["p1", "p1", "p2", "p3", "p4"], "m": [1.0, 3.0, 5.0, 2.0, np.nan]})
    b = pd.DataFrame({"prompt_id": ["p1", "p2", "p2", "p3", "p5"], "m": [1.0, 4.0, 6.0, 2.0, 9.0]})
    ma, mb = prompt_means(a, "m"), prompt_means(b, "m")
    assert ma.to_dict() == {"p1": 2.0, "p2": 5.0, "p3": 2.0}  # p4 has no finite score
    r = paired_difference(ma, mb, metric="m", n_resamples=200)
    # common prompts p1, p2, p3: d = (2 - 1, 5 - 5, 2 - 2) = (1, 0, 0)
    assert r.n_prompts == 3 and r.diff == pytest.approx(1 / 3) and r.mean_a == pytest.approx(3.0)
    assert r.a_higher == pytest.approx(1 / 3) and r.ties == pytest.approx(2 / 3)
    assert r.diff_lo <= r.diff <= r.diff_hi and 0 <= r.a_higher_lo <= r.a_higher <= r.a_higher_hi <= 1
    with pytest.raises(UserError, match="share 1 scored prompt"):
        paired_difference(ma.iloc[:1], mb, metric="m")


def test_paired_interval_and_test_are_calibrated():
    """Known truth: per prompt a shared difficulty (paired: it cancels in A - B) plus noise, 40 prompts in 4
    categories. At a true difference of 0 the sign-flip test rejects about 5 %; the interval covers the true
    difference about 95 % of the time."""
    rng = np.random.default_rng(1)
    n, sims, delta = 40, 300, 0.3
    cats = pd.Series(np.repeat(["a", "b", "c", "d"], n // 4), index=[f"p{i}" for i in range(n)])
    cover = reject = 0
    for k in range(sims):
        base = rng.normal(0, 2, n)
        truth = delta if k % 2 else 0.0
        a = pd.Series(base + truth + rng.normal(0, 1, n), index=cats.index)
        b = pd.Series(base + rng.normal(0, 1, n), index=cats.index)
        r = paired_difference(a, b, cats, n_resamples=400, seed=k, n_flips=2000)
        cover += r.diff_lo <= truth <= r.diff_hi
        if truth == 0:
            reject += r.p_value < 0.05
    assert 0.91 <= cover / sims <= 0.985, cover / sims
    assert reject / (sims / 2) <= 0.10, reject


def test_compare_runs_reads_stored_scores(tmp_path):
    opts = ScoreOptions(metrics=["aesthetic", "hpsv21"], cache=None, bootstrap=0,
                        settings={"aesthetic": {"weights": "synthetic"}, "hpsv21": {"weights": "synthetic"}})
    a = make_run(tmp_path / "a", n_prompts=6, samples=2, seed=1)
    b = make_run(tmp_path / "b", n_prompts=6, samples=1, seed=2)
    score_run(a, opts)
    score_run(b, opts)
    diffs = compare_runs(a, b, n_resamples=100)
    assert [d.metric for d in diffs] == ["hpsv21", "aesthetic"]
    per_a = pd.read_parquet(a / "scores" / "per_image.parquet")
    per_b = pd.read_parquet(b / "scores" / "per_image.parquet")
    want = (per_a.groupby("prompt_id")["aesthetic"].mean() - per_b.groupby("prompt_id")["aesthetic"].mean()).mean()
    assert diffs[1].diff == pytest.approx(want) and diffs[1].n_prompts == 6 and diffs[1].run_a == "a"

    with pytest.raises(UserError, match="'clip_score' is not stored per image in both runs"):
        compare_runs(a, b, ["clip_score"])
    summary = json.loads((b / "scores" / "summary.json").read_text())
    summary["metrics"]["hpsv21"]["protocol"]["sha256"] = "0" * 64
    (b / "scores" / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(UserError, match=r"hpsv21: a and b were scored under different protocols \(sha256 differ"):
        compare_runs(a, b, ["hpsv21"])
    with pytest.raises(UserError, match="no stored scores"):
        compare_runs(a, tmp_path / "nowhere")


def test_score_diff_command(tmp_path, capsys):
    from k3eval.cli import main

    opts = ScoreOptions(metrics=["aesthetic"], cache=None, bootstrap=0,
                        settings={"aesthetic": {"weights": "synthetic"}})
    a = make_run(tmp_path / "a", n_prompts=4, samples=1, seed=1)
    b = make_run(tmp_path / "b", n_prompts=4, samples=1, seed=2)
    score_run(a, opts)
    score_run(b, opts)
    assert main(["score-diff", str(a), str(b), "--resamples", "50", "--out", str(tmp_path / "d.csv")]) == 0
    out = capsys.readouterr().out
    assert "aesthetic" in out and "A = a, B = b" in out
    assert pd.read_csv(tmp_path / "d.csv")["n_prompts"].tolist() == [4]
    assert main(["score-diff", str(a), str(tmp_path / "none")]) == 2
