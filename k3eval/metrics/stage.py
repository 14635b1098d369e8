"""Benchmark stage `score`: scores every run of a benchmark with the options of its `metrics:` section.

```yaml
metrics:
  metrics: [clip_score, fid, kid, is, cmmd]   # default: clip_score, is (+ fid, kid, cmmd with a reference)
  protocol: clean                              # or tf
  inception_weights: null                      # a path, or 'synthetic' (seeded test weights); null: torch hub cache
  clip: {backend: open_clip, model: ViT-L-14, pretrained: openai}
  cmmd: {model: ViT-L-14-336, pretrained: openai}
  reference: path/to/ref.npz                   # or an images folder, run:<run name>, or synthetic:N (demo only)
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

from pydantic import Field

from k3eval.config import Strict, resolve_relative, validate_section
from k3eval.errors import UserError


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


def synthetic_reference_images(n: int, seed: int = 0, size: int = 64) -> Path:
    """A folder of `n` seeded structured images (coarse colour noise upsampled, plus fine noise), built once."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from k3eval.utils import atomic_write_bytes, cache_dir

    folder = cache_dir() / "reference_images" / f"synthetic-{n}-seed{seed}-{size}px"
    if (folder / ".complete").exists():
        return folder
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(n, 3, 6, 6, generator=g) * 255, size=(size, size), mode="bilinear",
                      align_corners=False)
    x = (x + torch.randn(x.shape, generator=g) * 12).clamp(0, 255).round().to(torch.uint8)
    import io

    for i, a in enumerate(x.permute(0, 2, 3, 1).numpy()):
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(a)).save(buf, format="PNG")
        atomic_write_bytes(folder / f"{i:05d}.png", buf.getvalue())
    (folder / ".complete").write_text("ok\n")
    return folder


def resolve_reference(spec: str | None, ctx) -> tuple[str | None, list[str]]:
    """The reference of the section as a path, and warnings to record with every metric that uses it."""
    if spec is None:
        return None, []
    if spec.startswith("synthetic:"):
        try:
            n = int(spec.split(":", 1)[1])
        except ValueError:
            n = 0
        if n < 2:
            raise UserError(f"{ctx.source}: metrics.reference: 'synthetic:N' needs an integer N >= 2, got {spec!r}")
        return str(synthetic_reference_images(n)), [
            f"reference is {n} synthetic seeded images (demo only): FID, KID and CMMD values mean nothing"]
    if spec.startswith("run:"):
        name = spec[4:]
        runs = ctx.run_dirs()
        if name not in runs:
            from k3eval.errors import did_you_mean

            raise UserError(f"{ctx.source}: metrics.reference: no run named '{name}'{did_you_mean(name, runs)}")
        return str(runs[name]), []
    return str(resolve_relative(ctx.source, spec)), []


def run_stage(ctx) -> None:
    """Score every run folder of the benchmark; ctx.outputs['score'] maps run name -> summary.json path."""
    from k3eval.metrics.cli import format_summary
    from k3eval.metrics.score import ScoreOptions, score_run

    sec: MetricsSection = validate_section(str(ctx.source), "metrics", MetricsSection, ctx.spec.metrics)
    reference, warnings = resolve_reference(sec.reference, ctx)
    weights = sec.inception_weights
    if weights and weights != "synthetic":
        weights = str(resolve_relative(ctx.source, weights))
    opts = ScoreOptions(
        metrics=sec.metrics, reference=reference, reference_protocol=sec.reference_protocol, protocol=sec.protocol,
        inception_weights=weights, clip_backend=sec.clip.backend, clip_model=sec.clip.model,
        clip_pretrained=sec.clip.pretrained, cmmd_model=sec.cmmd.model, cmmd_pretrained=sec.cmmd.pretrained,
        bootstrap=sec.bootstrap, set_bootstrap=sec.set_bootstrap, seed=sec.seed, kid_subsets=sec.kid_subsets,
        kid_subset_size=sec.kid_subset_size, is_splits=sec.is_splits, min_category=sec.min_category,
        skip_bad=sec.skip_bad, allow_protocol_mismatch=sec.allow_protocol_mismatch,
        device=sec.device or ctx.spec.device, batch_size=sec.batch_size, progress=ctx.progress,
        extra_warnings=warnings)
    done = {}
    for name, path in ctx.run_dirs().items():
        if not (Path(path) / "run.json").exists():
            raise UserError(f"[score] run '{name}' has no run folder at {path}: run the generate stage first")
        summary = score_run(path, opts)
        done[name] = str(Path(path) / "scores" / "summary.json")
        print("[score] " + format_summary(summary).replace("\n", "\n[score] "))
    ctx.outputs["score"] = done
