"""Benchmark stage `report`: the comparison report of the benchmark's runs, scores and study.

```yaml
report:
  out: reports/smoke          # default: reports/<benchmark name>
  resamples: 1000             # bootstrap resamples of every interval
  seed: 0                     # default: the benchmark seed
  examples: 4                 # examples of each kind per comparison
  two_level: false            # resample annotators as well as prompts (studies with few annotators)
  title: null                 # default: "k3eval report: <benchmark>"
  simulate:                   # only for demos: answer the study with simulated annotators first
    annotators: 3             # default: all of the study's annotators
    seed: 0
```
The study is the one the `study` stage made (`ctx.outputs["study"]`), or, when only this stage runs, the one the
benchmark's `study:` section names. `simulate` may also be given inside the `study:` section. Simulated votes are
marked in the store and announced in the report's first lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from k3eval.config import Strict, validate_section


class SimulateSection(Strict):
    annotators: int | None = Field(default=None, ge=1)
    seed: int = 0


class ReportSection(Strict):
    out: str | None = None
    resamples: int = Field(default=1000, ge=1)
    seed: int | None = None
    examples: int = Field(default=4, ge=0)
    two_level: bool = False
    title: str | None = None
    simulate: SimulateSection | None = None


def _study_of(ctx) -> tuple[str | None, str | None, dict[str, Any] | None]:
    """(study name, db url, raw simulate settings from the study section) or Nones when the benchmark has none."""
    raw = ctx.spec.study if isinstance(ctx.spec.study, dict) else None
    sim = raw.get("simulate") if raw else None
    out = ctx.outputs.get("study")
    if isinstance(out, dict) and out.get("name"):
        return out["name"], out.get("db_url"), sim
    if isinstance(out, str):
        return out, None, sim
    if raw is None:
        return None, None, None
    from k3eval.sbs import default_db_url
    from k3eval.sbs.stage import rooted_db_url

    db = rooted_db_url(raw["db"], ctx.root) if raw.get("db") else default_db_url()
    return raw.get("name") or ctx.spec.name, db, sim


def run_stage(ctx) -> None:
    """Build the report into `report.out`, simulating votes first if asked; sets ctx.outputs['report']."""
    from k3eval.report.build import build_report

    sec: ReportSection = validate_section(str(ctx.source), "report", ReportSection, ctx.spec.report)
    name, db, study_sim = _study_of(ctx)
    sim = sec.simulate
    if sim is None and study_sim is not None:
        sim = validate_section(str(ctx.source), "study.simulate", SimulateSection, study_sim)
    study = None
    if name is not None:
        from k3eval.sbs import StoreError, study_info

        try:
            study_info(name, db)
            study = name
        except StoreError as e:
            print(f"[report] study {name!r} not readable ({e}); the report has no human preference section")
    if study is None and sim is not None:
        print("[report] simulate: asked for, but there is no study to answer (no study: section or study missing)")
    if study is not None and sim is not None:
        from k3eval.sbs.simulate import simulate_study

        res = simulate_study(study, annotators=sim.annotators, seed=sim.seed, db_url=db, progress=ctx.progress)
        print(f"[report] simulated annotators: {res['votes_recorded']} new votes in study {study!r} "
              f"(marked simulated; rule: {res['rule']})")
    out = Path(ctx.report_out or sec.out or Path("reports") / ctx.spec.name)
    if not out.is_absolute():
        out = ctx.root / out
    index = build_report(ctx.run_dirs(), out, study=study, db_url=db, n_resamples=sec.resamples,
                         seed=ctx.spec.seed if sec.seed is None else sec.seed, examples=sec.examples,
                         title=sec.title, two_level=sec.two_level)
    ctx.outputs["report"] = str(index)
    print(f"[report] {index}")


__all__ = ["ReportSection", "SimulateSection", "run_stage"]
