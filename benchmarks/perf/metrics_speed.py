"""Speed and memory of FID end to end and of CLIP score: k3eval against torch-fidelity and torchmetrics.

One run, one machine, the same weights file and the same images for every tool:
- FID between two folders of N PNGs (made here, seeded) with the synthetic TF-ported Inception file: k3eval (`tf`
  protocol, empty feature cache: the first folder as a reference of running statistics, as `k3eval score --reference
  FOLDER --metrics fid` does, the second one's features), k3eval again from its feature cache, torch-fidelity
  `calculate_metrics`, torchmetrics `FrechetInceptionDistance(antialias=False)`. Speed does not depend on the
  weights' values.
- Memory scaling: peak memory of the k3eval first run and of torch-fidelity at several set sizes (`--memory-n`,
  default 200, 1000 and 3000 images per set). Sets larger than N repeat the pixels of the N images, each file made
  distinct by a PNG text chunk with its number, so every file has its own sha256 and is decoded and featurised on
  its own.
- Where the time goes: decoding, resizing and the network per image, each measured alone in one process, for
  k3eval's and torch-fidelity's network, and the FID arithmetic at N.
- CLIP score throughput on the same synthetic transformers CLIP: k3eval's transformers backend against torchmetrics
  `CLIPScore`.
Each measurement runs in its own subprocess. Memory is reported three ways: the peak RSS of the tool's main
process (its VmHWM: exact), and the peaks of the sum of RSS and of PSS over the process and all its descendants
(decoding workers: k3eval's worker processes, torch-fidelity's DataLoader workers), sampled every 0.5 s (PSS every
2 s: reading it costs the kernel a page-table walk). RSS counts pages shared between processes once per process;
PSS splits them between the processes that share them.

    python benchmarks/perf/metrics_speed.py                 # the issue's setting: 1000 PNGs at 512x512
    python benchmarks/perf/metrics_speed.py --n 100 --size 512 --memory-n ""

Writes benchmarks/perf/results/metrics_speed.json and .md. Not part of `make test`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
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


def derive_images(base: Path, folder: Path, m: int) -> None:
    """`m` PNGs in `folder`: file k has the pixels of base file k mod N; files past N get a tEXt chunk with their
    number after the header, so that each file's bytes (and sha256) differ while decoding gives the same pixels."""
    files = sorted(base.glob("*.png"))
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(m):
        src = files[k % len(files)]
        if k < len(files):
            shutil.copyfile(src, folder / f"{k:05d}.png")
            continue
        data = src.read_bytes()
        text = b"k3eval-copy\x00" + str(k).encode()
        chunk = struct.pack(">I", len(text)) + b"tEXt" + text + struct.pack(">I", zlib.crc32(b"tEXt" + text))
        head = 8 + 25  # PNG signature, IHDR chunk
        (folder / f"{k:05d}.png").write_bytes(data[:head] + chunk + data[head:])


def _rss_mb() -> float:
    """Peak resident memory of this process: VmHWM, the high-water mark of its own address space. (ru_maxrss is not
    used: Linux carries it across exec, so a child started by this script would report at least the RSS this script
    had when it forked.)"""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024.0


def tool_k3eval(a: str, b: str, weights: str, cache: str, protocol: str) -> dict:
    """FID of folder b against folder a as `k3eval score` computes it against a folder reference: a's Inception
    features streamed into running statistics, b's features kept; both through the feature cache."""
    from k3eval.metrics import functional as F
    from k3eval.metrics.cache import FeatureCache
    from k3eval.metrics.extract import InceptionExtractor, default_workers, extract_images
    from k3eval.metrics.inception import POOL_DIM
    from k3eval.metrics.reference import image_items, reference_from_images
    from k3eval.metrics.weights import resolve_inception_weights

    t = time.perf_counter()
    ext = InceptionExtractor(resolve_inception_weights(weights), protocol, batch_size=50)
    root = None if cache == "none" else cache
    ref = reference_from_images(a, {"inception": ext}, root, features=False)
    fb = extract_images(ext, image_items(b, root)[0], FeatureCache(ext.fingerprint, root)).feats[:, :POOL_DIM]
    fid = F.frechet_distance_to_features(ref.mu, ref.sigma, fb)
    return {"fid": fid, "seconds": time.perf_counter() - t, "workers": default_workers()}


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


def _per_image(fn, items, repeat: int = 1) -> float:
    """Milliseconds per item of `fn` over `items` (best of `repeat` passes)."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for x in items:
            fn(x)
        best = min(best, time.perf_counter() - t)
    return 1000.0 * best / len(items)


def tool_profile(folder: str, weights: str, n: int, batch: int) -> dict:
    """Where the time of a first FID run goes, each step alone in this process (torch with its default threads):
    ms per image for decoding, the tf resize, the two networks on one batch, and seconds for the FID arithmetic of
    n images per set."""
    import numpy as np
    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from k3eval.metrics import functional as F
    from k3eval.metrics.extract import InceptionExtractor
    from k3eval.metrics.preprocess import inception_input_hwc, load_rgb8
    from k3eval.metrics.weights import resolve_inception_weights

    files = sorted(Path(folder).glob("*.png"))[:batch]
    images = [load_rgb8(f) for f in files]
    out: dict = {"images": len(files), "torch_threads": torch.get_num_threads()}
    out["decode_ms"] = _per_image(load_rgb8, files, 2)
    out["resize_tf_ms"] = _per_image(lambda im: inception_input_hwc(im, "tf"), images, 2)
    ext = InceptionExtractor(resolve_inception_weights(weights), "tf", batch_size=batch)
    prepared = [inception_input_hwc(im, "tf") for im in images]
    ext.run(prepared[:4])  # load and warm up
    out["k3eval_network_ms"] = _per_image(ext.run, [prepared]) / len(prepared)
    fe = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                     feature_extractor_weights_path=weights)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        fe(x[:4])
        out["torch_fidelity_network_ms"] = _per_image(fe, [x]) / len(images)
    rng = np.random.default_rng(0)
    fa, fb = (rng.standard_normal((n, 2048)).astype(np.float32) for _ in range(2))
    t = time.perf_counter()
    mu, sigma = F.gaussian_stats(fa)
    F.frechet_distance_to_features(mu, sigma, fb)
    out["fid_arithmetic_s"] = time.perf_counter() - t
    return {**out, "seconds": 0.0}


def child(args) -> None:
    fn = {"k3eval": tool_k3eval, "torch_fidelity": tool_torch_fidelity, "torchmetrics": tool_torchmetrics,
          "clip_k3eval": tool_clip_k3eval, "clip_torchmetrics": tool_clip_torchmetrics,
          "profile": tool_profile}[args.tool]
    res = fn(*json.loads(args.tool_args))
    res["peak_rss_mb"] = _rss_mb()
    print("RESULT " + json.dumps(res))


def _tree(pid: int) -> list[int]:
    """`pid` and all its descendants (from the parent ids in /proc)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = [pid], [pid]
    while frontier:
        frontier = [c for c, p in parent.items() if p in frontier]
        tree += frontier
    return tree


def _rss_of(pids: list[int]) -> float:
    """Sum of resident memory in MB (from /proc/PID/statm: cheap enough to read every 0.5 s)."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * page
        except (OSError, IndexError, ValueError):
            continue  # ended meanwhile
    return total / 2**20


def _pss_of(pids: list[int]) -> float:
    """Sum of proportional set size in MB (/proc/PID/smaps_rollup walks the page tables: read every 2 s only)."""
    total = 0.0
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += sum(int(line.split()[1]) for line in f if line.startswith("Pss:")) / 1024.0
        except (OSError, IndexError, ValueError):
            continue
    return total


def run_child(tool: str, *targs) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, __file__, "--tool", tool, "--tool-args", json.dumps(list(targs))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak = {"rss": 0.0, "pss": 0.0}
    done = threading.Event()

    def sample() -> None:
        tick = 0
        while not done.is_set():
            pids = _tree(proc.pid)
            peak["rss"] = max(peak["rss"], _rss_of(pids))
            if tick % 4 == 0:
                peak["pss"] = max(peak["pss"], _pss_of(pids))
            tick += 1
            done.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    done.set()
    sampler.join()
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{tool} failed:\n{stderr[-3000:]}")
    return {**json.loads(lines[-1][7:]), "peak_tree_rss_mb": peak["rss"], "peak_tree_pss_mb": peak["pss"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000, help="images per set (default 1000)")
    p.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    p.add_argument("--memory-n", default="200,1000,3000",
                   help="set sizes of the memory-scaling measurement, comma-separated ('' to skip it)")
    p.add_argument("--out", default=str(HERE / "results" / "metrics_speed"))
    p.add_argument("--render", action="store_true", help="only write the .md again from the .json of --out")
    p.add_argument("--tool")
    p.add_argument("--tool-args")
    args = p.parse_args()
    if args.tool:
        child(args)
        return
    if args.render:
        out = Path(args.out)
        out.with_suffix(".md").write_text(render_md(json.loads(out.with_suffix(".json").read_text())))
        return

    from k3eval.utils import hardware_info, now_iso, package_versions

    memory_n = [int(x) for x in args.memory_n.split(",") if x.strip()]
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
        profile = run_child("profile", str(b), weights, args.n, 50)
        memory = []
        for m in memory_n:
            if m == args.n:
                k3, tf = res["k3eval_first"], res["torch_fidelity"]
            else:
                ma, mb = Path(tmp) / f"ref{m}", Path(tmp) / f"gen{m}"
                derive_images(a, ma, m)
                derive_images(b, mb, m)
                k3 = run_child("k3eval", str(ma), str(mb), weights, str(Path(tmp) / f"features{m}"), "tf")
                tf = run_child("torch_fidelity", str(ma), str(mb), weights)
                shutil.rmtree(ma)
                shutil.rmtree(mb)
            memory.append({"images_per_set": m, "k3eval": k3, "torch_fidelity": tf})
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
    if memory:
        small, large = memory[0], memory[-1]
        for key in ("peak_rss_mb", "peak_tree_pss_mb"):
            ratios[f"{key}_largest_vs_torch_fidelity"] = large["k3eval"][key] / large["torch_fidelity"][key]
            ratios[f"{key}_largest_vs_smallest"] = large["k3eval"][key] / small["k3eval"][key]
    doc = {"benchmark": "metrics_speed", "date": now_iso(), "setting": {"images_per_set": args.n, "size": args.size,
           "sets": 2, "format": "PNG RGB 8-bit", "weights": "synthetic TF-ported Inception (same file for all)",
           "clip": "synthetic transformers CLIP (same folder for both)", "k3eval_protocol": "tf",
           "batch_size": 50, "memory_images_per_set": memory_n}, "results": res, "ratios": ratios,
           "memory_scaling": memory, "profile": profile, "hardware": hardware_info(),
           "load_average_before_after": [load_before, load_after],
           "packages": package_versions(["clean-fid", "pytorch-fid"])}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    out.with_suffix(".md").write_text(render_md(doc))
    print(render_md(doc))


def render_md(doc: dict) -> str:
    r, q, s, pr = doc["results"], doc["ratios"], doc["setting"], doc["profile"]
    lines = [f"# metrics_speed ({doc['date']})", "",
             f"FID between two sets of {s['images_per_set']} PNGs at {s['size']}x{s['size']}, same synthetic "
             "Inception file for every tool; each tool in its own process. CPU: "
             f"{doc['hardware'].get('cpu_count')} cores (load average before/after "
             f"{doc['load_average_before_after'][0][0]:.1f}/{doc['load_average_before_after'][1][0]:.1f}). Memory: "
             "peak RSS of the main process, and peaks of the sums of RSS and PSS over the process and its "
             "descendants (decoding workers).", "",
             "| measurement | seconds | peak RSS MB | tree RSS MB | tree PSS MB | FID / score |",
             "|---|---:|---:|---:|---:|---:|"]
    for k, v in r.items():
        val = v.get("fid", v.get("score"))
        lines.append(f"| {k} | {v['seconds']:.1f} | {v['peak_rss_mb']:.0f} | {v['peak_tree_rss_mb']:.0f} | "
                     f"{v['peak_tree_pss_mb']:.0f} | {val:.4f} |")
    lines += ["", "| ratio | value |", "|---|---:|"] + [f"| {k} | {v:.4g} |" for k, v in q.items()]
    if doc["memory_scaling"]:
        lines += ["", "Memory scaling (first run, `tf`; MB):", "",
                  "| images per set | k3eval seconds | k3eval peak RSS | k3eval tree PSS | torch-fidelity seconds | "
                  "torch-fidelity peak RSS | torch-fidelity tree PSS |", "|---:|---:|---:|---:|---:|---:|---:|"]
        for m in doc["memory_scaling"]:
            k3, tf = m["k3eval"], m["torch_fidelity"]
            lines.append(f"| {m['images_per_set']} | {k3['seconds']:.1f} | {k3['peak_rss_mb']:.0f} | "
                         f"{k3['peak_tree_pss_mb']:.0f} | {tf['seconds']:.1f} | {tf['peak_rss_mb']:.0f} | "
                         f"{tf['peak_tree_pss_mb']:.0f} |")
    lines += ["", f"Where the time goes (one process, {pr['images']} images, torch threads {pr['torch_threads']}):",
              "", "| step | ms per image |", "|---|---:|",
              f"| decode PNG | {pr['decode_ms']:.1f} |", f"| tf resize to 299 | {pr['resize_tf_ms']:.1f} |",
              f"| k3eval network (channels-last, batch {pr['images']}) | {pr['k3eval_network_ms']:.1f} |",
              f"| torch-fidelity network incl. its resize (batch {pr['images']}) | "
              f"{pr['torch_fidelity_network_ms']:.1f} |",
              "", f"FID arithmetic at {s['images_per_set']} images per set: {pr['fid_arithmetic_s']:.2f} s."]
    images = 2 * s["images_per_set"]
    net = images * pr["k3eval_network_ms"] / 1000.0
    first, tf = r["k3eval_first"]["seconds"], r["torch_fidelity"]["seconds"]
    lines += ["", f"What bounds the first run: its network alone, on the {images} images, takes {net:.0f} s "
              f"({100 * net / first:.0f} % of the k3eval first run, {net / tf:.2f}x torch-fidelity's whole run); "
              f"decoding and resizing ({images * (pr['decode_ms'] + pr['resize_tf_ms']) / 1000.0:.0f} s of CPU) run "
              "in the worker processes meanwhile, on the same cores. torch-fidelity's network alone (its resize "
              f"included) takes {images * pr['torch_fidelity_network_ms'] / 1000.0:.0f} s."]
    lines += ["", "Reproduce: `python benchmarks/perf/metrics_speed.py --n "
              f"{s['images_per_set']} --size {s['size']} --memory-n "
              f"{','.join(map(str, s['memory_images_per_set'])) or chr(34) * 2}`.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
