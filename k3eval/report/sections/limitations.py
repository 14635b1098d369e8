"""Limitations, written from the data: simulated votes, random test weights, imported images, differing prompt
selections, missing or bad images, small prompt samples, and every line the other sections added (metric warnings,
too-small categories, differing protocols, small category rows, low agreement, flagged annotators, missing parts)."""

from __future__ import annotations

from k3eval.report.blocks import Section
from k3eval.report.sections import BuildContext


def build(ctx: BuildContext) -> Section:
    s = Section.named("limitations")
    runs = ctx.inputs.runs
    out = []
    if ctx.inputs.simulated:
        out.append("The votes are simulated (k3eval sbs simulate): human preference sections illustrate the method "
                   "only.")
    rand = [r.name for r in runs if ((r.info.get("generator") or {}).get("weights") or {}).get("random_weights")]
    if rand:
        out.append(f"Runs with random (untrained) offline weights: {', '.join(rand)}. Their images and numbers test "
                   "the pipeline; they say nothing about the real models.")
    imported = [r.name for r in runs if r.info.get("imported")]
    if imported:
        out.append(f"Imported images of unknown or unverified generation settings: {', '.join(imported)}.")
    hashes = {str((r.info.get("prompt_set") or {}).get("hash")) for r in runs}
    if len(hashes) > 1:
        out.append("The runs used different prompt selections (prompt-set hashes differ): per-prompt comparisons "
                   "cover only the shared prompts.")
    for r in runs:
        t = r.info.get("totals") or {}
        bad = {k: v for k, v in (t.get("status") or {}).items() if k != "ok"}
        if t.get("missing") or bad:
            out.append(f"{r.name}: {t.get('missing', 0)} images missing, non-ok outputs {bad or 'none'}; they are "
                       "left out of metrics and studies.")
    n_prompts = {(r.info.get("prompt_set") or {}).get("n_prompts") for r in runs}
    small = [n for n in n_prompts if isinstance(n, int) and n < 100]
    if small:
        out.append(f"Small prompt sample ({min(small)} prompts): distribution metrics such as FID are biased and "
                   "unstable at this size; intervals are wide.")
    out += ctx.limits
    s.items(list(dict.fromkeys(out)) or ["None found in the stored data."])
    return s


__all__ = ["build"]
