"""Benchmark stage `score`: scores every run of a benchmark with the options of its `metrics:` section.

```yaml
metrics:
  metrics: [clip_score, fid, kid, is, cmmd]   # default: clip_score, is (+ fid, kid, cmmd with a reference)
  protocol: clean                              # or tf
  inception_weights: null                      # a path, or 'synthetic' (seeded test weights); null: torch hub cache
  clip: {backend: open_clip, model: ViT-L-14, pretrained: openai}
  cmmd: {model: ViT-L-14-336, pretrained: openai}
  reference: path/to/ref.npz                   # or an images folder, run:<run name>, or synthetic:N (demo only)
  settings: {}                                 # per metric, its own options: {geneval: {detector: ...}}
  reference_protocol: null                     # declare the protocol of an external .npz
  bootstrap: 1000
  set_bootstrap: 0
  min_category: 50
  seed: 0
```
`synthetic:N` makes N seeded structured 64x64 images as the reference: it exercises FID/KID/CMMD end to end
without any real images, and the numbers mean nothing (every summary says so).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from k3eval.config import Strict, resolve_relative, validate_section
from k3eval.errors import UserError

if TYPE_CHECKING:
    from k3eval.metrics.score import ScoreOptions


class ClipSection(Strict):
    backend: str = "open_clip"
    model: str = "ViT-L-14"
    pretrained: str = "openai"


class CmmdSection(Strict):
    model: str = "ViT-L-14-336"
    pretrained: str = "openai"


class MetricsSection(Strict):
    metrics: list[str] | None = None
    protocol: str = "clean"
    inception_weights: str | None = None
    clip: ClipSection = Field(default_factory=ClipSection)
    cmmd: CmmdSection = Field(default_factory=CmmdSection)
    reference: str | None = None
    reference_protocol: str | None = None
    allow_protocol_mismatch: bool = False
    bootstrap: int = Field(default=1000, ge=0)
    set_bootstrap: int = Field(default=0, ge=0)
    min_category: int = Field(default=50, ge=1)
    seed: int = 0
    kid_subsets: int = Field(default=100, ge=1)
    kid_subset_size: int = Field(default=1000, ge=2)
    is_splits: int = Field(default=10, ge=1)
    skip_bad: bool = False
    device: str | None = None
    batch_size: int = Field(default=32, ge=1)
    settings: dict[str, dict[str, Any]] = Field(default_factory=dict)


def resolve_reference(spec: str | None, ctx) -> str | None:
    """The reference of the section as `score` takes it: a path (relative to the benchmark file), a run folder of
    this benchmark for `run:NAME`, or `synthetic:N` as it is (checked here)."""
    from k3eval.metrics.options import parse_synthetic

    if spec is None:
        return None
    if parse_synthetic(spec, f"{ctx.source}: metrics.reference") is not None:
        return spec
    if spec.startswith("run:"):
        name = spec[4:]
        runs = ctx.run_dirs()
        if name not in runs:
            from k3eval.errors import did_you_mean

            raise UserError(f"{ctx.source}: metrics.reference: no run named '{name}'{did_you_mean(name, runs)}")
        return str(runs[name])
    return str(resolve_relative(ctx.source, spec))


def score_options(ctx, stage_runs_now: bool = True) -> ScoreOptions:
    """The benchmark's `metrics:` section as score options, checked whole (names, settings, reference form) without
    loading anything: a mistake there is found before any stage runs. A reference file must exist only when the
    score stage runs now (a generate-only run may precede `k3eval reference build`)."""
    from k3eval.metrics.score import ScoreOptions, check_options

    sec: MetricsSection = validate_section(str(ctx.source), "metrics", MetricsSection, ctx.spec.metrics)
    weights = sec.inception_weights
    if weights and weights != "synthetic":
        weights = str(resolve_relative(ctx.source, weights))
    opts = ScoreOptions(
        metrics=sec.metrics, reference=resolve_reference(sec.reference, ctx), reference_protocol=sec.reference_protocol,
        protocol=sec.protocol, inception_weights=weights, clip_backend=sec.clip.backend, clip_model=sec.clip.model,
        clip_pretrained=sec.clip.pretrained, cmmd_model=sec.cmmd.model, cmmd_pretrained=sec.cmmd.pretrained,
        bootstrap=sec.bootstrap, set_bootstrap=sec.set_bootstrap, seed=sec.seed, kid_subsets=sec.kid_subsets,
        kid_subset_size=sec.kid_subset_size, is_splits=sec.is_splits, min_category=sec.min_category,
        skip_bad=sec.skip_bad, allow_protocol_mismatch=sec.allow_protocol_mismatch,
        device=sec.device or ctx.spec.device, batch_size=sec.batch_size, progress=ctx.progress,
        settings=sec.settings)
    try:
        check_options(opts, reference_made_later=(sec.reference or "").startswith("run:") or not stage_runs_now)
    except UserError as e:
        raise UserError(f"{ctx.source}: metrics: {e}") from None
    return opts


def run_stage(ctx) -> None:
    """Score every run folder of the benchmark; ctx.outputs['score'] maps run name -> summary.json path."""
    from k3eval.metrics.cli import format_summary
    from k3eval.metrics.score import score_run

    opts = score_options(ctx)
    done = {}
    for name, path in ctx.run_dirs().items():
        if not (Path(path) / "run.json").exists():
            raise UserError(f"[score] run '{name}' has no run folder at {path}: run the generate stage first")
        summary = score_run(path, opts)
        done[name] = str(Path(path) / "scores" / "summary.json")
        print("[score] " + format_summary(summary).replace("\n", "\n[score] "))
    ctx.outputs["score"] = done
