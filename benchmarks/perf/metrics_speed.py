"""Speed and peak memory of FID end to end and of CLIP score: k3eval against torch-fidelity and torchmetrics.

One run, one machine, the same weights file and the same images for every tool:
- FID between two folders of N PNGs (made here, seeded) with the synthetic TF-ported Inception file: k3eval (`tf`
  protocol, empty feature cache), k3eval again from its feature cache, torch-fidelity `calculate_metrics`,
  torchmetrics `FrechetInceptionDistance(antialias=False)`. Speed does not depend on the weights' values.
- CLIP score throughput on the same synthetic transformers CLIP: k3eval's transformers backend against torchmetrics
  `CLIPScore`.
Each measurement runs in its own subprocess, so peak memory (ru_maxrss) is that tool's alone.

    python benchmarks/perf/metrics_speed.py                 # the issue's setting: 1000 PNGs at 512x512
    python benchmarks/perf/metrics_speed.py --n 100 --size 512

Writes benchmarks/perf/results/metrics_speed.json and .md. Not part of `make test`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def make_images(folder: Path, n: int, size: int, seed: int) -> None:
    """N seeded structured RGB PNGs (coarse colour noise upsampled plus fine noise) at size x size."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        x = F.interpolate(torch.rand(1, 3, 8, 8, generator=g) * 255, size=(size, size), mode="bilinear",
                          align_corners=False)
        x = (x + torch.randn(x.shape, generator=g) * 10).clamp(0, 255).round().to(torch.uint8)
        Image.fromarray(np.ascontiguousarray(x[0].permute(1, 2, 0).numpy())).save(folder / f"{i:05d}.png")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def tool_k3eval(a: str, b: str, weights: str, cache: str, protocol: str) -> dict:
    from k3eval.metrics import functional as F
    from k3eval.metrics.cache import FeatureCache
    from k3eval.metrics.extract import InceptionExtractor, extract_images
    from k3eval.metrics.inception import POOL_DIM
    from k3eval.metrics.reference import image_items
    from k3eval.metrics.weights import resolve_inception_weights

    t = time.perf_counter()
    ext = InceptionExtractor(resolve_inception_weights(weights), protocol, batch_size=50)
    root = None if cache == "none" else cache
    fa = extract_images(ext, image_items(a, root)[0], FeatureCache(ext.fingerprint, root)).feats[:, :POOL_DIM]
    fb = extract_images(ext, image_items(b, root)[0], FeatureCache(ext.fingerprint, root)).feats[:, :POOL_DIM]
    mu, sigma = F.gaussian_stats(fa)
    fid = F.frechet_distance_to_features(mu, sigma, fb)
    return {"fid": fid, "seconds": time.perf_counter() - t}


def tool_torch_fidelity(a: str, b: str, weights: str) -> dict:
    import torch_fidelity

    t = time.perf_counter()
    r = torch_fidelity.calculate_metrics(input1=a, input2=b, fid=True, cuda=False, verbose=False, cache=False,
                                         feature_extractor_weights_path=weights, batch_size=50)
    return {"fid": r["frechet_inception_distance"], "seconds": time.perf_counter() - t}


def _load_batches(folder: str, batch: int):
    import numpy as np
    import torch
    from PIL import Image

    files = sorted(Path(folder).glob("*.png"))
    for i in range(0, len(files), batch):
        arr = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files[i:i + batch]])
        yield torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def tool_torchmetrics(a: str, b: str, weights: str) -> dict:
    from torchmetrics.image.fid import FrechetInceptionDistance

    t = time.perf_counter()
    fid = FrechetInceptionDistance(feature=2048, antialias=False, feature_extractor_weights_path=weights)
    for folder, real in ((a, True), (b, False)):
        for x in _load_batches(folder, 50):
            fid.update(x, real=real)
    return {"fid": float(fid.compute()), "seconds": time.perf_counter() - t}


def tool_clip_k3eval(folder: str, n_text: int) -> dict:
    """k3eval's own path (`k3eval score --metrics clip_score` without the cache): threaded decoding, image and text
    embeddings, per-pair scores."""
    from k3eval.metrics.cache import FeatureCache
    from k3eval.metrics.extract import ClipImageExtractor, ImageItem, extract_images, extract_texts
    from k3eval.metrics.functional import clip_score

    files = sorted(Path(folder).glob("*.png"))
    texts = [f"a photo of object number {i} on a wooden table" for i in range(len(files))][:n_text]
    ext = ClipImageExtractor("transformers", "synthetic", "synthetic", batch_size=50)
    ext.encoder()  # model loading is outside the timed part, as for torchmetrics
    t = time.perf_counter()
    items = [ImageItem(str(i), f) for i, f in enumerate(files)]
    img = extract_images(ext, items, FeatureCache(ext.fingerprint, None)).feats
    txt = extract_texts(ext.text_extractor(), texts, FeatureCache(ext.text_extractor().fingerprint, None))
    scores = clip_score(img, txt)
    sec = time.perf_counter() - t
    return {"score": float(scores.mean()), "seconds": sec, "images_per_s": len(files) / sec}


def tool_clip_torchmetrics(folder: str, n_text: int) -> dict:
    import torch
    from torchmetrics.multimodal import CLIPScore
    from transformers import CLIPModel, CLIPProcessor

    from k3eval.metrics.clip import synthetic_transformers_clip

    src = str(synthetic_transformers_clip())

    class TensorFeatures(torch.nn.Module):  # transformers >= 5 returns model outputs; torchmetrics 1.9 wants tensors
        def __init__(self, m):
            super().__init__()
            self.m, self.config = m, m.config

        def get_image_features(self, *a, **k):
            return self.m.get_image_features(*a, **k).pooler_output

        def get_text_features(self, *a, **k):
            return self.m.get_text_features(*a, **k).pooler_output

    metric = CLIPScore(model_name_or_path=lambda: (TensorFeatures(CLIPModel.from_pretrained(src)),
                                                   CLIPProcessor.from_pretrained(src)))
    files = sorted(Path(folder).glob("*.png"))
    texts = [f"a photo of object number {i} on a wooden table" for i in range(len(files))][:n_text]
    t = time.perf_counter()
    for i, x in enumerate(_load_batches(folder, 50)):
        metric.update(list(x), texts[i * 50:i * 50 + len(x)])
    score = float(metric.compute())
    sec = time.perf_counter() - t
    return {"score": score, "seconds": sec, "images_per_s": len(files) / sec}


def child(args) -> None:
    fn = {"k3eval": tool_k3eval, "torch_fidelity": tool_torch_fidelity, "torchmetrics": tool_torchmetrics,
          "clip_k3eval": tool_clip_k3eval, "clip_torchmetrics": tool_clip_torchmetrics}[args.tool]
    res = fn(*json.loads(args.tool_args))
    res["peak_rss_mb"] = _rss_mb()
    print("RESULT " + json.dumps(res))


def run_child(tool: str, *targs) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, __file__, "--tool", tool, "--tool-args", json.dumps(list(targs))],
                         capture_output=True, text=True, env=env, check=False)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{tool} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][7:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000, help="images per set (default 1000)")
    p.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    p.add_argument("--out", default=str(HERE / "results" / "metrics_speed"))
    p.add_argument("--tool")
    p.add_argument("--tool-args")
    args = p.parse_args()
    if args.tool:
        child(args)
        return

    from k3eval.utils import hardware_info, now_iso, package_versions

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["K3EVAL_CACHE"] = str(Path(tmp) / "k3eval-cache")
        os.environ["HF_HUB_OFFLINE"] = "1"
        from k3eval.metrics.clip import synthetic_transformers_clip
        from k3eval.metrics.weights import synthetic_inception_path

        weights = str(synthetic_inception_path())
        synthetic_transformers_clip()
        a, b = Path(tmp) / "ref", Path(tmp) / "gen"
        make_images(a, args.n, args.size, seed=1)
        make_images(b, args.n, args.size, seed=2)
        cache = str(Path(tmp) / "features")
        load_before = os.getloadavg()
        res = {
            "k3eval_first": run_child("k3eval", str(a), str(b), weights, cache, "tf"),
            "k3eval_cached": run_child("k3eval", str(a), str(b), weights, cache, "tf"),
            "torch_fidelity": run_child("torch_fidelity", str(a), str(b), weights),
            "torchmetrics": run_child("torchmetrics", str(a), str(b), weights),
            "k3eval_clean_first": run_child("k3eval", str(a), str(b), weights, "none", "clean"),
            "clip_k3eval": run_child("clip_k3eval", str(b), args.n),
            "clip_torchmetrics": run_child("clip_torchmetrics", str(b), args.n),
        }
        load_after = os.getloadavg()
    first = res["k3eval_first"]["seconds"]
    ratios = {
        "fid_first_vs_torch_fidelity": first / res["torch_fidelity"]["seconds"],
        "fid_first_vs_torchmetrics": first / res["torchmetrics"]["seconds"],
        "fid_cache_speedup": first / res["k3eval_cached"]["seconds"],
        "clip_throughput_vs_torchmetrics": res["clip_k3eval"]["images_per_s"]
        / res["clip_torchmetrics"]["images_per_s"],
        "fid_rel_diff_vs_torch_fidelity": abs(res["k3eval_first"]["fid"] - res["torch_fidelity"]["fid"])
        / abs(res["torch_fidelity"]["fid"]),
        "fid_rel_diff_vs_torchmetrics": abs(res["k3eval_first"]["fid"] - res["torchmetrics"]["fid"])
        / abs(res["torchmetrics"]["fid"]),
    }
    doc = {"benchmark": "metrics_speed", "date": now_iso(), "setting": {"images_per_set": args.n, "size": args.size,
           "sets": 2, "format": "PNG RGB 8-bit", "weights": "synthetic TF-ported Inception (same file for all)",
           "clip": "synthetic transformers CLIP (same folder for both)", "k3eval_protocol": "tf",
           "batch_size": 50}, "results": res, "ratios": ratios, "hardware": hardware_info(),
           "load_average_before_after": [load_before, load_after],
           "packages": package_versions(["clean-fid", "pytorch-fid"])}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    out.with_suffix(".md").write_text(render_md(doc))
    print(render_md(doc))


def render_md(doc: dict) -> str:
    r, q, s = doc["results"], doc["ratios"], doc["setting"]
    lines = [f"# metrics_speed ({doc['date']})", "",
             f"FID between two sets of {s['images_per_set']} PNGs at {s['size']}x{s['size']}, same synthetic "
             "Inception file for every tool; each tool in its own process. CPU: "
             f"{doc['hardware'].get('cpu_count')} cores (load average before/after "
             f"{doc['load_average_before_after'][0][0]:.1f}/{doc['load_average_before_after'][1][0]:.1f}).", "",
             "| measurement | seconds | peak RSS MB | FID / score |", "|---|---:|---:|---:|"]
    for k, v in r.items():
        val = v.get("fid", v.get("score"))
        lines.append(f"| {k} | {v['seconds']:.1f} | {v['peak_rss_mb']:.0f} | {val:.4f} |")
    lines += ["", "| ratio | value |", "|---|---:|"] + [f"| {k} | {v:.4g} |" for k, v in q.items()]
    lines += ["", "Reproduce: `python benchmarks/perf/metrics_speed.py --n "
              f"{s['images_per_set']} --size {s['size']}`.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
