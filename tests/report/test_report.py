"""The report: every section present, tables in HTML = CSV = Markdown, self-contained, graceful without parts."""

from __future__ import annotations

import base64
import html
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from k3eval.report.build import SECTIONS, build_report


class _Tables(HTMLParser):
    """Collects every <table id="t-NAME">: rows of (raw CSV columns, raw values, text) per cell, headers, <img>
    sources and section ids."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[tuple[list[str], list[str], str]]]] = {}
        self.headers: dict[str, list[str]] = {}
        self.srcs: list[str] = []
        self.sections: list[str] = []
        self._t = self._cell = self._th = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and a.get("id", "").startswith("t-"):
            self._t = a["id"][2:]
            self.tables[self._t] = []
            self.headers[self._t] = []
        elif tag == "tr" and self._t:
            self.tables[self._t].append([])
        elif tag == "td" and self._t:
            self._cell = [json.loads(a["data-k"]), json.loads(a["data-v"]), ""]
        elif tag == "th" and self._t:
            self._th = ""
        elif tag in ("img", "script", "link", "iframe"):
            self.srcs.append(a.get("src") or a.get("href") or "")
        elif tag == "section":
            self.sections.append(a.get("id"))

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[2] += data
        elif self._th is not None:
            self._th += data

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.tables[self._t][-1].append(tuple(self._cell))
            self._cell = None
        elif tag == "th" and self._th is not None:
            self.headers[self._t].append(self._th)
            self._th = None
        elif tag == "table":
            self._t = None


def _parse(index: Path) -> _Tables:
    p = _Tables()
    p.feed(index.read_text(encoding="utf-8"))
    return p


def test_every_section_and_the_simulated_banner_first(full_report):
    text = full_report.read_text(encoding="utf-8")
    p = _parse(full_report)
    assert p.sections == [sid for sid, _ in SECTIONS]
    # the banner is the first thing after the title, in HTML and Markdown
    body = text[text.index("<body>"):]
    assert body.index("SIMULATED VOTES") < body.index("<nav>")
    md = (full_report.parent / "report.md").read_text(encoding="utf-8").splitlines()
    assert md[0].startswith("# ") and "SIMULATED VOTES" in md[2]
    for must in ("preference_overall", "preference", "bradley_terry", "agreement", "qc", "metric_agreement",
                 "metric_clip_score", "metric_clip_score_by_category", "speed", "speedup_flash", "setup_runs",
                 "examples"):
        assert must in p.tables, must
    assert "Limitations" in text and "too_small" in text or "too small" in text


def test_csv_tables_agree_with_html(full_report):
    """Every cell names the CSV columns it shows and carries their raw values: they are the CSV's, row by row."""
    p = _parse(full_report)
    out = full_report.parent
    csvs = sorted((out / "tables").glob("*.csv"))
    assert {c.stem for c in csvs} == set(p.tables)
    for c in csvs:
        df = pd.read_csv(c, keep_default_na=False, dtype=str)
        rows = [r for r in p.tables[c.stem] if r]
        assert len(rows) == len(df), c.stem
        shown = {k for cell in rows[0] for k in cell[0]} if rows else set()
        assert shown <= set(df.columns), (c.stem, shown - set(df.columns))
        for row_html, (_, row_csv) in zip(rows, df.iterrows()):
            for keys, raws, _ in row_html:
                for k, raw in zip(keys, raws):
                    v = row_csv[k]
                    if raw == v:
                        continue
                    # numbers: the CSV and the cell's raw value are the same float (bools/ints may print differently)
                    assert float(raw) == pytest.approx(float(v), rel=1e-12, abs=1e-15), (c.stem, k, raw, v)


def test_markdown_tables_show_the_same_cells_as_html(full_report):
    p = _parse(full_report)
    md = (full_report.parent / "report.md").read_text(encoding="utf-8")
    for name, rows in p.tables.items():
        block = md[md.index(f"(`tables/{name}.csv`)"):]
        lines = [ln for ln in block.splitlines()[2:] if ln.startswith("|")]
        assert [c.strip() for c in lines[0].strip().strip("|").split(" | ")] == p.headers[name], name
        body = lines[2:2 + len([r for r in rows if r])]
        for row_html, line in zip([r for r in rows if r], body):
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            assert cells == [text.strip() for _, _, text in row_html], name


def test_summary_comes_first_with_verdicts_and_the_figure(full_report):
    p = _parse(full_report)
    assert p.sections[0] == "summary"
    rows = [r for r in p.tables["summary"] if r]
    assert p.headers["summary"][:3] == ["comparison", "question", "score [95% CI]"]
    assert len(rows) == 3 * 2  # 3 comparisons x 2 questions, in the study's order
    summary = pd.read_csv(full_report.parent / "tables" / "summary.csv")
    study_order = ["k3-base vs k3-flash", "k3-base vs other", "k3-flash vs other"]
    assert list(dict.fromkeys(summary["comparison"])) == study_order
    for cells in rows:
        text = {h: t for h, (_, _, t) in zip(p.headers["summary"], cells)}
        assert re.fullmatch(r"0\.\d\d \[0\.\d\d, [01]\.\d\d\]", text["score [95% CI]"]), text
        assert re.fullmatch(r"\d+ / \d+ / \d+ / \d+ %", text["win / tie / both bad / loss"])
        assert text["verdict"] in ("no clear difference", "k3-base", "k3-flash", "other")
    assert set(summary["family"]) == {"study: 3 comparisons x 2 questions"}
    html_text = full_report.read_text(encoding="utf-8")
    assert html_text.index('id="f-summary"') < html_text.index('<section id="setup">')
    assert (full_report.parent / "figures" / "summary.png").exists()
    # examples come from every comparison
    ex = pd.read_csv(full_report.parent / "tables" / "examples.csv")
    assert set(ex["comparison"]) == set(study_order)


def test_self_contained_and_figures_match_files(full_report):
    text = full_report.read_text(encoding="utf-8")
    p = _parse(full_report)
    assert p.srcs and all(s.startswith("data:image/") for s in p.srcs)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)
    assert "<script" not in text and "@import" not in text
    figs = sorted((full_report.parent / "figures").glob("*.png"))
    assert any(f.name.startswith("preference_") for f in figs) and (full_report.parent / "figures" /
                                                                     "bradley_terry.png").exists()
    for f in figs:
        assert base64.b64encode(f.read_bytes()).decode() in text, f.name


def test_report_numbers_are_the_stored_ones(full_report, report_runs):
    """The report never recomputes a metric: the CLIP table holds summary.json's value and interval."""
    import json

    df = pd.read_csv(full_report.parent / "tables" / "metric_clip_score.csv")
    for name, path in report_runs.items():
        m = json.loads((path / "scores" / "summary.json").read_text())["metrics"]["clip_score"]
        row = df[df["run"] == name].iloc[0]
        assert row["value"] == m["value"] and row["ci_lo"] == m["ci"][0] and row["ci_hi"] == m["ci"][1]
    sp = pd.read_csv(full_report.parent / "tables" / "speedup_flash.csv")
    assert sp["speedup_seconds"].tolist() == [pytest.approx(4.0)]


def test_degrades_without_study_and_scores(report_runs, tmp_path):
    bare = {}
    import shutil

    for name, path in report_runs.items():
        dst = tmp_path / "runs" / name
        shutil.copytree(path, dst, ignore=shutil.ignore_patterns("scores"))
        bare[name] = dst
    index = build_report(list(bare.values()), tmp_path / "out", n_resamples=50)
    text = index.read_text(encoding="utf-8")
    p = _parse(index)
    assert p.sections == [sid for sid, _ in SECTIONS]
    assert "No stored scores" in text and "No study given" in text and "SIMULATED" not in text
    assert "no votes" in text  # the examples section still shows images side by side
    assert "preference" not in p.tables


def test_votes_frame_input_and_flagged_annotators_shown_both_ways(report_runs, tmp_path):
    from k3eval.sbs.simulate import synthetic_votes

    v = synthetic_votes(list(report_runs), [0.0, 0.5, -0.5], n_prompts=8, categories=["Animals"], n_annotators=5,
                        votes_per_prompt=12, seed=1)
    v["prompt_id"] = [f"p{int(p[1:]):02d}" for p in v["prompt_id"]]
    lazy = v["annotator"] == v["annotator"].iloc[0]
    v.loc[lazy, "answer"] = "left"
    v.loc[lazy, "winner"] = v.loc[lazy, "left_model"]
    index = build_report(report_runs, tmp_path / "out", votes=v, n_resamples=50)
    p = _parse(index)
    assert "preference_overall_excluding_flagged" in p.tables
    assert "annotators flagged by quality control" in index.read_text(encoding="utf-8")


def test_cli_report(report_runs, report_study, tmp_path, capsys):
    from k3eval.cli import main

    name, url = report_study
    args = ["report", "--runs", *[f"{k}={v}" for k, v in report_runs.items()], "--study", name, "--db", url,
            "--out", str(tmp_path / "r"), "--resamples", "50"]
    assert main(args) == 0
    assert (tmp_path / "r" / "index.html").exists() and "report:" in capsys.readouterr().out
    assert main(["report", "--runs", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    assert "run folder not found" in capsys.readouterr().err
    assert main(["report", "--runs", *map(str, report_runs.values()), "--study", "missing", "--db", url,
                 "--out", str(tmp_path / "y")]) == 2


def test_report_stage_simulates_then_reports(report_runs, tmp_path):
    """The benchmark stages: study (store developer's) then report, with simulated annotators asked for."""
    import shutil

    from k3eval.benchmark import BenchmarkContext
    from k3eval.config import BenchmarkSpec
    from k3eval.report.stage import run_stage
    from k3eval.sbs import dispose_engines, votes_frame
    from k3eval.sbs.stage import run_stage as study_stage

    runs_dir = tmp_path / "runs"
    for name, path in report_runs.items():
        shutil.copytree(path, runs_dir / name)
    spec = BenchmarkSpec.model_validate({
        "name": "stage-test", "prompts": {"set": "parti"}, "runs_dir": str(runs_dir),
        "generators": [{"generator": "tiny-sd", "name": n} for n in report_runs],
        "study": {"name": "st", "annotators": 3, "overlap": 2, "db": f"sqlite:///{tmp_path / 'v.db'}"},
        "report": {"out": str(tmp_path / "rep"), "resamples": 50, "simulate": {"annotators": 2, "seed": 3}}})
    ctx = BenchmarkContext(spec, tmp_path / "b.yaml", progress=False, root=tmp_path)
    study_stage(ctx)
    run_stage(ctx)
    index = Path(ctx.outputs["report"])
    assert index == tmp_path / "rep" / "index.html" and index.exists()
    v = votes_frame("st", ctx.outputs["study"]["db_url"])
    assert len(v) and v["simulated"].all() and v["annotator"].nunique() == 2
    assert "SIMULATED VOTES" in index.read_text(encoding="utf-8")
    dispose_engines()
    assert np.isfinite(pd.read_csv(tmp_path / "rep" / "tables" / "preference_overall.csv")["score"]).all()


def test_runs_that_are_not_the_studys_runs_are_refused_naming_both(report_runs, report_study, tmp_path, capsys):
    """Issue 14: metrics of one set of systems beside votes of another. Exit code 2, one line, nothing written."""
    import shutil

    from k3eval.cli import main

    name, url = report_study
    out = tmp_path / "r"
    base = ["--study", name, "--db", url, "--out", str(out)]
    # a study run under another name: one system, two names
    assert main(["report", "--runs", f"renamed={report_runs['k3-base']}", f"k3-flash={report_runs['k3-flash']}",
                 *base]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "'renamed'" in err and "'k3-base'" in err and str(report_runs["k3-base"]) in err
    # none of the study's runs at all: both sets named
    stranger = tmp_path / "stranger"
    shutil.copytree(report_runs["other"], stranger)
    info = json.loads((stranger / "run.json").read_text())
    info.update(run_name="stranger", identity={"generator": "tiny-sd", "seed": 9})
    (stranger / "run.json").write_text(json.dumps(info))
    assert main(["report", "--runs", f"stranger={stranger}", *base]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"stranger={stranger}" in err
    assert all(f"{n}={p}" in err for n, p in report_runs.items())
    # a study run's name given to a different run (run.json identity differs)
    assert main(["report", "--runs", f"k3-base={stranger}", f"k3-flash={report_runs['k3-flash']}", *base]) == 2
    err = capsys.readouterr().err
    assert "'k3-base'" in err and str(stranger) in err and str(report_runs["k3-base"]) in err
    assert not out.exists()


def test_missing_parts_are_said_in_the_summary_and_limitations(report_runs, tmp_path):
    """An incomplete study (votes cast / expected), runs given that are not in the study, runs without scores."""
    import shutil

    from k3eval.sbs.simulate import synthetic_votes

    runs = dict(report_runs)
    runs["unscored"] = tmp_path / "unscored"
    shutil.copytree(report_runs["other"], runs["unscored"], ignore=shutil.ignore_patterns("scores"))
    v = synthetic_votes(["k3-base", "k3-flash"], [0.0, 0.5], n_prompts=18, categories=["Animals"], n_annotators=4,
                        votes_per_prompt=6, seed=2)
    v["prompt_id"] = [f"p{int(p[1:]):02d}" for p in v["prompt_id"]]
    info = {"name": "partial", "runs": {"k3-base": str(report_runs["k3-base"]),
                                        "k3-flash": str(report_runs["k3-flash"])},
            "comparisons": [("k3-base", "k3-flash")], "questions": ["alignment", "quality"],
            "n_votes": len(v), "n_expected_votes": 4 * len(v)}
    index = build_report(runs, tmp_path / "out", votes=v, info=info, n_resamples=50)
    text = html.unescape(index.read_text(encoding="utf-8"))
    summary = text[text.index('<section id="summary">'):text.index('<section id="setup">')]
    limits = text[text.index('<section id="limitations">'):]
    for part in (summary, limits):
        assert f"Incomplete study: {len(v)} of {4 * len(v)} votes cast (25 %)" in part
        assert "not in study 'partial': other, unscored" in part
        assert "Runs without stored scores (no scores/summary.json): unscored." in part


def test_exclude_flagged_view_says_how_many_remain_and_warns_below_three(report_runs, tmp_path):
    from k3eval.sbs.simulate import synthetic_votes

    v = synthetic_votes(["k3-base", "k3-flash"], [0.0, 0.5], n_prompts=18, categories=["Animals"], n_annotators=3,
                        votes_per_prompt=9, seed=4)
    v["prompt_id"] = [f"p{int(p[1:]):02d}" for p in v["prompt_id"]]
    lazy = v["annotator"] == "sim-000"
    v.loc[lazy, "answer"] = "left"
    v.loc[lazy, "winner"] = v.loc[lazy, "left_model"]
    index = build_report(report_runs, tmp_path / "out", votes=v, n_resamples=50)
    text = html.unescape(index.read_text(encoding="utf-8"))
    assert "1 of 3 annotators flagged by quality control" in text and "keeps 2" in text
    assert "only 2 of 3 remain (fewer than 3)" in text


def test_report_files_follow_the_umask(report_runs, tmp_path):
    """A report is shared like any other output: its files get the user's umask, not the temporary file's 0600."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        index = build_report(report_runs, tmp_path / "out", n_resamples=20)
    finally:
        os.umask(old)
    for path in [index, index.parent / "report.md", *(index.parent / "tables").glob("*.csv")]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
