"""Summary: the answer first. One row per comparison and question (score with interval, win / tie / both bad / loss,
prompts, votes, adjusted P-value, verdict), one compact figure, what is missing, and the headline metrics."""

from __future__ import annotations

from typing import Any

import pandas as pd

from k3eval.report.blocks import (
    Column,
    Figure,
    Footnotes,
    Section,
    Table,
    interval,
    is_missing,
    pval,
    shares,
    value_interval,
)
from k3eval.report.sections import BuildContext


def score_column(fn: Footnotes, level: float, header: str | None = None) -> Column:
    """Score with its interval in one cell; a missing interval gets a footnote saying why."""
    show = interval(2)

    def fmt(v: Any, lo: Any, hi: Any, note: Any) -> str:
        ref = fn.ref(str(note)) if not is_missing(note) and str(note) else ""
        return show(v, lo, hi) + (f" {ref}" if ref else "")

    return Column(header or f"score [{level:.0%} CI]", ("score", "score_lo", "score_hi", "score_ci_note"), fmt,
                  "tie-as-half score of the first system: (wins + (equal + both bad) / 2) / votes")


def missing_parts(ctx: BuildContext, s: Section) -> None:
    """Notes (and Limitations) for what the report lacks: votes not yet cast, runs outside the study, runs without
    scores."""
    inp = ctx.inputs
    info = inp.info
    expected = info.get("n_expected_votes")
    if inp.votes is not None and expected:
        cast = int(info.get("n_votes", len(inp.votes)))
        if cast < expected:
            text = (f"Incomplete study: {cast} of {expected} votes cast ({100 * cast / expected:.0f} %); every "
                    "number below may still move.")
            s.warn(text)
            ctx.limits.append(text)
    if inp.extra_runs:
        text = (f"Runs given with --runs that are not in study {info.get('name')!r}: {', '.join(inp.extra_runs)} "
                "(automatic metrics and speed only, no votes).")
        s.note(text)
        ctx.limits.append(text)
    if inp.absent_runs:
        text = (f"Runs of study {info.get('name')!r} not given with --runs: {', '.join(inp.absent_runs)} (their votes "
                "are shown; their metrics and speed are not).")
        s.note(text)
        ctx.limits.append(text)
    if inp.unscored:
        text = f"Runs without stored scores (no scores/summary.json): {', '.join(inp.unscored)}."
        s.note(text)
        ctx.limits.append(text)


#: metrics per summary table: one table of every metric stops fitting a 1440 px window at about 7 metrics with
#: intervals, so more metrics are split over several tables (each with the run column)
METRICS_PER_TABLE = 5


def metric_overview(ctx: BuildContext) -> list[Table]:
    """Run x metric, the stored value with its stored interval (never recomputed), in tables of at most
    METRICS_PER_TABLE metrics, in the order the runs stored them; [] when no run has scores."""
    runs = [r for r in ctx.inputs.runs if r.scores and r.scores.get("metrics")]
    if not runs:
        return []
    names: list[str] = []
    meta: dict[str, dict[str, Any]] = {}
    for r in runs:
        for m, d in r.scores["metrics"].items():
            if m not in names:
                names.append(m)
            meta.setdefault(m, d)
    rows = []
    for r in runs:
        row: dict[str, Any] = {"run": r.name}
        for m in names:
            d = r.scores["metrics"].get(m) or {}
            ci = d.get("ci") or [None, None]
            row.update({m: d.get("value"), f"{m}_lo": ci[0], f"{m}_hi": ci[1]})
        rows.append(row)

    chunks = [names[i:i + METRICS_PER_TABLE] for i in range(0, len(names), METRICS_PER_TABLE)]
    tables = []
    for k, chunk in enumerate(chunks, 1):
        cols = [Column("run", ("run",))]
        for m in chunk:
            better = "↑" if meta[m].get("higher_is_better", True) else "↓"
            cols.append(Column(f"{meta[m].get('display_name', m)} {better}", (m, f"{m}_lo", f"{m}_hi"),
                               value_interval, "higher is better" if better == "↑" else "lower is better"))
        part = f" ({k} of {len(chunks)})" if len(chunks) > 1 else ""
        tables.append(Table("summary_metrics" + (f"_{k}" if k > 1 else ""),
                            f"Automatic metrics per run as stored{part} (↑ higher is better, ↓ lower is better; "
                            "details in section 2)", pd.DataFrame(rows), columns=cols))
    return tables


def build(ctx: BuildContext) -> Section:
    from k3eval.report import figures as fig
    from k3eval.sbs.analysis import ALL

    s = Section.named("summary")
    inp = ctx.inputs
    missing_parts(ctx, s)
    st = inp.stats_all
    pref = st.preference if st is not None else None
    if pref is None or pref.empty:
        s.p("No human preference verdicts: " + ("no study was given (--study NAME)." if st is None else
                                                "the study has no votes on regular items yet."))
    else:
        summ = st.summary
        level = summ["level"]
        overall = pref[pref["category"] == ALL].reset_index(drop=True)
        fam = overall["family"].iloc[0]
        s.p(f"Score: the first system's share of votes, ties (equal, both bad) counted as half; above 0.50 favours "
            f"it. Intervals ({level:.0%}) and P-values take the prompt as the unit; adjusted p is Holm-adjusted "
            f"across the {fam}, and a verdict names a system only where it is below {summ['alpha']:g}. How: "
            "section 4 and docs/statistics.md.")
        fn = Footnotes()
        cols = [Column("comparison", ("comparison",)), Column("question", ("question",)), score_column(fn, level),
                Column("win / tie / both bad / loss", ("win_share", "equal_share", "both_bad_share", "loss_share"),
                       shares, "shares of votes: first system better / equal / both bad / second system better"),
                Column("prompts", ("n_prompts",)), Column("votes", ("n",)),
                Column("adjusted p", ("p_holm",), pval, f"Holm-adjusted across the {fam}"),
                Column("verdict", ("verdict",))]
        keep = ["comparison", "model_a", "model_b", "question", "score", "score_lo", "score_hi", "score_ci_note",
                "win_share", "equal_share", "both_bad_share", "loss_share", "n_prompts", "n", "p_value", "p_holm",
                "family", "verdict"]
        s.table(Table("summary", f"Verdicts per comparison and question (adjusted p: Holm across the {fam})",
                      overall[keep], columns=cols, footnotes=fn.texts))
        s.figure(ctx.add_figure(Figure("summary", "Side-by-side preference per comparison and question",
                                       fig.summary_bars(overall, ctx.colours(), level))))
        flagged = summ.get("flagged_annotators") or []
        if flagged:
            left = summ["n_annotators"] - len(flagged)
            s.p(f"Quality control flagged {len(flagged)} of {summ['n_annotators']} annotators; section 4 repeats the "
                f"verdicts without them ({left} annotators remain).")
            if left < 3:
                s.warn(f"Without the flagged annotators only {left} remain (fewer than 3): that view rests on too "
                       "few people.")
    for table in metric_overview(ctx):
        s.table(table)
    return s


__all__ = ["build", "metric_overview", "missing_parts", "score_column"]
