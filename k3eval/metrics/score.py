"""`k3eval score`: every requested metric of one run folder, written to RUN/scores/ (format: docs/FORMATS.md).

Flow: manifest rows with status ok -> cached features (Inception, CLIP image and text) -> metric values overall and
per category, with intervals and the protocol fingerprint -> `scores/per_image.parquet` + `scores/summary.json`.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from k3eval.errors import UserError, did_you_mean
from k3eval.metrics.cache import FeatureCache, default_root
from k3eval.metrics.extract import (
    ClipImageExtractor,
    ImageItem,
    InceptionExtractor,
    extract_images,
    extract_texts,
)
from k3eval.metrics.inception import POOL_DIM
from k3eval.metrics.reference import row_sha256
from k3eval.utils import atomic_write_bytes, atomic_write_json, now_iso, package_versions

# name -> (display name, higher is better, unit). The report reads these from summary.json, never from here.
METRICS: dict[str, tuple[str, bool, str]] = {
    "clip_score": ("CLIP score", True, ""),
    "fid": ("FID", False, ""),
    "kid": ("KID", False, ""),
    "is": ("Inception score", True, ""),
    "cmmd": ("CMMD", False, ""),
}
NEEDS_REFERENCE = ("fid", "kid", "cmmd")
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
    dtype: str = "float32"
    cache: str | None = "default"
    progress: bool = False
    extra_warnings: list[str] = field(default_factory=list)

    def cache_root(self) -> Path | None:
        if self.cache is None:
            return None
        return default_root() if self.cache == "default" else Path(self.cache)


def parse_metrics(names: list[str] | None, have_reference: bool) -> list[str]:
    """Validate metric names; by default CLIP score and IS, plus FID, KID and CMMD when a reference is given."""
    if not names:
        return [m for m in METRICS if have_reference or m not in NEEDS_REFERENCE]
    for m in names:
        if m not in METRICS:
            raise UserError(f"--metrics: unknown metric '{m}'{did_you_mean(m, METRICS)}")
    need = [m for m in names if m in NEEDS_REFERENCE]
    if need and not have_reference:
        raise UserError(f"--metrics: {', '.join(need)} compare with reference images: pass --reference REF.npz (see "
                        "`k3eval reference build`) or a folder of reference images")
    return list(dict.fromkeys(names))


def _weights_warning(fp: dict[str, Any], what: str) -> list[str]:
    if fp.get("synthetic_weights"):
        return [f"{what} computed with synthetic (seeded random, non-standard) weights: for testing the pipeline "
                "only, not comparable with any published number"]
    if fp.get("standard_weights") is False:
        return [f"{what} computed with non-standard Inception weights (sha256 {fp.get('sha256', '')[:12]}...): "
                "not comparable with numbers computed with the official file"]
    return []


def _entry(name: str, value: float | None, n: int, protocol: dict, ci=None, ci_method=None, warnings=None,
           per_category=None, **extra) -> dict[str, Any]:
    display, hib, unit = METRICS[name]
    return {"display_name": display, "higher_is_better": hib, "unit": unit,
            "value": None if value is None or not np.isfinite(value) else float(value),
            "ci": None if ci is None or not np.all(np.isfinite(ci)) else [float(ci[0]), float(ci[1])],
            "ci_method": ci_method if ci is not None else None, "n": int(n), "protocol": protocol,
            "warnings": list(warnings or []), "per_category": per_category or {}, **extra}


def _category_entry(value, n, ci=None, flag=None) -> dict[str, Any]:
    ok = value is not None and np.isfinite(value)
    return {"value": float(value) if ok else None,
            "ci": [float(ci[0]), float(ci[1])] if ci is not None and np.all(np.isfinite(ci)) else None,
            "n": int(n), "flag": flag}


def _set_bootstrap(stat, n: int, groups, resamples: int, seed: int):
    """Percentile interval of a set metric by resampling prompts (all images of a prompt together)."""
    from k3eval.stats import bootstrap_ci

    if resamples <= 0 or n < 2:
        return None
    return bootstrap_ci(np.arange(n, dtype=np.float64), groups=groups,
                        stat=lambda idx: stat(idx.astype(np.int64)), n_resamples=resamples, seed=seed)


def score_run(run_dir: str | Path, opts: ScoreOptions) -> dict[str, Any]:
    """Score one run folder; writes scores/per_image.parquet and scores/summary.json and returns the summary."""
    from k3eval.metrics import functional as F
    from k3eval.metrics.preprocess import check_protocol
    from k3eval.metrics.reference import protocol_mismatch
    from k3eval.metrics.weights import resolve_inception_weights
    from k3eval.runs import load_run

    check_protocol(opts.protocol)
    run = load_run(run_dir)
    info = run.read_info()
    rows = run.ok_rows()
    if len(rows) < 2:
        raise UserError(f"{run.path}: {len(rows)} image(s) with status ok; scoring needs at least 2")
    rows = rows.reset_index(drop=True)
    metrics = parse_metrics(opts.metrics, opts.reference is not None)
    root = opts.cache_root()
    warnings_all: list[str] = list(opts.extra_warnings)

    recs = rows.to_dict("records")
    items = [ImageItem(row_sha256(run, r), run.image_path(r)) for r in recs]
    versions = package_versions(["open-clip-torch", "Pillow"])

    need_inception = any(m in metrics for m in ("fid", "kid", "is"))
    need_clip = "clip_score" in metrics
    if _distributed_prepass(opts, items, root, metrics):
        return {}
    inception = clip = cmmd_ext = None
    bad_paths: set[str] = set()
    keep = np.ones(len(rows), dtype=bool)
    pool = logits = None
    if need_inception:
        inception = InceptionExtractor(resolve_inception_weights(opts.inception_weights), opts.protocol,
                                       opts.device, opts.batch_size, opts.dtype)
        ext = extract_images(inception, items, FeatureCache(inception.fingerprint, root), opts.skip_bad,
                             opts.progress, desc="Inception features")
        bad_paths |= {str(e.path) for e in ext.bad}
        by_key = dict(zip(ext.keys, ext.feats))
    if need_clip:
        clip = ClipImageExtractor(opts.clip_backend, opts.clip_model, opts.clip_pretrained, opts.device,
                                  opts.batch_size)
        cext = extract_images(clip, items, FeatureCache(clip.fingerprint, root), opts.skip_bad, opts.progress,
                              desc="CLIP features")
        bad_paths |= {str(e.path) for e in cext.bad}
        clip_by_key = dict(zip(cext.keys, cext.feats))
    if "cmmd" in metrics:
        same = (opts.cmmd_model, opts.cmmd_pretrained) == (opts.clip_model, opts.clip_pretrained) \
            and opts.clip_backend == "open_clip"
        cmmd_ext = clip if same and clip is not None else ClipImageExtractor(
            "open_clip", opts.cmmd_model, opts.cmmd_pretrained, opts.device, opts.batch_size)
        mext = extract_images(cmmd_ext, items, FeatureCache(cmmd_ext.fingerprint, root), opts.skip_bad,
                              opts.progress, desc="CMMD CLIP features")
        bad_paths |= {str(e.path) for e in mext.bad}
        cmmd_by_key = dict(zip(mext.keys, mext.feats))
    for i, it in enumerate(items):
        keep[i] = str(it.path) not in bad_paths
    if bad_paths:
        warnings_all += [f"skipped unreadable image {p}" for p in sorted(bad_paths)]
    rows = rows[keep].reset_index(drop=True)
    items = [it for it, k in zip(items, keep) if k]
    if len(rows) < 2:
        raise UserError(f"{run.path}: fewer than 2 readable images left after skipping unreadable ones")
    groups = rows["prompt_id"].astype(str).to_numpy()
    cats = rows["category"].fillna("").astype(str).to_numpy()
    categories = sorted(set(cats) - {""})

    if inception is not None:
        allf = np.stack([by_key[it.key] for it in items])
        pool, logits = allf[:, :POOL_DIM], allf[:, POOL_DIM:]

    ref = None
    if any(m in NEEDS_REFERENCE for m in metrics):
        ref = _resolve_reference(opts, inception, cmmd_ext if "cmmd" in metrics else None, root)
        if inception is not None:
            diffs = protocol_mismatch(inception.fingerprint, ref.protocol)
            if diffs:
                msg = f"reference {ref.source} was computed under another protocol ({'; '.join(diffs)})"
                if not opts.allow_protocol_mismatch:
                    raise UserError(msg + "; FID/KID against it would not be comparable. Rebuild the reference with "
                                    "the same --protocol and weights, or pass --allow-protocol-mismatch (recorded)")
                warnings_all.append(msg + " (--allow-protocol-mismatch)")

    base_proto = {"device": opts.device, "versions": versions}
    n = len(rows)
    out: dict[str, Any] = {}
    per_image = rows[["prompt_id", "sample", "category", "path"]].copy()
    per_image["sha256"] = [it.key for it in items]

    if "clip_score" in metrics:
        img = np.stack([clip_by_key[it.key] for it in items])
        texts = rows["prompt"].astype(str).tolist()
        txt = extract_texts(clip.text_extractor(), texts, FeatureCache(clip.text_extractor().fingerprint, root))
        cos = F.clip_cosine(img, txt)
        scores = 100.0 * np.maximum(cos, 0.0)
        trunc = clip.truncated(texts)
        per_image["clip_score"] = scores
        per_image["clip_cosine"] = cos
        per_image["clip_truncated"] = trunc
        from k3eval.stats import bootstrap_ci

        ci = bootstrap_ci(scores, groups=groups, n_resamples=opts.bootstrap, seed=opts.seed) \
            if opts.bootstrap > 0 else None
        percat = {}
        for c in categories:
            m = cats == c
            cci = bootstrap_ci(scores[m], groups=groups[m], n_resamples=opts.bootstrap, seed=opts.seed) \
                if opts.bootstrap > 0 and m.sum() >= 2 else None
            percat[c] = _category_entry(scores[m].mean(), int(m.sum()), cci)
        n_trunc = int(np.sum(trunc))
        warn = _weights_warning(clip.fingerprint, "CLIP score")
        if n_trunc:
            warn.append(f"{n_trunc} prompt(s) longer than the text encoder's context were truncated "
                        "(end-of-text token kept)")
        proto = {**clip.fingerprint, "scale": 100.0, "formula": "100 * max(cos, 0) per image, then the mean",
                 "truncation": "end-of-text token kept", "n_truncated": n_trunc, "n": n, "seed": opts.seed,
                 **base_proto}
        out["clip_score"] = _entry("clip_score", float(scores.mean()), n, proto, ci,
                                   f"bootstrap over prompts, {opts.bootstrap} resamples", warn, percat,
                                   n_truncated=n_trunc, mean_cosine_unclamped=float(cos.mean()))

    if inception is not None:
        inc_fp = inception.fingerprint
        inc_warn = _weights_warning(inc_fp, "Inception metrics")
        small = [f"n = {n} < {POOL_DIM} (the feature dimension): the covariance is rank-deficient and FID is biased "
                 "upward at small n; compare FID only at equal n"] if n < POOL_DIM else []

    if "fid" in metrics:
        r1 = F.sqrtm_psd(ref.sigma) if n > POOL_DIM else None  # reused by every resample of the large-n route

        def fid_of(idx):
            if len(idx) <= POOL_DIM:
                return F.frechet_distance_to_features(ref.mu, ref.sigma, pool[idx])
            mu, sigma = F.gaussian_stats(pool[idx])
            return F.frechet_distance(ref.mu, ref.sigma, mu, sigma, sqrt_sigma1=r1)

        value = fid_of(np.arange(n))
        ci = _set_bootstrap(fid_of, n, groups, opts.set_bootstrap, opts.seed)
        percat = {}
        for c in categories:
            idx = np.flatnonzero(cats == c)
            if len(idx) >= max(2, opts.min_category):
                percat[c] = _category_entry(fid_of(idx), len(idx))
            else:
                percat[c] = _category_entry(None, len(idx), flag="too_small")
        proto = {**inc_fp, "n": n, "reference": _ref_info(ref),
                 "sqrtm": "float64 symmetric eigendecomposition (N x N Gram route when N <= 2048)",
                 "seed": opts.seed, "min_category": opts.min_category, **base_proto}
        out["fid"] = _entry("fid", value, n, proto, ci, f"bootstrap over prompts, {opts.set_bootstrap} resamples",
                            inc_warn + small + ref.warnings, percat)

    if "kid" in metrics:
        if ref.features is None:
            raise UserError(f"--reference {ref.source} holds statistics only (mu, sigma), not features: KID needs "
                            "reference features; build it with `k3eval reference build`")
        rf = np.asarray(ref.features, np.float64)

        def kid_of(idx):
            return F.kernel_inception_distance(rf, pool[idx], opts.kid_subsets, opts.kid_subset_size, opts.seed)

        r = kid_of(np.arange(n))
        ci = _set_bootstrap(lambda idx: kid_of(idx).mean, n, groups, opts.set_bootstrap, opts.seed)
        percat = {}
        for c in categories:
            idx = np.flatnonzero(cats == c)
            percat[c] = _category_entry(kid_of(idx).mean, len(idx)) if len(idx) >= max(2, opts.min_category) \
                else _category_entry(None, len(idx), flag="too_small")
        proto = {**inc_fp, "n": n, "reference": _ref_info(ref), "kernel": "(x.y/d + 1)^3", "estimator": "unbiased",
                 "subsets": opts.kid_subsets, "subset_size": r.subset_size, "seed": opts.seed, **base_proto}
        out["kid"] = _entry("kid", r.mean, n, proto, ci, f"bootstrap over prompts, {opts.set_bootstrap} resamples",
                            inc_warn + ref.warnings, percat, std=r.std)

    if "is" in metrics:
        splits = min(opts.is_splits, n)

        def is_of(idx):
            return F.inception_score(logits[idx], min(splits, len(idx)), opts.seed)

        r = is_of(np.arange(n))
        ci = _set_bootstrap(lambda idx: is_of(idx).mean, n, groups, opts.set_bootstrap, opts.seed)
        percat = {}
        for c in categories:
            idx = np.flatnonzero(cats == c)
            percat[c] = _category_entry(is_of(idx).mean, len(idx)) if len(idx) >= max(2, opts.min_category) \
                else _category_entry(None, len(idx), flag="too_small")
        warn = list(inc_warn)
        if splits < opts.is_splits:
            warn.append(f"only {n} images: {splits} splits instead of {opts.is_splits}")
        proto = {**inc_fp, "n": n, "splits": splits, "logits": "unbiased (no classifier bias)", "seed": opts.seed,
                 **base_proto}
        out["is"] = _entry("is", r.mean, n, proto, ci, f"bootstrap over prompts, {opts.set_bootstrap} resamples",
                           warn, percat, std=r.std)

    if "cmmd" in metrics:
        if ref.clip_features is None:
            raise UserError(f"--reference {ref.source} holds no CLIP embeddings: CMMD needs them; build it with "
                            "`k3eval reference build --metrics cmmd` (or pass a folder of reference images)")
        if ref.clip_protocol != cmmd_ext.fingerprint:
            msg = (f"reference {ref.source} CLIP embeddings come from another model "
                   f"({(ref.clip_protocol or {}).get('model')}/{(ref.clip_protocol or {}).get('pretrained')})")
            if not opts.allow_protocol_mismatch:
                raise UserError(msg + "; rebuild it with the same --cmmd-model/--cmmd-pretrained, or pass "
                                "--allow-protocol-mismatch (recorded)")
            warnings_all.append(msg + " (--allow-protocol-mismatch)")
        emb = np.stack([cmmd_by_key[it.key] for it in items])
        rc = np.asarray(ref.clip_features, np.float64)

        def cmmd_of(idx):
            return F.cmmd(rc, emb[idx])

        value = cmmd_of(np.arange(n))
        ci = _set_bootstrap(cmmd_of, n, groups, opts.set_bootstrap, opts.seed)
        percat = {}
        for c in categories:
            idx = np.flatnonzero(cats == c)
            percat[c] = _category_entry(cmmd_of(idx), len(idx)) if len(idx) >= max(2, opts.min_category) \
                else _category_entry(None, len(idx), flag="too_small")
        proto = {**cmmd_ext.fingerprint, "n": n, "reference": _ref_info(ref), "kernel": "Gaussian RBF, sigma 10",
                 "scale": 1000.0, "estimator": "unbiased", "embeddings": "L2-normalised", "seed": opts.seed,
                 **base_proto}
        out["cmmd"] = _entry("cmmd", value, n, proto, ci, f"bootstrap over prompts, {opts.set_bootstrap} resamples",
                             _weights_warning(cmmd_ext.fingerprint, "CMMD"), percat)

    for name in out:
        out[name]["warnings"] += warnings_all
    return _write(run, info, rows, per_image, out, items)


def _distributed_prepass(opts: ScoreOptions, items: list[ImageItem], root: Path | None, metrics: list[str]) -> bool:
    """Under torchrun (WORLD_SIZE > 1) every rank featurises its share of the images into the shared feature cache;
    after a barrier rank 0 scores from the cache (recomputing nothing) and the other ranks return. Returns True on
    the ranks that stop here. The cache is the gather: features land in per-writer shard files."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return False
    if root is None:
        raise UserError("--cache none cannot be used under torchrun: the ranks share their features through the cache")
    import torch.distributed as dist

    from k3eval.metrics.weights import resolve_inception_weights

    if not dist.is_initialized():
        dist.init_process_group("nccl" if opts.device.startswith("cuda") else "gloo")
    rank = dist.get_rank()
    share = items[rank::world]
    extractors = []
    if any(m in metrics for m in ("fid", "kid", "is")):
        extractors.append(InceptionExtractor(resolve_inception_weights(opts.inception_weights), opts.protocol,
                                             opts.device, opts.batch_size, opts.dtype))
    if "clip_score" in metrics:
        extractors.append(ClipImageExtractor(opts.clip_backend, opts.clip_model, opts.clip_pretrained, opts.device,
                                             opts.batch_size))
    if "cmmd" in metrics:
        extractors.append(ClipImageExtractor("open_clip", opts.cmmd_model, opts.cmmd_pretrained, opts.device,
                                             opts.batch_size))
    for ext in extractors:
        # unreadable images are left for rank 0, which reports them (or skips them with --skip-bad)
        extract_images(ext, share, FeatureCache(ext.fingerprint, root), skip_bad=True, progress=False)
    dist.barrier()
    return rank != 0


def _ref_info(ref) -> dict[str, Any]:
    return {"source": str(ref.source), "n": ref.n, "external": ref.external, "protocol": ref.protocol.get("protocol"),
            "sha256": ref.protocol.get("sha256")}


def _resolve_reference(opts: ScoreOptions, inception, cmmd_ext, root):
    """--reference is a .npz file, or a folder of images / a run folder (its statistics are computed here, cached)."""
    from k3eval.metrics.reference import Reference, image_items, load_reference

    p = Path(opts.reference)
    if p.is_file():
        return load_reference(p, opts.reference_protocol)
    if not p.is_dir():
        raise UserError(f"--reference: not found: {p} (give a .npz from `k3eval reference build` or an images folder)")
    from k3eval.metrics.functional import gaussian_stats

    ritems = image_items(p)
    if len(ritems) < 2:
        raise UserError(f"--reference: {p} holds {len(ritems)} image(s); at least 2 are needed")
    ref = None
    if inception is not None:
        ext = extract_images(inception, ritems, FeatureCache(inception.fingerprint, root), opts.skip_bad,
                             opts.progress, desc="reference features")
        feats = ext.feats[:, :POOL_DIM]
        mu, sigma = gaussian_stats(feats)
        ref = Reference(mu, sigma, feats.shape[0], inception.fingerprint, str(p), features=feats)
    if cmmd_ext is not None:
        cext = extract_images(cmmd_ext, ritems, FeatureCache(cmmd_ext.fingerprint, root), opts.skip_bad,
                              opts.progress, desc="reference CLIP features")
        if ref is None:
            ref = Reference(np.zeros(POOL_DIM), np.zeros((POOL_DIM, POOL_DIM)), len(cext.keys), {}, str(p))
        ref.clip_features = cext.feats
        ref.clip_protocol = cmmd_ext.fingerprint
    return ref


def images_digest(keys: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()


def _write(run, info, rows, per_image, metrics: dict[str, Any], items) -> dict[str, Any]:
    """Write per_image.parquet and summary.json. Metrics not recomputed now are kept from an earlier summary when
    the scored images are the same (same digest of their sha256s); otherwise they are dropped."""
    digest = images_digest([it.key for it in items])
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
        "synthetic_weights": synthetic,
        "metrics": merged,
    }
    buf = io.BytesIO()
    per_image.to_parquet(buf, index=False)
    atomic_write_bytes(per_image_path, buf.getvalue())
    atomic_write_json(summary_path, summary)
    return summary
