"""GenEval scoring speed: k3eval's batched, cached score stage against GenEval's official-rules loop run the way the
official `evaluate_images.py` runs it (one image at a time through the detector, post-processed as mmdet does it: a
full-size mask for each of the top 100 (query, class) pairs; for every colour clause a fresh DataLoader with 4 workers
over that clause's crops), with the same tiny detector and CLIP, on the same machine, in the same run, each in its
own process (so neither warms the other's caches); all must give the same verdicts. A third scorer, the same
per-image loop with k3eval's post-processing (masks only for pairs above the lowest threshold), separates what the
post-processing saves from what batching and the shared crop pass save.

    python benchmarks/perf/compositional_speed.py                      # CPU: 96 images (48 prompts x 2) at 256 px
    python benchmarks/perf/compositional_speed.py --gpu --device cuda  # GPU: 553 x 4 images, real-size Mask2Former
                                                                        # Swin-S with random weights: time, peak memory

Writes benchmarks/perf/results/compositional_speed.json and .md (`--gpu` adds a `gpu` entry). Not part of `make test`.
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
sys.path.insert(0, str(ROOT / "tests" / "metrics"))  # the per-image reference loop and run builders of the tests


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the DataLoader workers)."""
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                  resource.getrusage(resource.RUSAGE_CHILDREN)))


def prompts(per_task: int) -> list[str]:
    """GenEval prompt ids: `per_task` of each task without colours, and for the colour tasks every prompt whose colour
    clause names a class the synthetic detector finds (cat, cup, bench, person), so that, as with a real detector on
    real images, colour clauses are decided and the official loop builds its per-clause loaders."""
    from k3eval.metrics import geneval_rules as R
    from k3eval.metrics.geneval import shipped_metadata
    from k3eval.metrics.vision_models import FAVOURED

    out: dict[str, list[str]] = {}
    for pid, meta in shipped_metadata().items():
        ids = out.setdefault(meta["tag"], [])
        if meta["tag"] in ("colors", "color_attr"):
            if set(R.color_classes(meta)) & set(FAVOURED):
                ids.append(pid)
        elif len(ids) < per_task:
            ids.append(pid)
    return [pid for ids in out.values() for pid in ids]


def settings(scale: list[int], detector: str) -> dict:
    return {"detector": detector, "clip_pretrained": "synthetic", "detector_scale": scale}


def tool_k3eval(run: str, scale: list[int], detector: str, device: str, batch: int) -> dict:
    import pandas as pd

    from k3eval.metrics.score import ScoreOptions, score_run

    t, cpu = time.perf_counter(), _cpu_seconds()
    score_run(run, ScoreOptions(metrics=["geneval"], cache=None, bootstrap=0, device=device, batch_size=batch,
                                clip_pretrained="synthetic", settings={"geneval": settings(scale, detector)}))
    seconds, cpu = time.perf_counter() - t, _cpu_seconds() - cpu
    per = pd.read_parquet(Path(run) / "scores" / "per_image.parquet")
    return {"seconds": seconds, "cpu_seconds": cpu, "rss_mb": _rss_mb(), "images": len(per),
            "verdicts": per["geneval"].tolist(), "reasons": per["geneval_reason"].tolist(),
            "gpu_peak_mb": _gpu_peak(device)}


def tool_official(run: str, scale: list[int], detector: str, device: str, batch: int, mmdet: bool = True) -> dict:
    import pandas as pd
    from geneval_reference import official_loop

    from k3eval.metrics.clip import load_clip
    from k3eval.metrics.geneval import Geneval, make_detector, shipped_metadata

    t, cpu = time.perf_counter(), _cpu_seconds()
    s = Geneval(settings(scale, detector)).settings
    man = pd.read_parquet(Path(run) / "manifest.parquet")
    stats: dict = {}
    out = official_loop([Path(run) / p for p in man["path"]], [shipped_metadata()[p] for p in man["prompt_id"]],
                        make_detector(s, device), load_clip("open_clip", "ViT-L-14", "synthetic", device), s.rules(),
                        workers=4, stats=stats, mmdet_postprocess=mmdet)
    return {"seconds": time.perf_counter() - t, "cpu_seconds": _cpu_seconds() - cpu, "rss_mb": _rss_mb(),
            "images": len(out),
            "verdicts": [float(c) for c, _ in out], "reasons": [r for _, r in out], "gpu_peak_mb": _gpu_peak(device),
            "loaders": stats.get("loaders", 0)}


def _gpu_peak(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.max_memory_allocated() / 2**20


def real_size_mask2former(folder: Path) -> str:
    """Mask2Former Swin-S (the architecture of facebook/mask2former-swin-small-coco-instance) with seeded random
    weights, saved with save_pretrained: speed and memory do not depend on the weights' values."""
    import torch
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessor,
        SwinConfig,
    )

    from k3eval.metrics.vision_models import COCO_NAMES

    torch.manual_seed(0)
    backbone = SwinConfig(embed_dim=96, depths=[2, 2, 18, 2], num_heads=[3, 6, 12, 24], window_size=7,
                          out_features=["stage1", "stage2", "stage3", "stage4"])
    cfg = Mask2FormerConfig(backbone_config=backbone, num_labels=80, id2label=dict(enumerate(COCO_NAMES)),
                            use_pretrained_backbone=False)
    Mask2FormerForUniversalSegmentation(cfg).save_pretrained(folder)
    Mask2FormerImageProcessor().save_pretrained(folder)
    return str(folder)


def child(args) -> None:
    # libraries imported before the clock starts: both scorers need the same ones, and import time is not scoring
    import open_clip  # noqa: F401
    import pandas  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers import Mask2FormerForUniversalSegmentation  # noqa: F401  (a lazy import of about 1 s otherwise)

    import k3eval.metrics.geneval  # noqa: F401
    import k3eval.metrics.score  # noqa: F401

    res = {"k3eval": tool_k3eval, "official": tool_official}[args.tool](*json.loads(args.tool_args))
    print("RESULT " + json.dumps(res))


def run_child(tool: str, *targs) -> dict:
    out = subprocess.run([sys.executable, __file__, "--tool", tool, "--tool-args", json.dumps(list(targs))],
                         capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"{tool} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][7:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-task", type=int, default=6, help="prompts of each task without colours")
    p.add_argument("--samples", type=int, default=3)
    p.add_argument("--size", type=int, default=256, help="image side in pixels")
    p.add_argument("--scale", default="384,256", help="detector input scale (long,short); GPU mode: 1333,800")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3, help="runs of each scorer, alternated; the fastest counts")
    p.add_argument("--device", default="cpu")
    p.add_argument("--gpu", action="store_true", help="553 prompts x 4 images, real-size Mask2Former, on --device")
    p.add_argument("--out", default=str(HERE / "results" / "compositional_speed"))
    p.add_argument("--tool", help=argparse.SUPPRESS)
    p.add_argument("--tool-args", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.tool:
        return child(args)

    from metrics_helpers import make_set_run

    from k3eval.metrics.geneval import shipped_metadata
    from k3eval.utils import hardware_info, now_iso, package_versions

    out_json = Path(args.out).with_suffix(".json")
    result = json.loads(out_json.read_text()) if out_json.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["K3EVAL_CACHE"] = str(Path(tmp) / "cache")
        samples = 4 if args.gpu else args.samples
        scale = [1333, 800] if args.gpu else [int(v) for v in args.scale.split(",")]
        detector = real_size_mask2former(Path(tmp) / "m2f-swin-s") if args.gpu else "synthetic"
        # built once here, so neither scorer's time includes making the seeded weights files
        from k3eval.metrics.clip import synthetic_open_clip_checkpoint
        from k3eval.metrics.vision_models import build_synthetic

        build_synthetic("mask2former")
        synthetic_open_clip_checkpoint()
        ids = list(shipped_metadata()) if args.gpu else prompts(args.per_task)
        run = make_set_run(Path(tmp) / "run", "geneval", ids, samples=samples, size=args.size)
        load_before = os.getloadavg()[0]
        # alternated and repeated: on a shared machine the load drifts; each scorer keeps its fastest run
        mines, refs, halves = [], [], []
        for _ in range(1 if args.gpu else args.repeats):
            mines.append(run_child("k3eval", str(run), scale, detector, args.device, args.batch))
            if not args.gpu:
                refs.append(run_child("official", str(run), scale, detector, args.device, args.batch))
                halves.append(run_child("official", str(run), scale, detector, args.device, args.batch, False))
        mine = min(mines, key=lambda r: r["seconds"])
        ref = min(refs, key=lambda r: r["seconds"]) if refs else None
        half = min(halves, key=lambda r: r["seconds"]) if halves else None
        load_after = os.getloadavg()[0]
    entry = {"date": now_iso(), "images": mine["images"], "image_size": args.size, "detector_scale": scale,
             "device": args.device, "batch_size": args.batch, "load_average_before_after": [load_before, load_after],
             "k3eval": {k: mine[k] for k in ("seconds", "cpu_seconds", "rss_mb", "gpu_peak_mb")},
             "k3eval_images_per_second": mine["images"] / mine["seconds"]}
    if ref is not None:
        entry["official_loop"] = {k: ref[k] for k in ("seconds", "cpu_seconds", "rss_mb")}
        entry["per_image_k3eval_postprocess"] = {k: half[k] for k in ("seconds", "cpu_seconds", "rss_mb")}
        entry["all_seconds"] = {"k3eval": [r["seconds"] for r in mines], "official_loop": [r["seconds"] for r in refs],
                                "per_image_k3eval_postprocess": [r["seconds"] for r in halves]}
        entry["speedup_vs_per_image_k3eval_postprocess"] = half["seconds"] / mine["seconds"]
        entry["official_images_per_second"] = ref["images"] / ref["seconds"]
        entry["speedup"] = ref["seconds"] / mine["seconds"]
        entry["cpu_time_ratio"] = ref["cpu_seconds"] / mine["cpu_seconds"]
        entry["same_verdicts"] = all(mine["verdicts"] == r["verdicts"] and mine["reasons"] == r["reasons"]
                                     for r in (ref, half))
        entry["correct_fraction"] = sum(mine["verdicts"]) / len(mine["verdicts"])
        entry["official_colour_loaders"] = ref["loaders"]
    result.update({"hardware": hardware_info(), "versions": package_versions(["open-clip-torch", "Pillow"]),
                   "gpu" if args.gpu else "cpu": entry,
                   "command": "python benchmarks/perf/compositional_speed.py" + (" --gpu" if args.gpu else "")})
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=1) + "\n")
    write_markdown(result, out_json.with_suffix(".md"))
    print(out_json.with_suffix(".md").read_text())


def write_markdown(result: dict, path: Path) -> None:
    lines = ["# compositional_speed", ""]
    cpu = result.get("cpu")
    if cpu:
        def row(name: str, r: dict) -> str:
            return (f"| {name} | {r['seconds']:.1f} | {cpu['images'] / r['seconds']:.2f} | {r['cpu_seconds']:.1f} | "
                    f"{r['rss_mb']:.0f} |")

        runs = cpu["all_seconds"]
        lines += [f"GenEval on {cpu['images']} images ({cpu['image_size']} px, detector input {cpu['detector_scale']}),"
                  f" synthetic Mask2Former and CLIP, {cpu['device']}, {cpu['date']}; CPU load average before/after "
                  f"{cpu['load_average_before_after'][0]:.1f}/{cpu['load_average_before_after'][1]:.1f}.", "",
                  "| scorer | seconds | images/s | CPU seconds | peak RSS MB |", "|---|---:|---:|---:|---:|",
                  row("k3eval (batched, cached stage)", cpu["k3eval"]),
                  row("official loop (per image, mmdet post-processing, 4-worker loader per colour clause)",
                      cpu["official_loop"]),
                  row("per-image loop with k3eval's post-processing", cpu["per_image_k3eval_postprocess"]), "",
                  f"Speed-up against the official loop (wall clock): **{cpu['speedup']:.2f}x**; CPU time ratio "
                  f"{cpu['cpu_time_ratio']:.2f}. Against the per-image loop that already uses k3eval's "
                  f"post-processing: {cpu['speedup_vs_per_image_k3eval_postprocess']:.2f}x (what batching and one "
                  "crop pass per batch save on their own). Same verdicts and reasons on every image, all three: "
                  f"{cpu['same_verdicts']}. The official loop built {cpu['official_colour_loaders']} colour-clause "
                  f"loaders (4 workers each). Each scorer ran {len(runs['k3eval'])} times in its own process, "
                  "alternating, the fastest run counted (all, in seconds: k3eval "
                  f"{', '.join(f'{x:.1f}' for x in runs['k3eval'])}; official loop "
                  f"{', '.join(f'{x:.1f}' for x in runs['official_loop'])}; per-image loop with k3eval's "
                  f"post-processing {', '.join(f'{x:.1f}' for x in runs['per_image_k3eval_postprocess'])}); times "
                  "include loading the models and reading the images, not importing the libraries.", "",
                  "Where the time goes: mmdet makes a full-size mask, its mean probability and its box for each of "
                  "the top 100 (query, class) pairs of every image, and the evaluation script then drops all but "
                  "those above 0.3 (0.9 for counting); k3eval drops a pair before making its mask when its class "
                  "probability alone is at or below the lowest threshold (its score is that probability times a "
                  "mask score of at most 1, so it could not pass), which gives the same detections above the "
                  "threshold (`tests/metrics/test_geneval.py::"
                  "test_batched_detections_equal_mmdet_post_processing_of_every_query`). On a CPU batching itself "
                  "saves little (the detector's work per image is the same); on a GPU, where a batch of one leaves "
                  "the device mostly idle, it is the main saving.", ""]
        if cpu["speedup"] < 3:
            lines += ["Below the 3x target in this run; on a shared 2-core machine the load moves every figure by up "
                      "to 2x between runs.", ""]
    gpu = result.get("gpu")
    if gpu:
        lines += [f"GPU ({gpu['device']}): {gpu['images']} images with the real-size Mask2Former Swin-S (random "
                  f"weights) at {gpu['detector_scale']}: {gpu['k3eval']['seconds']:.1f} s, "
                  f"{gpu['k3eval_images_per_second']:.1f} images/s, peak GPU memory "
                  f"{gpu['k3eval']['gpu_peak_mb']:.0f} MB.", ""]
    else:
        lines += ["GPU: not measured (no GPU was lent to this task); run with `--gpu --device cuda` to add it.", ""]
    lines += [f"Reproduce: `{result['command']}`."]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
