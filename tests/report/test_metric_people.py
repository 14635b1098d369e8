"""The report section "Automatic scores vs people": every per-image metric ranked by pairwise accuracy against the
study's votes, per question, sorted; the ordering check; the simulated-votes note."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd


def test_section_ranks_every_per_image_metric(report_runs, report_study, tmp_path):
    """The simulated annotators follow the CLIP score by construction; a metric of pure noise and one that
    reverses the CLIP score ('anti') must rank below it, the reversed one last."""
    from k3eval.report.build import build_report

    runs = {}
    for k, (name, path) in enumerate(report_runs.items()):
        runs[name] = shutil.copytree(path, tmp_path / "runs" / name)
        per = pd.read_parquet(runs[name] / "scores" / "per_image.parquet")
        per["noise"] = np.random.default_rng(k).normal(size=len(per))
        per["anti"] = -per["clip_score"]
        per.to_parquet(runs[name] / "scores" / "per_image.parquet")
        summary = json.loads((runs[name] / "scores" / "summary.json").read_text())
        for m in ("noise", "anti"):
            summary["metrics"][m] = {**summary["metrics"]["clip_score"], "display_name": m.title()}
        (runs[name] / "scores" / "summary.json").write_text(json.dumps(summary))
    study, url = report_study
    index = build_report(runs, tmp_path / "report", study=study, db_url=url, n_resamples=200, seed=0, examples=0)
    html, md = index.read_text(), (tmp_path / "report" / "report.md").read_text()
    assert '<section id="metric_people">' in html and "## 5. Automatic scores vs people" in md
    assert "Which automatic score predicts people best" in md
    assert "SIMULATED VOTES: the 'people' below are simulated annotators" in md
    ranking = pd.read_csv(tmp_path / "report" / "tables" / "metric_ranking.csv")
    assert set(ranking["question"]) == {"alignment", "quality"}
    for _, g in ranking.groupby("question"):
        assert g["metric"].tolist()[0] == "clip_score" and g["metric"].tolist()[-1] == "anti"
        assert g["accuracy"].is_monotonic_decreasing and (g["accuracy_lo"] <= g["accuracy"]).all()
        assert (g["comparisons"] == 3).all()  # three comparisons: every pair of the three runs
    ordering = pd.read_csv(tmp_path / "report" / "tables" / "metric_ordering.csv")
    assert set(ordering["metric"]) == {"clip_score", "noise", "anti"}
    clip = ordering[ordering["metric"] == "clip_score"]
    anti = ordering[ordering["metric"] == "anti"]
    assert (clip["metric_prefers"].to_numpy() != anti["metric_prefers"].to_numpy()).all()
    acc = pd.read_csv(tmp_path / "report" / "tables" / "metric_agreement.csv")
    assert {"Animals", "Vehicles", "Food", "all"} <= set(acc["category"])
