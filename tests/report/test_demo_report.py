"""The demo benchmark (benchmarks/smoke.yaml, what `k3eval demo` runs) end to end in a temporary folder: its report
opens with the summary, has every section, and no table is wider than the page in Chromium at 1440 px
(screenshots: tests/artifacts/demo_report.png and demo_summary.png)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from report_browser import ARTIFACTS, open_report

from k3eval.report.build import SECTIONS

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.browser
def test_demo_benchmark_report(tmp_path):
    from k3eval.benchmark import run_benchmark
    from k3eval.sbs import dispose_engines

    ctx = run_benchmark(REPO / "benchmarks" / "smoke.yaml", progress=False, root=tmp_path)
    dispose_engines()
    index = Path(ctx.outputs["report"])
    assert index.is_relative_to(tmp_path) and index.exists()
    text = index.read_text(encoding="utf-8")
    for sid, _ in SECTIONS:
        assert f'<section id="{sid}">' in text
    assert "SIMULATED VOTES" in text[: text.index("<nav>")]
    assert 'id="t-summary"' in text and 'id="t-preference_overall"' in text and 'id="t-examples"' in text
    # issue 13: the demo report says which automatic score predicts the (simulated) people best, for every per-image
    # metric the smoke benchmark scores, the learned ones included
    md = (index.parent / "report.md").read_text(encoding="utf-8")
    assert "Which automatic score predicts people best" in md
    ranking = pd.read_csv(index.parent / "tables" / "metric_ranking.csv")
    assert {"clip_score", "pickscore", "hpsv21", "imagereward", "aesthetic", "vqascore"} <= set(ranking["metric"])
    assert set(ranking["question"]) == {"alignment", "quality"}

    seen = open_report(index, ARTIFACTS / "demo_report.png", width=1440)
    (ARTIFACTS / "demo_summary.png").write_bytes(seen["summary_shot"])
    assert seen["headings"] == dict(SECTIONS)
    assert seen["first_section"] == "summary" and seen["summary_top"] is not None and seen["summary_top"] < 900
    assert seen["n_tables"] > 10 and seen["too_wide"] == []
    assert seen["errors"] == []
