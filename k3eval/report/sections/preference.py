"""Human preference in detail (docs/statistics.md): the overall table, per comparison the stacked bars by category,
the per-category table (collapsed), Bradley-Terry, agreement with intervals, quality control, and the verdicts again
without flagged annotators (how many are dropped, a warning below three). Automatic scores vs people have their own
section (`metric_people`)."""

from __future__ import annotations

import pandas as pd

from k3eval.report.blocks import Column, Figure, Footnotes, Section, Table, fixed, interval, pct0, pval, shares, slug
from k3eval.report.sections import BuildContext
from k3eval.report.sections.summary import score_column

LOW_ALPHA = 0.4  # Krippendorff's alpha below this: agreement too low to read much into the preferences


def preference_table(name: str, title: str, df: pd.DataFrame, level: float, collapsed: bool = False,
                     by_category: bool = False) -> Table:
    """The preference rows (raw: every column of preference.csv) shown compactly: intervals in one cell, the
    vote-level win rate labelled descriptive, missing intervals as footnotes."""
    fn = Footnotes()
    cols = [Column("comparison", ("comparison",)), Column("question", ("question",))]
    if by_category:
        cols.append(Column("category", ("category",)))
    cols += [Column("prompts", ("n_prompts",)), Column("votes", ("n",)),
             Column("win / equal / both bad / loss", ("win_share", "equal_share", "both_bad_share", "loss_share"),
                    shares),
             score_column(fn, level),
             Column("win rate, votes (descriptive)", ("win_rate", "win_rate_lo", "win_rate_hi"), interval(2),
                    f"W / (W + L) with a Wilson {level:.0%} interval that treats votes as independent: descriptive "
                    "only, not the basis of any verdict"),
             Column("design effect", ("design_effect",), fixed(2), "1 + (votes per prompt - 1) x intra-prompt "
                    "correlation: votes / design effect = effective number of independent votes"),
             Column("p", ("p_value",), pval, "prompt-level test of score = 0.50"),
             Column("p Holm", ("p_holm",), pval), Column("p BH", ("p_bh",), pval),
             Column("verdict", ("verdict",))]
    if by_category:
        cols.append(Column("small sample", ("small_sample",)))
    families = list(dict.fromkeys(df["family"]))
    if len(families) == 1:
        title += f" (P-values adjusted across the {families[0]})"
    else:
        title += (" (P-values adjusted: overall rows across the study's comparisons x questions, category rows across "
                  "the categories of their comparison and question)")
    return Table(name, title, df.reset_index(drop=True), columns=cols, footnotes=fn.texts, collapsed=collapsed)


def bradley_terry_table(name: str, title: str, bt: pd.DataFrame, level: float) -> Table:
    cols = [Column("question", ("question",)), Column("rank", ("rank",)), Column("model", ("model",)),
            Column(f"Elo [{level:.0%} CI]", ("elo", "elo_lo", "elo_hi"), interval(0)),
            Column("strength", ("strength",), fixed(3)), Column("votes", ("n_votes",))]
    return Table(name, title, bt, columns=cols)


def _exclusion(ctx: BuildContext, s: Section, level: float) -> None:
    from k3eval.sbs.analysis import ALL, exclusion_warning

    st, ex = ctx.inputs.stats_all, ctx.inputs.stats_excl
    flagged = st.summary.get("flagged_annotators") or []
    if not flagged:
        s.p("No annotator was flagged by quality control.")
        return
    left = st.summary["n_annotators"] - len(flagged)
    text = (f"{len(flagged)} of {st.summary['n_annotators']} annotators flagged by quality control "
            f"({', '.join(flagged)}); the view without them keeps {left}.")
    s.p(text)
    ctx.limits.append(f"{len(flagged)} annotators flagged by quality control: {', '.join(flagged)} (results are shown "
                      f"with and without them; {left} remain without them).")
    if ex is None or ex.preference.empty:
        s.note("Without the flagged annotators no vote on a regular item remains.")
        return
    warning = exclusion_warning(ex)
    if warning:
        s.warn(warning)
        ctx.limits.append(warning)
    s.h3(f"Without the {len(flagged)} flagged annotators")
    s.table(preference_table("preference_overall_excluding_flagged",
                             f"Overall preference without the {len(flagged)} flagged annotators ({left} remain)",
                             ex.preference[ex.preference["category"] == ALL], level))
    if not ex.bradley_terry.empty:
        s.table(bradley_terry_table("bradley_terry_excluding_flagged",
                                    "Bradley-Terry ranking without flagged annotators", ex.bradley_terry, level))


def build(ctx: BuildContext) -> Section:
    from k3eval import stats as st_mod
    from k3eval.report import figures as fig
    from k3eval.sbs.analysis import ALL

    s = Section.named("preference")
    st = ctx.inputs.stats_all
    if st is None:
        why = "No study given (--study NAME): the report has no human preference section."
        s.note(why)
        ctx.limits.append("No human preference data: " + why)
        return s
    summ = st.summary
    if summ.get("simulated"):
        s.note("SIMULATED VOTES: the votes below come from simulated annotators (k3eval sbs simulate), not from "
               "people. They show how the report reads; they say nothing about human preference.")
    pref = st.preference
    if pref.empty:
        s.note("The study has no votes on regular items yet.")
        ctx.limits.append("The study has no votes yet.")
        return s
    level = summ["level"]
    s.p(f"{summ['n_votes']} votes by {summ['n_annotators']} annotators ({summ['n_gold_votes']} on gold items, "
        f"{summ['n_repeat_votes']} on swapped repeats; both feed quality control only). Score: tie-as-half score of "
        f"the first system with its {level:.0%} interval from the {summ['bootstrap']}; intervals are widened by "
        f"t/z for the design's degrees of freedom and not given below {summ['min_interval_prompts']} prompts. "
        f"P-values: {summ['test']}; {summ['multiplicity']}. The win rate leaves ties out and its Wilson interval "
        "treats votes as independent: it describes the votes, it decides nothing.")
    overall = pref[pref["category"] == ALL]
    s.table(preference_table("preference_overall", "Overall preference per comparison and question", overall, level))
    colours = ctx.colours()
    for (ma, mb, q), rows in pref.groupby(["model_a", "model_b", "question"], sort=False):
        s.figure(ctx.add_figure(Figure(f"preference_{slug(ma)}_vs_{slug(mb)}_{q}", f"{q}: {ma} vs {mb} by category",
                                       fig.preference_bars(rows, ma, mb, q, level, colours))))
    s.table(preference_table("preference", "Preference per category (overall row first)", pref, level,
                             collapsed=True, by_category=True))
    small = pref[(pref["category"] != ALL) & pref["small_sample"]]
    if len(small):
        ctx.limits.append(f"{len(small)} category rows have fewer than {st_mod.MIN_INTERVAL_PROMPTS} prompts: they get "
                          "no interval, and their tests have little power.")
    if not st.bradley_terry.empty:
        s.h3("Bradley-Terry ranking")
        s.p("Strengths by maximum likelihood with ties as half a win, on the Elo scale (400 points = 10:1 odds, mean "
            "1000), with intervals from the same resampling as the scores. Ranks separate only models whose "
            "intervals do not overlap.")
        s.table(bradley_terry_table("bradley_terry", "Bradley-Terry ranking", st.bradley_terry, level))
        s.figure(ctx.add_figure(Figure("bradley_terry", "Bradley-Terry ranking",
                                       fig.bradley_terry_plot(st.bradley_terry, level))))
    s.h3("Agreement")
    agree = st.agreement
    cols = [Column("comparison", ("comparison",)), Column("question", ("question",)), Column("items", ("n_items",)),
            Column("ratings", ("n_ratings",))]
    for key, label, f in (("raw_agreement", "raw", 2), ("majority_agreement", "with majority", 2),
                          ("krippendorff_alpha", "Krippendorff's alpha", 2), ("fleiss_kappa", "Fleiss' kappa", 2)):
        cols.append(Column(f"{label} [{level:.0%} CI]", (key, f"{key}_lo", f"{key}_hi"), interval(f)))
    fn = Footnotes()
    cols.append(Column("Fleiss items", ("fleiss_note",), lambda v: fn.ref(str(v))))
    s.table(Table("agreement", "Inter-annotator agreement (regular items with 2+ ratings; intervals resample items)",
                  agree, columns=cols, footnotes=fn.texts,
                  note="Raw agreement: agreeing pairs of ratings; majority: ratings equal to the majority of the "
                       "item's other ratings; Krippendorff's alpha: ordinal (B better < equal/both bad < A better); "
                       "Fleiss' kappa: the four answers, on items with the most common number of ratings."))
    low = agree[(agree["comparison"] == ALL) & (agree["krippendorff_alpha"] < LOW_ALPHA)]
    for r in low.itertuples(index=False):
        ctx.limits.append(f"Low agreement on {r.question}: Krippendorff's alpha {r.krippendorff_alpha:.2f} (below "
                          f"{LOW_ALPHA}); annotators often disagree, so preferences are noisy.")
    s.h3("Quality control")
    qc = st.qc
    qcols = [Column("annotator", ("annotator",)), Column("flags", ("flags",)), Column("votes", ("n_votes",)),
             Column("gold", ("gold_correct", "gold_n"), lambda a, b: f"{a} / {b}" if b else "–"),
             Column("repeats consistent (chance)", ("repeat_consistent", "repeat_n", "consistency_chance"),
                    lambda a, b, c: f"{a} / {b} ({pct0(c)})" if b else "–"),
             Column("left share", ("left_share",), pct0), Column("left bias p (Holm)", ("position_p_holm",), pval),
             Column("median s", ("median_seconds",), fixed(1)), Column("longest run", ("longest_run",))]
    rules = "; ".join(f"{k}: {v}" for k, v in st_mod.qc_rules().items())
    s.table(Table("qc", "Quality control per annotator (one rule set with sbs status and sbs stats)", qc,
                  columns=qcols, collapsed=len(qc) > 15, note=f"Flags (never automatic exclusions): {rules}."))
    _exclusion(ctx, s, level)
    return s


__all__ = ["LOW_ALPHA", "bradley_terry_table", "build", "preference_table"]
