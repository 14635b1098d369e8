"""`k3eval score`: every requested metric of one run folder, written to RUN/scores/ (format: docs/FORMATS.md).

The stage drives the registry (`k3eval.metrics.registry`, interface in `k3eval.metrics.api`): status-ok manifest
rows -> every image verified (present, sha256 as it is now) -> the needs of the requested metrics, each distinct
extractor run once over the images through the feature cache -> the reference, when a metric compares with one ->
each metric's `compute` -> `scores/per_image.parquet` + `scores/summary.json`.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from k3eval.errors import UserError
from k3eval.metrics.cache import FeatureCache, default_root, fingerprint_key
from k3eval.utils import atomic_write_bytes, atomic_write_json, now_iso, package_versions

SCORES_VERSION = 1

@dataclass
class ScoreOptions:
    """Everything `score` can be told; the defaults are the documented protocols."""

    metrics: list[str] | None = None
    reference: str | None = None
    reference_protocol: str | None = None
    protocol: str = "clean"
    inception_weights: str | None = None
    clip_backend: str = "open_clip"
    clip_model: str = "ViT-L-14"
    clip_pretrained: str = "openai"
    cmmd_model: str = "ViT-L-14-336"
    cmmd_pretrained: str = "openai"
    bootstrap: int = 1000
    set_bootstrap: int = 0
    seed: int = 0
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    is_splits: int = 10
    min_category: int = 50
    skip_bad: bool = False
    allow_protocol_mismatch: bool = False
    device: str = "cpu"
    batch_size: int = 32
    #: decoding worker processes (None: one per CPU core, at most 4; 0: decode in the main thread)
    workers: int | None = None
    dtype: str = "float32"
    cache: str | None = "default"
    progress: bool = False
    #: per metric name, its settings (`--set NAME.KEY=VALUE`, `metrics.settings` in a benchmark)
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: recorded with every metric that compares with the reference (e.g. "the reference is synthetic")
    reference_warnings: list[str] = field(default_factory=list)

    def cache_root(self) -> Path | None:
        if self.cache is None:
            return None
        return default_root() if self.cache == "default" else Path(self.cache)


def parse_metrics(names: list[str] | None, have_reference: bool) -> list[str]:
    """Validate metric names (in registry order); by default every metric marked `default` that needs no reference,
    plus those that do (FID, KID, CMMD) when a reference is given."""
    from k3eval.metrics.registry import get_metric, metric_names

    if names is None:
        return [m for m in metric_names() if get_metric(m).default and (have_reference or not get_metric(m).reference)]
    if not names:
        raise UserError(f"--metrics: no metric named; give comma-separated names from {', '.join(metric_names())}, "
                        "or leave the option out for the defaults")
    for m in names:
        get_metric(m)
    need = [m for m in names if get_metric(m).reference]
    if need and not have_reference:
        raise UserError(f"--metrics: {', '.join(need)} compare with reference images: pass --reference REF.npz (see "
                        "`k3eval reference build`), a folder of reference images, or synthetic:N for a test")
    return [m for m in metric_names() if m in names]


def build_metrics(opts: ScoreOptions) -> list:
    """The requested metrics, instantiated with their settings (unknown names and settings are UserErrors)."""
    from k3eval.metrics.registry import get_metric

    names = parse_metrics(opts.metrics, opts.reference is not None)
    stray = sorted(set(opts.settings) - set(names))
    if stray:
        raise UserError(f"--set {stray[0]}.*: '{stray[0]}' is not among the metrics scored ({', '.join(names)})")
    return [get_metric(n)(opts.settings.get(n)) for n in names]


def check_options(opts: ScoreOptions, reference_made_later: bool = False) -> list:
    """Everything about the options that can be checked without images: protocol, dtype, metric names and settings,
    the reference's form and (unless a benchmark stage makes it later) existence. Returns the metric objects.
    Nothing is loaded."""
    from k3eval.metrics.options import check_dtype, check_protocol, parse_synthetic

    check_protocol(opts.protocol)
    check_dtype(opts.dtype)
    metrics = build_metrics(opts)
    if opts.reference is not None and parse_synthetic(opts.reference, "--reference") is None \
            and not reference_made_later and not Path(opts.reference).exists():
        raise UserError(f"--reference: not found: {opts.reference} (give a .npz from `k3eval reference build`, a "
                        "folder of images, or synthetic:N)")
    return metrics


def score_run(run_dir: str | Path, opts: ScoreOptions) -> dict[str, Any]:
    """Score one run folder; writes scores/per_image.parquet and scores/summary.json and returns the summary."""
    from k3eval.metrics.api import ScoreContext, ScoreData
    from k3eval.runs import load_run

    metrics = check_options(opts)
    run = load_run(run_dir)
    info = run.read_info()
    rows = run.ok_rows().reset_index(drop=True)
    if len(rows) < 2:
        raise UserError(f"{run.path}: {len(rows)} image(s) with status ok; scoring needs at least 2")
    ctx = ScoreContext(opts)
    needs = {m.name: m.needs(ctx) for m in metrics}
    root = opts.cache_root()
    rows, keys, skipped, stage_warnings = _verified(run, rows, root, opts.skip_bad)
    distinct: dict[tuple, Any] = {}
    for nd in (nd for ns in needs.values() for nd in ns.values()):
        distinct.setdefault(_need_key(nd), nd)
    paths = _paths(run, rows)
    if _distributed_prepass(opts, _jobs(distinct, rows, keys, root), paths):
        return {}
    values, readable, bad = _extract(distinct, rows, keys, paths, root, opts)
    skipped += [{"path": str(e.path), "reason": e.reason} for e in bad]
    stage_warnings += [f"skipped unreadable image {e.path} ({e.reason})" for e in bad]
    if not readable.all():
        rows = rows[readable].reset_index(drop=True)
        keys = [k for k, ok in zip(keys, readable) if ok]
    if len(rows) < 2:
        raise UserError(f"{run.path}: fewer than 2 readable images left after skipping unreadable ones")
    values.update(_text_values(distinct, rows, root))

    reference, ref_warnings = None, []
    slots = {m.reference: needs[m.name][m.reference].extractor for m in metrics if m.reference}
    if slots:
        features = any(m.reference_features for m in metrics if m.reference == "inception")
        reference, ref_warnings = _resolve_reference(opts, slots, root, features)

    base_proto = {"device": opts.device, "versions": package_versions(["open-clip-torch", "Pillow"])}
    per_image = rows[["prompt_id", "sample", "category", "path"]].copy()
    per_image["sha256"] = keys
    out: dict[str, Any] = {}
    for m in metrics:
        data = ScoreData(rows, {role: values[_need_key(nd)] for role, nd in needs[m.name].items()},
                         {role: nd.extractor for role, nd in needs[m.name].items()}, opts, m.settings,
                         reference if m.reference else None, ref_warnings if m.reference else [])
        res = m.compute(data)
        for col, v in res.per_image.items():
            per_image[col] = v
        out[m.name] = _entry(m, res, len(rows), base_proto, stage_warnings)
    return _write(run, info, rows, per_image, out, keys, skipped)


def _need_key(need) -> tuple:
    """Needs with the same extractor fingerprint (and text source) are extracted once and shared."""
    text = None if need.extractor.kind == "image" else (need.text or "prompt")
    return need.extractor.kind, fingerprint_key(need.extractor.fingerprint), text


def _verified(run, rows, root, skip_bad: bool):
    """Rows whose image exists and can be read, their sha256 now, what was skipped and warnings for every metric."""
    from k3eval.metrics.preprocess import bad_images_error
    from k3eval.metrics.verify import verify_images

    recorded = rows["sha256"].tolist() if "sha256" in rows.columns else None
    checked = verify_images(run.path, _paths(run, rows), recorded, root)
    warnings: list[str] = []
    skipped: list[dict[str, str]] = []
    if checked.bad:
        if not skip_bad:
            raise bad_images_error(checked.bad)
        skipped = [{"path": str(e.path), "reason": e.reason} for e in checked.bad]
        warnings += [f"skipped image {e.path} ({e.reason})" for e in checked.bad]
    if checked.changed:
        shown = ", ".join(str(p) for p in checked.changed[:5]) + (" ..." if len(checked.changed) > 5 else "")
        warnings.append(f"{len(checked.changed)} image(s) changed on disk since they were made (sha256 differs from "
                        f"the manifest); scored as they are now: {shown}")
    ok = np.array([k is not None for k in checked.keys], dtype=bool)
    return rows[ok].reset_index(drop=True), [k for k in checked.keys if k is not None], skipped, warnings


def _jobs(distinct: dict, rows, keys: list[str], root, sinks: bool = False) -> dict:
    """need key -> Job over the rows, for the needs that read images (with an ArraySink each when `sinks`)."""
    from k3eval.metrics.extract import ArraySink, Job, pair_key

    jobs = {}
    for k, need in distinct.items():
        ext = need.extractor
        sink = ArraySink(len(keys)) if sinks else None
        if ext.kind == "image":
            jobs[k] = Job(ext, FeatureCache(ext.fingerprint, root), list(keys), sink=sink)
        elif ext.kind == "image_text":
            texts = need.texts(rows)
            jobs[k] = Job(ext, FeatureCache(ext.fingerprint, root), [pair_key(i, t) for i, t in zip(keys, texts)],
                          texts, sink=sink)
    return jobs


def _paths(run, rows) -> list[Path]:
    return [run.image_path({"path": p}) for p in rows["path"].tolist()]


def _extract(distinct: dict, rows, keys: list[str], paths: list[Path], root, opts: ScoreOptions):
    """Per image need: its values in row order (of the readable rows); which rows are readable; decoding failures."""
    from k3eval.metrics.extract import run_jobs

    jobs = _jobs(distinct, rows, keys, root, sinks=True)
    if not jobs:
        return {}, np.ones(len(rows), dtype=bool), []
    desc = ", ".join(dict.fromkeys(distinct[k].desc or "features" for k in jobs))
    readable, bad = run_jobs(list(jobs.values()), paths, opts.skip_bad, opts.progress, opts.workers, desc)
    return {k: job.sink.result(readable) for k, job in jobs.items()}, readable, bad


def _text_values(distinct: dict, rows, root) -> dict:
    """Per text need: its values in row order, each distinct text computed once (cached by its sha256)."""
    from k3eval.metrics.extract import extract_texts

    return {k: extract_texts(nd.extractor, nd.texts(rows), FeatureCache(nd.extractor.fingerprint, root))
            for k, nd in distinct.items() if nd.extractor.kind == "text"}


def _distributed_prepass(opts: ScoreOptions, jobs: dict, paths: list[Path]) -> bool:
    """Under torchrun (WORLD_SIZE > 1) every rank extracts its share of the images into the shared feature cache;
    after a barrier rank 0 scores from the cache (recomputing nothing) and the other ranks return. Returns True on
    the ranks that stop here. The cache is the gather: features land in per-writer shard files."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return False
    if opts.cache_root() is None:
        raise UserError("--cache none cannot be used under torchrun: the ranks share their features through the cache")
    import torch.distributed as dist

    from k3eval.metrics.extract import Job, run_jobs

    if not dist.is_initialized():
        dist.init_process_group("nccl" if opts.device.startswith("cuda") else "gloo")
    rank = dist.get_rank()
    share = range(rank, len(paths), world)
    if jobs:
        mine = [Job(j.extractor, j.cache, [j.keys[i] for i in share],
                    None if j.texts is None else [j.texts[i] for i in share]) for j in jobs.values()]
        # unreadable images are left for rank 0, which reports them (or skips them with --skip-bad)
        run_jobs(mine, [paths[i] for i in share], skip_bad=True, workers=opts.workers)
    dist.barrier()
    return rank != 0


def _resolve_reference(opts: ScoreOptions, slots: dict, root, features: bool = True):
    """--reference as a Reference holding the slots the metrics compare with, and the warnings that go with it: a
    .npz file, or a folder of images / a run folder / synthetic:N (features extracted here, cached; only running
    statistics of the Inception features are kept unless a metric needs the `features`)."""
    from k3eval.metrics.options import parse_synthetic, synthetic_reference_warning
    from k3eval.metrics.reference import load_reference, reference_from_images, synthetic_reference_images

    warnings = list(opts.reference_warnings)
    n = parse_synthetic(opts.reference, "--reference")
    if n is not None:
        p = synthetic_reference_images(n)
        warnings.append(synthetic_reference_warning(n))
    else:
        p = Path(opts.reference)
    if p.is_file():
        return load_reference(p, opts.reference_protocol), warnings
    ref = reference_from_images(p, slots, root, opts.skip_bad, opts.progress, features, opts.workers)
    # images skipped in the reference concern every metric that compares with it (CMMD included), not FID/KID only
    skipped, ref.warnings = ref.warnings, []
    return ref, warnings + skipped


def _entry(metric, res, n: int, base_proto: dict[str, Any], warnings: list[str]) -> dict[str, Any]:
    """The summary.json entry of one metric (docs/FORMATS.md)."""
    finite_ci = res.ci is not None and bool(np.all(np.isfinite(res.ci)))
    value = res.value
    return {"display_name": metric.display_name, "higher_is_better": metric.higher_is_better, "unit": metric.unit,
            "value": None if value is None or not np.isfinite(value) else float(value),
            "ci": [float(res.ci[0]), float(res.ci[1])] if finite_ci else None,
            "ci_method": res.ci_method if finite_ci else None, "n": int(res.n if res.n is not None else n),
            "protocol": {**res.protocol, **base_proto}, "warnings": [*res.warnings, *warnings],
            "per_category": res.per_category, **res.extra}


def images_digest(keys: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()


def _write(run, info, rows, per_image, metrics: dict[str, Any], keys: list[str],
           skipped: list[dict[str, str]]) -> dict[str, Any]:
    """Write per_image.parquet and summary.json. Metrics not recomputed now are kept from an earlier summary when
    the scored images are the same (same digest of their sha256s); otherwise they are dropped."""
    digest = images_digest(keys)
    summary_path = run.scores_dir / "summary.json"
    per_image_path = run.scores_dir / "per_image.parquet"
    old_metrics: dict[str, Any] = {}
    if summary_path.exists():
        try:
            old = json.loads(summary_path.read_text(encoding="utf-8"))
            if old.get("images_digest") == digest:
                old_metrics = old.get("metrics", {})
        except (json.JSONDecodeError, UnicodeDecodeError):
            old_metrics = {}
    merged = {**{k: v for k, v in old_metrics.items() if k not in metrics}, **metrics}
    if old_metrics and per_image_path.exists():
        import pandas as pd

        prev = pd.read_parquet(per_image_path)
        extra = [c for c in prev.columns if c not in per_image.columns]
        if extra and len(prev) == len(per_image):
            per_image = per_image.merge(prev[["prompt_id", "sample", *extra]], on=["prompt_id", "sample"], how="left")
    synthetic = any(m["protocol"].get("synthetic_weights") for m in merged.values())
    summary = {
        "k3eval_scores": SCORES_VERSION,
        "run": {"path": str(run.path), "generator": (info.get("generator") or {}).get("name"),
                "run_name": info.get("run_name"), "prompt_set_hash": (info.get("prompt_set") or {}).get("hash")},
        "created": now_iso(),
        "n_images": len(rows),
        "images_digest": digest,
        "skipped": skipped,
        "synthetic_weights": synthetic,
        "metrics": merged,
    }
    buf = io.BytesIO()
    per_image.to_parquet(buf, index=False)
    atomic_write_bytes(per_image_path, buf.getvalue())
    atomic_write_json(summary_path, summary)
    return summary
