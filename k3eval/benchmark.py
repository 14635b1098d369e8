"""`k3eval run BENCHMARK.yaml`: the stages of a benchmark, each reading what the previous one wrote.

A stage is a function `run_stage(ctx: BenchmarkContext) -> None` in the module named in `STAGES`; stages whose
module is not installed are not offered. `generate` lives here; the others live with their area.

The whole file is checked before any stage runs (`validate_benchmark`), so a typo in the last section fails in
seconds instead of after hours of generation.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from k3eval.config import BenchmarkSpec, ImportedRunSpec, RunSpec, load_benchmark, resolve_relative
from k3eval.errors import UserError

STAGES: dict[str, str] = {
    "generate": "k3eval.benchmark:stage_generate",
    "score": "k3eval.metrics.stage:run_stage",
    "study": "k3eval.sbs.stage:run_stage",
    "report": "k3eval.report.stage:run_stage",
}


@dataclass
class BenchmarkContext:
    """What every stage gets: the validated spec, where it came from, and the run folders it names."""

    spec: BenchmarkSpec
    source: Path
    limit: int | None = None
    force: bool = False
    progress: bool = True
    root: Path = field(default_factory=Path.cwd)
    outputs: dict[str, Any] = field(default_factory=dict)
    #: where the report goes when the command line says so (`k3eval demo --out`), over the YAML's `report.out`
    report_out: Path | None = None

    def run_dir(self, run: RunSpec) -> Path:
        return self.spec.runs_path(self.root) / run.label

    def imported_dir(self, imp: ImportedRunSpec) -> Path:
        if imp.path:
            return resolve_relative(self.source, imp.path)
        return self.spec.runs_path(self.root) / imp.name

    def run_dirs(self) -> dict[str, Path]:
        """{run name: folder} of every generated run, then every imported run whose folder exists."""
        dirs = {r.label: self.run_dir(r) for r in self.spec.generators}
        for imp in self.spec.imported or []:
            folder = self.imported_dir(imp)
            if (folder / "run.json").exists():
                dirs[imp.name] = folder
        return dirs

    def prompts(self):
        from k3eval.prompts import load_prompt_set

        ps = self.spec.prompts
        spec = ps.set
        if ":" not in spec and not Path(spec).exists() and (self.source.parent / spec).exists():
            spec = str(self.source.parent / spec)
        return load_prompt_set(spec).select(categories=ps.categories, per_category=ps.per_category,
                                            limit=self.limit or ps.limit, seed=ps.selection_seed)

    def extra_catalogs(self) -> list[Path] | None:
        return [resolve_relative(self.source, self.spec.generators_file)] if self.spec.generators_file else None

    def run_names(self) -> list[str]:
        """Every run the benchmark names: generated runs, then imported ones (whether their folder exists yet)."""
        return [r.label for r in self.spec.generators] + [imp.name for imp in self.spec.imported or []]


def available_stages() -> dict[str, Any]:
    out = {}
    for name, target in STAGES.items():
        module, _, attr = target.partition(":")
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and module.startswith(e.name):
                continue
            raise
        out[name] = getattr(mod, attr)
    return out


def validate_benchmark(ctx: BenchmarkContext, stages: list[str]) -> None:
    """Check the whole benchmark before any stage runs: the prompt selection, every generator's parameters, dtype
    and device, the imported runs, and the metrics, study and report sections (of the stages installed), with the
    input files they name (reference, weights, mappings). Raises UserError as `FILE: section.key: problem`. Devices
    must be usable, and output folders writable, only for the stages in `stages` (a benchmark written for a GPU
    machine can still make its report on a laptop)."""
    from k3eval.generate import check_generator
    from k3eval.generators.registry import get_entry
    from k3eval.utils import check_device

    src = ctx.source
    try:
        ctx.prompts()
    except UserError as e:
        raise UserError(f"{src}: prompts: {e}") from None
    for i, run in enumerate(ctx.spec.generators):
        try:
            device = check_device(run.device or ctx.spec.device, "device", available="generate" in stages)
            gen = get_entry(run.generator, ctx.extra_catalogs()).create(run.params, device=device, dtype=run.dtype)
            check_generator(gen)
        except UserError as e:
            raise UserError(f"{src}: generators.{i} ({run.label}): {e}") from None
    for i, imp in enumerate(ctx.spec.imported or []):
        images = resolve_relative(src, imp.images) if imp.images else None
        if images is not None and images.is_dir() and not resolve_relative(src, imp.mapping or "").is_file():
            raise UserError(f"{src}: imported.{i}.mapping: file not found: {imp.mapping}")
    available = available_stages()
    for name, check in (("score", _check_metrics), ("study", _check_study), ("report", _check_report)):
        if name in available:
            check(ctx, name in stages)


def _check_metrics(ctx: BenchmarkContext, needed: bool) -> None:
    """The metrics section, checked whole without loading anything by the metrics area's `score_options`
    (metric names and settings, protocol, the reference's form, and its existence when scoring now), then its
    device."""
    from k3eval.metrics import stage as metrics_stage
    from k3eval.utils import check_device

    device = metrics_stage.score_options(ctx, stage_runs_now=needed).device
    try:
        check_device(device, "device", available=needed)
    except UserError as e:
        raise UserError(f"{ctx.source}: metrics: {e}") from None


def _check_study(ctx: BenchmarkContext, needed: bool) -> None:
    from k3eval.config import validate_section
    from k3eval.sbs.design import annotator_names, check_questions
    from k3eval.sbs.stage import StudySection

    if ctx.spec.study is None:
        return
    src = ctx.source
    sec: StudySection = validate_section(str(src), "study", StudySection, ctx.spec.study)
    try:
        check_questions(tuple(sec.questions))
        annotators = annotator_names(sec.annotators)
    except UserError as e:
        raise UserError(f"{src}: study: {e}") from None
    if sec.overlap > len(annotators):
        raise UserError(f"{src}: study.overlap: each item needs {sec.overlap} distinct annotators but the study has "
                        f"{len(annotators)}")
    if sec.reference is not None:
        if sec.reference not in ctx.run_names():
            raise UserError(f"{src}: study.reference: no run named '{sec.reference}'; runs: "
                            f"{', '.join(ctx.run_names())}")
        if ctx.spec.comparisons:
            raise UserError(f"{src}: study.reference: give either study.reference or comparisons, not both")
    if sec.simulate is not None:
        from k3eval.report.stage import SimulateSection

        validate_section(str(src), "study.simulate", SimulateSection, sec.simulate)
    if needed and sec.links_file:
        from k3eval.utils import check_output_dir

        links = Path(sec.links_file)
        try:
            check_output_dir((links if links.is_absolute() else ctx.root / links).parent, "study.links_file")
        except UserError as e:
            raise UserError(f"{src}: {e}") from None


def _check_report(ctx: BenchmarkContext, needed: bool) -> None:
    from k3eval.config import validate_section
    from k3eval.report.stage import ReportSection

    sec = validate_section(str(ctx.source), "report", ReportSection, ctx.spec.report)
    if needed:
        from k3eval.utils import check_output_dir

        out = Path(ctx.report_out or sec.out or Path("reports") / ctx.spec.name)
        try:
            check_output_dir(out if out.is_absolute() else ctx.root / out, "report.out")
        except UserError as e:
            raise UserError(f"{ctx.source}: {e}") from None


def stage_generate(ctx: BenchmarkContext) -> None:
    """Generate every run of the benchmark into runs/<benchmark>/<run name>/ (resumable), then import the imported
    runs whose images are given. Under torchrun every rank takes its share of each run (see `generate_run`)."""
    from k3eval.generate import generate_run, parse_shard, rank_device
    from k3eval.generators.registry import get_entry

    prompts = ctx.prompts()
    shard = parse_shard(None)
    for run in ctx.spec.generators:
        entry = get_entry(run.generator, ctx.extra_catalogs())
        device = rank_device(run.device or ctx.spec.device)
        gen = entry.create(run.params, device=device, dtype=run.dtype)
        beautifier = None
        if run.beautify:
            from k3eval.generators.beautify import load_beautifier

            beautifier = load_beautifier(run.beautify, device=device)
        summary = generate_run(gen, prompts, ctx.run_dir(run), samples=ctx.spec.samples, seed=ctx.spec.seed,
                               batch_size=run.batch_size or ctx.spec.batch_size, force=ctx.force, shard=shard,
                               progress=ctx.progress, extra_info={"benchmark": ctx.spec.name, "run_name": run.label},
                               beautifier=beautifier)
        gen.close()
        bad = {k: v for k, v in summary.run_counts.items() if k != "ok"}
        print(f"[generate] {run.label}: {summary.generated} new, {summary.done_before} already done -> "
              f"{summary.run_dir}" + (f"; bad outputs {bad} (rerun `k3eval generate ... --retry-bad`)" if bad else ""))
    if shard[0] == 0:
        for imp in ctx.spec.imported or []:
            import_run(ctx, imp, prompts)


def import_run(ctx: BenchmarkContext, imp: ImportedRunSpec, prompts) -> None:
    """Import one imported run if its images are given and its folder does not exist yet; say what to do if not."""
    folder = ctx.imported_dir(imp)
    if (folder / "run.json").exists() and not ctx.force:
        print(f"[generate] {imp.name}: imported run present at {folder}")
        return
    images = resolve_relative(ctx.source, imp.images) if imp.images else None
    if images is None or not images.is_dir():
        print(f"[generate] {imp.name}: no images yet ({imp.images or 'no images: folder given'}); import them with "
              f"`k3eval import IMAGES_DIR --mapping MAPPING.csv --prompts {ctx.spec.prompts.set} --name "
              f"{imp.system or imp.name} --out {folder}` (same prompt selection); later stages skip this run")
        return
    from k3eval.importer import import_images

    report = import_images(images, resolve_relative(ctx.source, imp.mapping or ""), prompts, folder,
                           name=imp.system or imp.name, version=imp.version, date=imp.date, force=ctx.force,
                           allow_missing=imp.allow_missing, allow_odd_sizes=imp.allow_odd_sizes)
    print("[generate] " + report.lines()[0])


def run_benchmark(path: str | Path, stages: list[str] | None = None, limit: int | None = None, force: bool = False,
                  progress: bool = True, root: Path | None = None, report_out: Path | None = None) -> BenchmarkContext:
    source = Path(path)
    spec = load_benchmark(source)
    available = available_stages()
    chosen = stages or list(available)
    for s in chosen:
        if s not in available:
            from k3eval.errors import did_you_mean

            raise UserError(f"unknown stage '{s}'{did_you_mean(s, available)}")
    ctx = BenchmarkContext(spec, source, limit=limit, force=force, progress=progress, root=root or Path.cwd(),
                           report_out=report_out)
    validate_benchmark(ctx, chosen)
    for s in [s for s in available if s in chosen]:
        available[s](ctx)
    return ctx
