"""Automatic metrics as stored by `k3eval score` (RUN/scores/summary.json), never recomputed: one table per metric
(value with interval, n; protocol fingerprints and warnings as footnotes, each printed once), a bar figure, and
the per-category values with their too_small flags."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pandas as pd

from k3eval.report.blocks import Column, Figure, Footnotes, Section, Table, fmt_value, value_interval
from k3eval.report.sections import BuildContext


def fingerprint(protocol: dict[str, Any] | None) -> str:
    if not protocol:
        return "–"
    digest = hashlib.sha256(json.dumps(protocol, sort_keys=True, default=str).encode()).hexdigest()[:10]
    keys = [f"{k}={protocol[k]}" for k in ("extractor", "model", "pretrained", "resize", "dtype", "n")
            if k in protocol]
    return f"{digest} ({', '.join(keys)})" if keys else digest


def build(ctx: BuildContext) -> Section:
    from k3eval.report import figures as fig

    s = Section.named("metrics")
    runs = ctx.inputs.runs
    scored = [r for r in runs if r.scores and r.scores.get("metrics")]
    missing = [r.name for r in runs if r not in scored]
    if not scored:
        s.note("No stored scores: none of the runs has scores/summary.json. Run `k3eval score RUN_DIR` (or the "
               "benchmark's score stage) and rebuild the report.")
        ctx.limits.append("No automatic metrics: the runs have not been scored.")
        return s
    if missing:
        s.note(f"Not scored (no scores/summary.json): {', '.join(missing)}.")
    names: list[str] = []
    for r in scored:
        names += [m for m in r.scores["metrics"] if m not in names]
    for metric in names:
        rows = []
        cat_rows: dict[str, dict[str, Any]] = {}
        meta: dict[str, Any] = {}
        for r in scored:
            m = r.scores["metrics"].get(metric)
            if m is None:
                continue
            meta = meta or m
            ci = m.get("ci") or [None, None]
            rows.append({"run": r.name, "value": m.get("value"), "ci_lo": ci[0], "ci_hi": ci[1],
                         "ci_method": m.get("ci_method") or "–", "n": m.get("n"),
                         "protocol": fingerprint(m.get("protocol")),
                         "warnings": "; ".join(m.get("warnings") or []) or "–"})
            for cat, c in (m.get("per_category") or {}).items():
                row = cat_rows.setdefault(cat, {"category": cat})
                row[f"{r.name}"] = c.get("value")
                row[f"{r.name} n"] = c.get("n")
                row[f"{r.name} flag"] = c.get("flag") or ""
        if not rows:
            continue
        df = pd.DataFrame(rows)
        display = meta.get("display_name", metric)
        unit = meta.get("unit", "")
        better = "higher" if meta.get("higher_is_better", True) else "lower"
        fn = Footnotes()
        cols = [Column("run", ("run",)), Column("value [interval]", ("value", "ci_lo", "ci_hi"), value_interval),
                Column("interval", ("ci_method",), lambda v, f=fn: "–" if v == "–" else f.ref(f"interval: {v}")),
                Column("n", ("n",)),
                Column("protocol", ("protocol",), lambda v, f=fn: f.ref(f"protocol fingerprint {v}")),
                Column("warnings", ("warnings",),
                       lambda v, f=fn: "–" if v == "–" else " ".join(f.ref(w) for w in str(v).split("; ")))]
        s.h3(display)
        s.table(Table(f"metric_{metric}", f"{display} ({better} is better{', ' + unit if unit else ''})", df,
                      columns=cols, footnotes=fn.texts))
        if df["protocol"].nunique() > 1:
            s.note(f"{display}: the runs were scored with different protocols (fingerprints differ), so their values "
                   "are not directly comparable.")
            ctx.limits.append(f"{display} was computed with different protocols across runs.")
        # one Limitations line per distinct warning, naming the runs it applies to (often every run)
        by_warning: dict[str, list[str]] = {}
        for r in scored:
            for w in (r.scores["metrics"].get(metric) or {}).get("warnings") or []:
                by_warning.setdefault(w, []).append(r.name)
        for w, names_w in by_warning.items():
            who = "all runs" if len(names_w) == len(rows) else ", ".join(names_w)
            ctx.limits.append(f"{display} ({who}): {w}")
        if df["value"].notna().any():
            s.figure(ctx.add_figure(Figure(f"metric_{metric}", f"{display} per run",
                                           fig.metric_bars(df, display, unit, meta.get("higher_is_better", True)))))
        if cat_rows:
            cdf = pd.DataFrame(list(cat_rows.values()))
            flagged = (cdf[[c for c in cdf.columns if c.endswith(" flag")]] != "").to_numpy().any(axis=1)
            ccols = [Column("category", ("category",))]
            for r in scored:
                if f"{r.name} n" in cdf:
                    ccols.append(Column(f"{r.name} (n)", (r.name, f"{r.name} n", f"{r.name} flag"),
                                        lambda v, n, f: f"{fmt_value(v)} ({fmt_value(n)})" + (f" {f}" if f else "")))
            s.table(Table(f"metric_{metric}_by_category", f"{display} per category", cdf, columns=ccols,
                          collapsed=len(cdf) > 15,
                          note="too_small: the category has too few images for a stable value." if flagged.any()
                          else ""))
            if flagged.any():
                ctx.limits.append(f"{display}: {int(flagged.sum())} categories are too small for a stable value.")
    return s


__all__ = ["build", "fingerprint"]
