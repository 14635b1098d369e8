"""Automatic scores vs people (docs/statistics.md): which automatic score predicts the study's people best, per
question (pairwise accuracy with its prompt-clustered interval, sorted, separated ranks, comparisons ordered as
people did); whether each metric orders each comparison's two systems as people did; accuracy per comparison and
category (collapsed). Tables from `k3eval.sbs.metric_agreement`, computed by the analysis from stored per-image
scores and the votes; nothing is recomputed here."""

from __future__ import annotations

from k3eval.report.blocks import Column, Section, Table, fixed, interval, pval
from k3eval.report.sections import BuildContext

TIES = ("Pairwise accuracy: among votes with a winner (people's 'equal' and 'both bad' answers name no image and are "
        "left out), the share where the image the metric scores better is the one people chose; a metric tie (equal "
        "scores) counts half, as a tie counts half in the preference scores.")


def _accuracy_column(level: float) -> Column:
    return Column(f"pairwise accuracy [{level:.0%} CI]", ("accuracy", "accuracy_lo", "accuracy_hi"), interval(3),
                  "interval from the shared rescaled bootstrap of prompts within their category, t-widened")


def build(ctx: BuildContext) -> Section:
    s = Section.named("metric_people")
    st = ctx.inputs.stats_all
    if st is None:
        s.note("No study given (--study NAME): there are no people to compare the automatic scores with.")
        return s
    if st.summary.get("simulated"):
        s.note("SIMULATED VOTES: the 'people' below are simulated annotators (k3eval sbs simulate), whose answers "
               "follow the CLIP score by construction. The tables show how the report reads; they say nothing about "
               "which metric predicts human preference.")
    acc, ranking, ordering = st.metric_agreement, st.metric_ranking, st.metric_ordering
    if acc.empty:
        s.note("No per-image scores stored (RUN/scores/per_image.parquet) for the study's images, or no vote with a "
               "winner yet: run `k3eval score` on the study's runs and rebuild the report.")
        ctx.limits.append("Automatic scores could not be compared with people (no per-image scores or no votes).")
        return s
    level = st.summary["level"]
    s.p(TIES + " Ordering: the metric's paired difference between the two systems over the prompts people voted on "
        "(images of a prompt averaged) against the side of 1/2 of the people's tie-as-half score.")
    s.h3("Which automatic score predicts people best")
    cols = [Column("question", ("question",)), Column("rank", ("rank",), help="ranks separate only metrics whose "
                                                                                "intervals do not overlap"),
            Column("metric", ("display_name",)), _accuracy_column(level), Column("votes", ("n",)),
            Column("metric ties", ("metric_ties",)),
            Column("comparisons ordered as people", ("ordered_like_people", "comparisons"),
                   lambda a, b: f"{a} / {b}"),
            Column("... with a clear verdict", ("ordered_like_clear_verdicts", "clear_verdicts"),
                   lambda a, b: f"{a} / {b}" if b else "–")]
    s.table(Table("metric_ranking", "Automatic scores by pairwise accuracy against the study's votes, per question "
                  "(all comparisons and categories)", ranking, columns=cols))
    if not ordering.empty:
        ocols = [Column("comparison", ("comparison",)), Column("question", ("question",)),
                 Column("metric", ("display_name",)),
                 Column(f"metric A - B [{level:.0%} CI]", ("metric_diff", "metric_diff_lo", "metric_diff_hi"),
                        interval(4)),
                 Column("metric p", ("metric_p",), pval, "sign-flip test over prompts of the paired difference"),
                 Column("metric prefers", ("metric_prefers",)), Column("people's score", ("people_score",), fixed(2)),
                 Column("people prefer", ("people_prefer",)), Column("people's verdict", ("people_verdict",)),
                 Column("same order", ("same_order",), lambda v: "–" if v is None or v != v else ("yes" if v else
                                                                                                  "no"))]
        s.table(Table("metric_ordering", "Does each metric order the two systems as people did?", ordering,
                      columns=ocols, collapsed=len(ordering) > 24))
    cols = [Column("metric", ("display_name",)), Column("question", ("question",)),
            Column("comparison", ("comparison",)), Column("category", ("category",)), _accuracy_column(level),
            Column("votes", ("n",)), Column("prompts", ("n_prompts",)), Column("metric ties", ("metric_ties",))]
    s.table(Table("metric_agreement", "Pairwise accuracy per metric, question, comparison and category", acc,
                  columns=cols, collapsed=True))
    return s


__all__ = ["TIES", "build"]
