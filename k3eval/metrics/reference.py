"""Reference statistics: what generated images are compared with (FID, KID, CMMD).

A reference file is an `.npz` in the layout pytorch-fid and clean-fid use (`mu`, `sigma`, float64), plus, when
k3eval wrote it: `features` (the N x 2048 pool3 features, for KID; left out by `--stats-only`, whose statistics are
accumulated batch by batch so that memory stays flat for any number of images), `clip_features` (for CMMD) and
`k3eval_reference` (a JSON string: the Inception protocol fingerprint, the CLIP fingerprint, n, the source and when
it was built).
An external `.npz` holding only `mu` and `sigma` (for example the published COCO val2014 statistics) is accepted
when its protocol is declared (`--reference-protocol tf|clean`); it then serves FID only.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from k3eval.errors import UserError
from k3eval.metrics.cache import FeatureCache
from k3eval.metrics.extract import ImageItem, Job, run_jobs
from k3eval.metrics.functional import gaussian_stats
from k3eval.metrics.inception import POOL_DIM
from k3eval.metrics.options import PROTOCOLS
from k3eval.metrics.preprocess import bad_images_error
from k3eval.metrics.verify import verify_images
from k3eval.utils import atomic_write_bytes, now_iso, package_versions

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# What must agree between a reference and the scored images for FID/KID to be comparable.
PROTOCOL_KEYS = ("extractor", "sha256", "protocol")


@dataclass
class Reference:
    mu: np.ndarray
    sigma: np.ndarray
    n: int
    protocol: dict[str, Any]
    source: str
    features: np.ndarray | None = None
    clip_features: np.ndarray | None = None
    clip_protocol: dict[str, Any] | None = None
    external: bool = False
    warnings: list[str] = field(default_factory=list)
    #: built with running statistics only (`reference build --stats-only`): no features, so no KID
    stats_only: bool = False


def image_items(source: str | Path, cache_root: str | Path | None = None) -> tuple[list[ImageItem], list]:
    """The images of a run folder (its status-ok manifest rows) or of any folder of image files (searched
    recursively, sorted by path), each keyed by the sha256 of the file as it is now (see `verify`); and the
    images that are missing or unreadable (BadImageError)."""
    src = Path(source)
    if not src.exists():
        raise UserError(f"images folder not found: {src}")
    if (src / "run.json").exists():
        from k3eval.runs import load_run

        run = load_run(src)
        paths = [run.image_path(r) for r in run.ok_rows().to_dict("records")]
    elif src.is_file():
        raise UserError(f"expected a folder of images or a run folder, got the file {src}")
    else:
        paths = sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    checked = verify_images(src, paths, cache_root=cache_root)
    return [ImageItem(k, p) for k, p in zip(checked.keys, paths) if k is not None], checked.bad


def reference_from_images(source: str | Path, extractors: dict[str, Any], cache_root: str | Path | None,
                          skip_bad: bool = False, progress: bool = False, features: bool = True,
                          workers: int | None = None) -> Reference:
    """The reference of a folder of images or a run folder, for the slots of `extractors` ("inception", "clip"), in
    one streaming pass over the images: each is decoded once for both, features come from or go to the cache.

    `features=False` keeps only the running mean and covariance of the Inception features (float64, equal to the
    two-pass result to rounding), so memory does not grow with the number of images; such a reference serves FID
    but not KID. CLIP embeddings (CMMD) are always kept. Unreadable images are an error naming them unless
    `skip_bad` (then listed in the warnings)."""
    from k3eval.metrics.extract import ArraySink, StatsSink

    items, bad = image_items(source, cache_root)
    if bad and not skip_bad:
        raise bad_images_error(bad)
    sinks: dict[str, Any] = {s: ArraySink(len(items)) for s in extractors}
    if "inception" in extractors and not features:
        sinks["inception"] = StatsSink(POOL_DIM)
    jobs = [Job(ext, FeatureCache(ext.fingerprint, cache_root), [it.key for it in items], sink=sinks[s])
            for s, ext in extractors.items()]
    readable, unreadable = run_jobs(jobs, [it.path for it in items], skip_bad=skip_bad, progress=progress,
                                    workers=workers, desc="reference features")
    n = int(readable.sum())
    if n < 2:
        raise UserError(f"reference {source}: {n} readable image(s); at least 2 are needed")
    warnings = [f"skipped unreadable image {e.path}: {e.reason}" for e in bad + unreadable]
    if "inception" not in extractors:
        ref = Reference(np.zeros(POOL_DIM), np.zeros((POOL_DIM, POOL_DIM)), n, {}, str(source), warnings=warnings)
    elif features:
        pool = sinks["inception"].result(readable)[:, :POOL_DIM]
        mu, sigma = gaussian_stats(pool)
        ref = Reference(mu, sigma, n, extractors["inception"].fingerprint, str(source),
                        features=np.ascontiguousarray(pool), warnings=warnings)
    else:
        mu, sigma = sinks["inception"].stats.stats()
        ref = Reference(mu, sigma, n, extractors["inception"].fingerprint, str(source), warnings=warnings,
                        stats_only=True)
    if "clip" in extractors:
        ref.clip_features = sinks["clip"].result(readable)
        ref.clip_protocol = extractors["clip"].fingerprint
    return ref


def build_reference(source: str | Path, out: str | Path, inception, cache_root: str | Path | None,
                    clip=None, skip_bad: bool = False, progress: bool = False, features: bool = True,
                    workers: int | None = None) -> Reference:
    """Compute the reference of the images in `source` and write it to `out` (.npz, atomically); `features=False`
    stores the statistics only (see `reference_from_images`)."""
    if Path(out).suffix != ".npz":
        raise UserError(f"--out: reference files end in .npz, got {out}")
    extractors = {"inception": inception, **({"clip": clip} if clip is not None else {})}
    ref = reference_from_images(source, extractors, cache_root, skip_bad, progress, features, workers)
    if ref.n < POOL_DIM:
        ref.warnings.append(f"n = {ref.n} < {POOL_DIM} features: the covariance is rank-deficient")
    write_reference(ref, out)
    return ref


def synthetic_reference_images(n: int, seed: int = 0, size: int = 64) -> Path:
    """A folder of `n` seeded structured images (coarse colour noise upsampled, plus fine noise), built once."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from k3eval.utils import cache_dir

    folder = cache_dir() / "reference_images" / f"synthetic-{n}-seed{seed}-{size}px"
    if (folder / ".complete").exists():
        return folder
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(n, 3, 6, 6, generator=g) * 255, size=(size, size), mode="bilinear",
                      align_corners=False)
    x = (x + torch.randn(x.shape, generator=g) * 12).clamp(0, 255).round().to(torch.uint8)
    for i, a in enumerate(x.permute(0, 2, 3, 1).numpy()):
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(a)).save(buf, format="PNG")
        atomic_write_bytes(folder / f"{i:05d}.png", buf.getvalue())
    (folder / ".complete").write_text("ok\n")
    return folder


def write_reference(ref: Reference, out: str | Path) -> None:
    """Write the .npz atomically (one in-memory copy of the arrays: the file's bytes, handed over without another)."""
    out = Path(out)
    if out.suffix != ".npz":
        raise UserError(f"--out: reference files end in .npz, got {out}")
    meta = {"k3eval_reference": 1, "protocol": ref.protocol, "clip_protocol": ref.clip_protocol, "n": ref.n,
            "source": ref.source, "created": now_iso(), "versions": package_versions(), "warnings": ref.warnings,
            "stats_only": ref.stats_only}
    arrays: dict[str, Any] = {"mu": ref.mu, "sigma": ref.sigma, "k3eval_reference": np.array(json.dumps(meta))}
    if ref.features is not None:
        arrays["features"] = ref.features
    if ref.clip_features is not None:
        arrays["clip_features"] = ref.clip_features
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(out, buf.getbuffer())


def load_reference(path: str | Path, declared_protocol: str | None = None) -> Reference:
    """Read a reference .npz. Files without k3eval metadata need `declared_protocol` ('tf' or 'clean'): they are
    then taken as computed with the official Inception weights under that protocol."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--reference: file not found: {p}")
    try:
        z = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"--reference: {p} is not a readable .npz ({e})") from None
    with z:
        if "mu" not in z or "sigma" not in z:
            raise UserError(f"--reference: {p} has no 'mu' and 'sigma' arrays (keys: {', '.join(z.files)})")
        mu, sigma = np.asarray(z["mu"], np.float64), np.asarray(z["sigma"], np.float64)
        if mu.shape != (POOL_DIM,) or sigma.shape != (POOL_DIM, POOL_DIM):
            raise UserError(f"--reference: {p} holds mu {mu.shape} and sigma {sigma.shape}; expected Inception pool3 "
                            f"statistics ({POOL_DIM},) and ({POOL_DIM}, {POOL_DIM})")
        if "k3eval_reference" in z:
            meta = json.loads(str(z["k3eval_reference"]))
            if declared_protocol and declared_protocol != meta["protocol"].get("protocol"):
                raise UserError(f"--reference-protocol {declared_protocol} contradicts {p}, which records protocol "
                                f"{meta['protocol'].get('protocol')!r}")
            return Reference(mu, sigma, int(meta["n"]), meta["protocol"], str(p),
                             features=z["features"] if "features" in z else None,
                             clip_features=z["clip_features"] if "clip_features" in z else None,
                             clip_protocol=meta.get("clip_protocol"), warnings=list(meta.get("warnings", [])),
                             stats_only=bool(meta.get("stats_only", False)))
    if declared_protocol not in PROTOCOLS:
        raise UserError(f"--reference: {p} has no k3eval protocol record; declare how it was computed with "
                        f"--reference-protocol ({' or '.join(PROTOCOLS)}), e.g. 'tf' for pytorch-fid / torch-fidelity "
                        "statistics such as the published COCO val2014 ones")
    from k3eval.metrics.weights import OFFICIAL_INCEPTION_SHA256

    proto = {"extractor": "inception-v3-compat", "sha256": sorted(OFFICIAL_INCEPTION_SHA256)[0],
             "standard_weights": True, "protocol": declared_protocol, "resize": PROTOCOLS[declared_protocol],
             "declared": True}
    return Reference(mu, sigma, -1, proto, str(p), external=True,
                     warnings=[f"external reference statistics, protocol declared as '{declared_protocol}'"])


def protocol_mismatch(ours: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """The protocol fields that differ between the scored images and a reference (empty when comparable)."""
    return [f"{k}: images {ours.get(k)!r}, reference {theirs.get(k)!r}" for k in PROTOCOL_KEYS
            if ours.get(k) != theirs.get(k)]

