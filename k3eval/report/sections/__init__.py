"""One module per report section (summary first). Each has `build(ctx) -> Section`; a section reads the gathered
inputs (`ctx.inputs`), may add figures (`ctx.figures`) and lines for the Limitations section (`ctx.limits`), and
knows nothing of the other sections."""

from __future__ import annotations

from dataclasses import dataclass, field

from k3eval.report.blocks import Figure
from k3eval.report.inputs import ReportInputs

# system colours (Okabe-Ito, readable by colour-blind readers), given to models in the study's order
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#7F7F7F"]


@dataclass
class BuildContext:
    inputs: ReportInputs
    n_examples: int = 4
    figures: list[Figure] = field(default_factory=list)
    limits: list[str] = field(default_factory=list)

    def add_figure(self, f: Figure) -> Figure:
        self.figures.append(f)
        return f

    def colours(self) -> dict[str, str]:
        """One colour per system: study models in the study's order, then runs."""
        names: list[str] = []
        st = self.inputs.stats_all
        if st is not None:
            names += [m for c in st.preference.drop_duplicates("comparison")[["model_a", "model_b"]].itertuples(
                index=False) for m in c]
        names += [r.name for r in self.inputs.runs]
        names = list(dict.fromkeys(names))
        return {m: PALETTE[k % len(PALETTE)] for k, m in enumerate(names)}


__all__ = ["PALETTE", "BuildContext"]
