"""The comparison report: index.html (self-contained), report.md, tables/*.csv and figures/*.png from stored runs,
scores and votes. It reads what earlier stages stored and never recomputes a metric; preference statistics are
computed from the votes by `k3eval.sbs.analysis` (they are statistics of the stored votes, not metrics).

Sections live in `k3eval.report.sections` (one module each, summary first); inputs are read and checked by
`k3eval.report.inputs` before anything is written; `k3eval.report.render` writes HTML and Markdown from the same
tables, so CSV, HTML and Markdown always agree. Parts that are missing (no scores, no study) become a note in their
section, never an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from k3eval.errors import UserError
from k3eval.report.blocks import SECTIONS, Table, fmt_value
from k3eval.report.inputs import resolve_runs
from k3eval.report.render import render_html, render_markdown
from k3eval.utils import atomic_write_bytes, now_iso


def build_report(runs: dict[str, str | Path] | list[str | Path], out_dir: str | Path, *, study: str | None = None,
                 db_url: str | None = None, votes: pd.DataFrame | None = None, info: dict[str, Any] | None = None,
                 n_resamples: int = 1000, seed: int = 0, examples: int = 4, title: str | None = None,
                 two_level: bool = False) -> Path:
    """Write the report into out_dir (index.html, report.md, tables/*.csv, figures/*.png); returns index.html.

    runs: {name: folder} or folders. study/db_url: read votes and facts from the vote store; or pass a votes frame
    (`votes`, with optional `info` like `k3eval.sbs.study_info`). n_resamples, seed: of every bootstrap and
    permutation test; two_level: resample annotators as well as prompts. examples: how many examples of each kind
    per comparison. Runs that are not the study's runs are refused before anything is written.
    """
    from k3eval.report.inputs import gather
    from k3eval.report.sections import (
        BuildContext,
        limitations,
        metric_people,
        metrics,
        preference,
        setup,
        speed,
        summary,
    )
    from k3eval.report.sections import examples as sec_examples

    if examples < 0:
        raise UserError(f"examples: expected 0 or more, got {examples}")
    inputs = gather(runs, study=study, db_url=db_url, votes=votes, info=info, n_resamples=n_resamples, seed=seed,
                    two_level=two_level)
    ctx = BuildContext(inputs, n_examples=examples)
    built = {sid: mod.build(ctx) for sid, mod in (("summary", summary), ("setup", setup), ("metrics", metrics),
                                                  ("speed", speed), ("preference", preference),
                                                  ("metric_people", metric_people), ("examples", sec_examples))}
    built["limitations"] = limitations.build(ctx)  # last: it gathers what the others found
    sections = [built[sid] for sid, _ in SECTIONS]

    out = Path(out_dir)
    run_data, named, st_info = inputs.runs, inputs.named, inputs.info
    bench = next((r.info.get("benchmark") for r in run_data if r.info.get("benchmark")), None)
    title = title or f"k3eval report: {bench or ', '.join(named)}"
    subtitle = (f"Built {now_iso()} by k3eval from {len(run_data)} runs"
                + (f" and study {st_info.get('name')!r}" if st_info.get("name") else "")
                + ". Numbers are read from the stored runs, scores and votes; no metric is recomputed.")
    banner = None
    if inputs.simulated:
        banner = ("SIMULATED VOTES: every human-preference number in this report comes from simulated annotators "
                  "(k3eval sbs simulate), not from people.")
    # examples' images for the Markdown version
    k = 0
    for s in sections:
        for kind, b in s.blocks:
            if kind != "examples":
                continue
            for e in b:
                for side, data in (("a", e.thumb_a), ("b", e.thumb_b)):
                    if data:
                        rel = f"examples/{k:03d}_{side}.jpg"
                        atomic_write_bytes(out / rel, data)
                        setattr(e, f"file_{side}", rel)
                k += 1
    for s in sections:
        for kind, b in s.blocks:
            if kind == "table":
                atomic_write_bytes(out / "tables" / f"{b.name}.csv", b.frame.to_csv(index=False).encode())
    for f in ctx.figures:
        atomic_write_bytes(out / "figures" / f"{f.name}.png", f.png)
    atomic_write_bytes(out / "report.md", render_markdown(title, subtitle, banner, sections).encode())
    index = out / "index.html"
    atomic_write_bytes(index, render_html(title, subtitle, banner, sections).encode())
    return index


__all__ = ["SECTIONS", "Table", "build_report", "fmt_value", "render_html", "render_markdown", "resolve_runs"]
