"""Everything k3eval measures on a GPU, in one process, downloading nothing; sized to finish within 8 minutes on one
H200 (so it can run again within 15 minutes of GPU time).

    python benchmarks/perf/gpu_suite.py            # GPU: full-size networks, 1024x1024, 2 x 2,000 images for FID
    python benchmarks/perf/gpu_suite.py --small    # CPU: reduced sizes, under 3 minutes
    python benchmarks/perf/gpu_suite.py --tiny --out DIR   # smaller still (the test that keeps this script working)

Sections, each figure a ratio against a reference measured in the same run:
1. U-Net: the full-size `Kandinsky3UNet()` (3.0) and a second one with its own seeded weights (Flash has the same
   architecture: one key list), seeded random weights built on the device; bf16 and fp16, batch 1 and 2 (batch 2 is
   one guided step), diffusers' SDPA attention and its classic processor, and `torch.compile` (bf16, batch 2, SDPA);
   seconds per evaluation, TFLOP/s (FLOPs counted by `torch.utils.flop_counter`) against a bf16 matmul, peak memory.
2. End to end: `kandinsky3` (50 guided steps) against `kandinsky3-flash` (4 steps) through the real generator
   classes on the same prompts, with a random-weight T5 of the FLAN-UL2 encoder config (built on the device in
   bf16) and the real MoVQ config; the report claims Flash is "almost 20 times" faster.
3. FID feature extraction, images/s, on one synthetic Inception file and 2 x N generated PNGs: k3eval
   (`InceptionExtractor` + `extract_images`, as `k3eval score` runs them, empty cache), torch-fidelity
   (`calculate_metrics`) and torchmetrics (`FrechetInceptionDistance`), with the FID each gets.
4. `k3eval generate` against a bare diffusers loop (same tiny pipeline, latents and step noise; PNGs written).

Random weights: speed does not depend on the weight values. Writes benchmarks/perf/results/gpu_suite.json and .md
(`--out DIR` writes there instead). Reuses the helpers of kandinsky3_speed.py, generation_overhead.py and
metrics_speed.py.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is built here; nothing may be downloaded
# Before torch loads OpenMP (as k3eval/__init__.py does): spinning OpenMP threads on a shared CPU made a tiny U-Net
# pass 10x slower here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import generation_overhead as overhead_mod  # noqa: E402
import kandinsky3_speed as k3s  # noqa: E402
import metrics_speed as metrics_mod  # noqa: E402

#: The full run must end within 8 minutes on an H200; torch.compile (minutes for a 3B U-Net) runs last, and only when
#: this much time is left of that budget.
BUDGET_S = 8 * 60
COMPILE_RESERVE_S = 180
TARGETS = {"flash_speedup_min": 20.0, "unet_fraction_of_matmul_min": 0.40, "fid_vs_torch_fidelity_min": 1.5,
           "apply_to": "one H200, full size"}
FULL = {**k3s.FULL, "dtypes": ["bf16", "fp16"], "batches": [1, 2], "compile": True, "prompts": 3, "repeats": 5,
        "fid_images": 2000, "fid_size": 256, "fid_batch": 64, "overhead_images": 64, "overhead_size": 512}
SMALL = {"unet": {"block_out_channels": (32, 64, 128, 256), "time_embedding_dim": 128, "cross_attention_dim": 256,
                  "encoder_hid_dim": 256, "groups": 16, "attention_head_dim": 32},
         "t5": {"d_model": 256, "d_kv": 32, "d_ff": 512, "num_layers": 2, "num_heads": 8,
                "feed_forward_proj": "gated-silu"},
         "movq": {"block_out_channels": (32, 32, 64, 64), "layers_per_block": 1, "norm_num_groups": 32,
                  "num_vq_embeddings": 1024},
         "size": 128, "matmul_n": 1024, "context_tokens": 16, "dtypes": ["fp32"], "batches": [1, 2],
         "compile": False, "prompts": 1, "repeats": 2, "fid_images": 12, "fid_size": 128, "fid_batch": 12,
         "overhead_images": 16, "overhead_size": 128}
TINY = {**SMALL, "unet": {"block_out_channels": (16, 32, 64, 64), "time_embedding_dim": 32, "cross_attention_dim": 32,
                          "encoder_hid_dim": 32, "groups": 4, "attention_head_dim": 8},
        "t5": {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1, "num_heads": 4,
               "feed_forward_proj": "gated-silu"},
        "size": 64, "matmul_n": 256, "dtypes": ["fp32"], "batches": [1], "repeats": 1, "fid_images": 3,
        "fid_size": 64, "fid_batch": 3, "overhead_images": 4, "overhead_size": 64}


def note(text: str) -> None:
    print(f"gpu_suite: {text}", file=sys.stderr, flush=True)


def sync(device: str) -> None:
    k3s._sync(device)


# ---- 1. U-Net -----------------------------------------------------------------------------------------------------
def set_attention(unet, kind: str) -> None:
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    unet.set_attn_processor(AttnProcessor2_0() if kind == "sdpa" else AttnProcessor())


def unet_section(unet, cfg: dict[str, Any], device: str, matmul: float) -> list[dict[str, Any]]:
    """Every (dtype, attention, batch) of the 3.0 U-Net, then the second U-Net at the first dtype."""
    from diffusers import Kandinsky3UNet

    from k3eval.generators.base import torch_dtype

    rows = []

    def measure(net, label: str, dtype: str, attention: str):
        for batch in cfg["batches"]:
            r = k3s.unet_figures(net, cfg, device, torch_dtype(dtype), batch)
            rows.append({"unet": label, "dtype": dtype, "attention": attention, "compiled": False, **r,
                         "fraction_of_matmul": r["tflops"] / matmul})
            note(f"U-Net {label} {dtype} {attention} batch {batch}: {r['seconds_per_eval']:.4f} s/eval, "
                 f"{r['tflops']:.3g} TFLOP/s")

    for dtype in cfg["dtypes"]:
        unet.to(torch_dtype(dtype))
        for attention in ("sdpa", "classic"):
            set_attention(unet, attention)
            measure(unet, "kandinsky3", dtype, attention)
    first = cfg["dtypes"][0]
    unet.to(torch_dtype(first))
    set_attention(unet, "sdpa")
    with torch.device(device):
        torch.manual_seed(1)
        flash = Kandinsky3UNet(**cfg["unet"]).eval().to(torch_dtype(first))
    measure(flash, "kandinsky3-flash", first, "sdpa")
    del flash
    return rows


def compiled_row(unet, cfg: dict[str, Any], device: str, dtype: str, matmul: float,
                 eager: list[dict[str, Any]]) -> dict[str, Any]:
    """torch.compile (default mode) at the largest batch: compile time, then seconds per evaluation."""
    from k3eval.generators.base import torch_dtype

    batch = max(cfg["batches"])
    latent = cfg["size"] // 8
    g = torch.Generator(device="cpu").manual_seed(batch)
    x = torch.randn(batch, 4, latent, latent, generator=g).to(device, torch_dtype(dtype))
    ctx = torch.randn(batch, cfg["context_tokens"], unet.config.encoder_hid_dim, generator=g).to(device,
                                                                                               torch_dtype(dtype))
    mask = torch.ones(batch, cfg["context_tokens"], dtype=torch.long, device=device)
    t = torch.full((batch,), 500, device=device)
    compiled = torch.compile(unet)

    def run():
        with torch.inference_mode():
            compiled(x, t, encoder_hidden_states=ctx, encoder_attention_mask=mask)

    t0 = time.perf_counter()
    run()
    sync(device)
    compile_s = time.perf_counter() - t0
    torch.cuda.reset_peak_memory_stats()
    sec = k3s._median_seconds(run, device, cfg["repeats"])
    flops = next(r["flops"] for r in eager if r["batch"] == batch and r["dtype"] == dtype)
    note(f"U-Net compiled {dtype} batch {batch}: {sec:.4f} s/eval after {compile_s:.0f} s compiling")
    torch._dynamo.reset()
    return {"unet": "kandinsky3", "dtype": dtype, "attention": "sdpa", "compiled": True, "batch": batch,
            "seconds_per_eval": sec, "seconds_per_image_eval": sec / batch, "flops": flops,
            "tflops": flops / sec / 1e12, "fraction_of_matmul": flops / sec / 1e12 / matmul,
            "compile_seconds": compile_s, "peak_memory_mb": torch.cuda.max_memory_allocated() / 2 ** 20}


# ---- 3. FID feature extraction --------------------------------------------------------------------------------------
def fid_section(cfg: dict[str, Any], device: str, tmp: Path) -> dict[str, Any]:
    """Pool features (2048) of the same 2 x N PNGs with the same Inception file by each tool's own loading path, from
    building the extractor to the last feature: k3eval (`k3eval.metrics.extract.InceptionExtractor` with the `tf`
    protocol + `extract_images` over `k3eval.metrics.reference.image_items`, empty cache, as `k3eval score` runs
    them), torch-fidelity (its feature extractor over its own dataset loader) and torchmetrics
    (`FrechetInceptionDistance.update` on decoded uint8 batches). The features are compared image by image, and the
    FID is computed once from k3eval's (the Frechet distance of 2048-d statistics is not part of extraction)."""
    import numpy as np
    from torch_fidelity.utils import create_feature_extractor, extract_featuresdict_from_input_id
    from torchmetrics.image.fid import FrechetInceptionDistance

    from k3eval.metrics import functional as F
    from k3eval.metrics.cache import FeatureCache
    from k3eval.metrics.extract import InceptionExtractor, extract_images
    from k3eval.metrics.inception import POOL_DIM
    from k3eval.metrics.reference import image_items
    from k3eval.metrics.weights import resolve_inception_weights

    n, batch, cuda = cfg["fid_images"], cfg["fid_batch"], device.startswith("cuda")
    a, b = tmp / "fid-a", tmp / "fid-b"
    t0 = time.perf_counter()
    metrics_mod.make_images(a, n, cfg["fid_size"], seed=1)
    metrics_mod.make_images(b, n, cfg["fid_size"], seed=2)
    note(f"FID: wrote 2 x {n} PNGs in {time.perf_counter() - t0:.0f} s")
    weights = resolve_inception_weights("synthetic")
    out: dict[str, Any] = {"images": 2 * n, "size": cfg["fid_size"], "batch_size": batch,
                           "weights": "synthetic TF-ported Inception (the same file for every tool)",
                           "k3eval_functions": ["k3eval.metrics.weights.resolve_inception_weights",
                                                "k3eval.metrics.extract.InceptionExtractor",
                                                "k3eval.metrics.extract.extract_images",
                                                "k3eval.metrics.reference.image_items",
                                                "k3eval.metrics.cache.FeatureCache",
                                                "k3eval.metrics.functional.gaussian_stats",
                                                "k3eval.metrics.functional.frechet_distance_to_features"]}
    feats: dict[str, np.ndarray] = {}

    def timed(name: str, fn) -> Any:
        sync(device)
        t = time.perf_counter()
        result = fn()
        sync(device)
        sec = time.perf_counter() - t
        out[name] = {"seconds": sec, "images_per_s": 2 * n / sec}
        note(f"FID features {name}: {2 * n / sec:.1f} images/s")
        return result

    def k3eval_features():
        ext = InceptionExtractor(weights, "tf", device=device, batch_size=batch)
        return np.concatenate([extract_images(ext, image_items(f)[0], FeatureCache(ext.fingerprint, None)).feats[
            :, :POOL_DIM] for f in (a, b)])

    def fidelity_features():
        fe = create_feature_extractor("inception-v3-compat", ["2048"], cuda=cuda, verbose=False,
                                      feature_extractor_weights_path=str(weights.path))
        kw = {"input1": str(a), "input2": str(b), "batch_size": batch, "cuda": cuda, "verbose": False}
        return torch.cat([extract_featuresdict_from_input_id(i, fe, **kw)["2048"] for i in (1, 2)]).numpy()

    def torchmetrics_update():
        metric = FrechetInceptionDistance(feature=2048, antialias=False,
                                          feature_extractor_weights_path=str(weights.path)).to(device)
        for folder in (a, b):
            for x in metrics_mod._load_batches(str(folder), batch):
                metric.update(x.to(device), real=folder == a)
        return metric

    # the first tool also pays process-wide set-up (CUDA context, cuDNN); k3eval runs first and again at the end
    timed("k3eval_first", k3eval_features)
    feats["torch_fidelity"] = np.asarray(timed("torch_fidelity", fidelity_features), dtype=np.float64)
    metric = timed("torchmetrics", torchmetrics_update)
    feats["k3eval"] = np.asarray(timed("k3eval", k3eval_features), dtype=np.float64)
    with torch.inference_mode():  # the features update() accumulated, computed again outside the timing to compare
        feats["torchmetrics"] = torch.cat([metric.inception(x.to(device)).double().cpu() for folder in (a, b)
                                           for x in metrics_mod._load_batches(str(folder), batch)]).numpy()
    mu, sigma = F.gaussian_stats(feats["k3eval"][:n])
    out["fid_k3eval"] = float(F.frechet_distance_to_features(mu, sigma, feats["k3eval"][n:]))
    for other in ("torch_fidelity", "torchmetrics"):
        out[f"max_feature_difference_vs_{other}"] = float(np.abs(feats["k3eval"] - feats[other]).max())
        out[f"k3eval_vs_{other}"] = out["k3eval"]["images_per_s"] / out[other]["images_per_s"]
    return out


# ---- 4. generate overhead -------------------------------------------------------------------------------------------
def overhead_section(cfg: dict[str, Any], device: str, tmp: Path) -> dict[str, Any]:
    """The tiny-sd pipeline at `overhead_size`: a bare loop (pipeline call + PIL PNG) against `generate_run`, passes
    alternated so drift falls on both."""
    from k3eval.generators import get_entry
    from k3eval.prompts import load_prompt_set
    from k3eval.seeds import image_seed

    size, n = cfg["overhead_size"], cfg["overhead_images"]
    prompt_set = load_prompt_set("parti").select(limit=n)
    texts, seeds = [p.text for p in prompt_set], [image_seed(0, p.id, 0) for p in prompt_set]
    gen = get_entry("tiny-sd").create({"height": size, "width": size}, device=device)
    gen.ensure_loaded()
    overhead_mod.bare_loop(gen, texts[:overhead_mod.BATCH], seeds[:overhead_mod.BATCH], tmp / "warmup")
    times: dict[str, list[float]] = {"bare": [], "k3eval": []}
    for k, which in enumerate(["bare", "k3eval", "k3eval", "bare"]):
        folder = tmp / f"overhead-{which}-{k}"
        times[which].append(overhead_mod.bare_loop(gen, texts, seeds, folder) if which == "bare"
                            else overhead_mod.k3eval_pass(gen, prompt_set, folder))
    bare, ours = statistics.mean(times["bare"]), statistics.mean(times["k3eval"])
    note(f"generate overhead: {ours / bare - 1:+.1%}")
    return {"generator": f"tiny-sd ({size}x{size}, {gen.params['steps']} steps)", "images": n,
            "batch_size": overhead_mod.BATCH, "bare_seconds": times["bare"], "k3eval_seconds": times["k3eval"],
            "overhead": ours / bare - 1.0}


# ---- the run --------------------------------------------------------------------------------------------------------
def run(cfg: dict[str, Any], mode: str, device: str) -> dict[str, Any]:
    from k3eval.generators.base import torch_dtype
    from k3eval.generators.diffusers_pipeline import quiet_hub_logging
    from k3eval.utils import hardware_info, now_iso, package_versions

    quiet_hub_logging()  # diffusers' per-cast notices would bury the progress lines
    warnings.filterwarnings("ignore", message="This DataLoader will create")  # torch-fidelity's loader, small CPUs
    t_start = time.perf_counter()
    seconds: dict[str, float] = {}
    hw = hardware_info()
    hw["device_name"] = (torch.cuda.get_device_name(0) if device.startswith("cuda")
                         else f"CPU ({hw['cpu_count']} cores, torch threads {torch.get_num_threads()})")
    load_before = os.getloadavg()[0]
    first = cfg["dtypes"][0]
    t = time.perf_counter()
    matmul = k3s.matmul_tflops(cfg["matmul_n"], torch.bfloat16, device, cfg["repeats"])
    note(f"bf16 matmul {cfg['matmul_n']}^2: {matmul:.3g} TFLOP/s")
    components = k3s.build(cfg, device, torch_dtype(first))
    seconds["build"] = time.perf_counter() - t
    note(f"built the networks on {device} in {seconds['build']:.0f} s")
    t = time.perf_counter()
    unet_rows = unet_section(components[0], cfg, device, matmul)
    seconds["unet"] = time.perf_counter() - t
    t = time.perf_counter()
    e2e = k3s.end_to_end(components, cfg, device, first)
    seconds["end_to_end"] = time.perf_counter() - t
    note(f"end to end: Flash {e2e['flash_speedup']:.1f}x faster than 3.0")
    unet = components[0]
    del components  # the T5 encoder (17 GB at full size) goes; the U-Net stays for torch.compile
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        t = time.perf_counter()
        fid = fid_section(cfg, device, tmp)
        seconds["fid"] = time.perf_counter() - t
        t = time.perf_counter()
        over = overhead_section(cfg, device, tmp)
        seconds["overhead"] = time.perf_counter() - t
    compile_note = None
    if not (cfg["compile"] and device.startswith("cuda")):
        compile_note = "not run: torch.compile is measured on a GPU at full size only"
    elif time.perf_counter() - t_start > BUDGET_S - COMPILE_RESERVE_S:
        compile_note = f"not run: less than {COMPILE_RESERVE_S} s of the {BUDGET_S} s budget was left"
    else:
        t = time.perf_counter()
        unet_rows.append(compiled_row(unet, cfg, device, first, matmul, unet_rows))
        seconds["compile"] = time.perf_counter() - t
    if compile_note:
        note(f"torch.compile {compile_note}")
    del unet
    seconds["total"] = time.perf_counter() - t_start
    # CPU time of this process and its finished children (torch-fidelity's loader workers): on a shared machine the
    # wall clock also counts other people's work
    seconds["process_cpu"] = sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF),
                                                                   resource.getrusage(resource.RUSAGE_CHILDREN)))
    best = max((r for r in unet_rows if r["unet"] == "kandinsky3"), key=lambda r: r["fraction_of_matmul"])
    gpu = device.startswith("cuda")
    return {
        "benchmark": "gpu_suite", "date": now_iso(), "mode": mode, "device": device,
        "note": ("Full size on a GPU." if mode == "full" else
                 f"No GPU was lent to this task: reduced sizes on the CPU (--{mode}). These figures check that the "
                 "suite runs; they say nothing about the H200 targets, which stay to be measured on a GPU."),
        "config": {k: ({kk: list(vv) if isinstance(vv, tuple) else vv for kk, vv in v.items()}
                       if isinstance(v, dict) else v) for k, v in cfg.items()},
        "matmul": {"n": cfg["matmul_n"], "dtype": "bf16", "tflops": matmul},
        "unet": {"parameters": unet_parameters(cfg), "rows": unet_rows, "compile": compile_note or "measured",
                 "best_fraction_of_matmul": best["fraction_of_matmul"]},
        "end_to_end": e2e, "fid_extraction": fid, "generate_overhead": over,
        "targets": {**TARGETS, "met": None if not gpu or mode != "full" else {
            "flash_speedup": e2e["flash_speedup"] >= TARGETS["flash_speedup_min"],
            "unet_fraction": best["fraction_of_matmul"] >= TARGETS["unet_fraction_of_matmul_min"],
            "fid_vs_torch_fidelity": fid["k3eval_vs_torch_fidelity"] >= TARGETS["fid_vs_torch_fidelity_min"]}},
        "seconds": seconds,
        "hardware": {**hw, "load_average_1m_before_after": [load_before, os.getloadavg()[0]]},
        "packages": package_versions(["torch-fidelity", "torchmetrics"]),
        "command": "python benchmarks/perf/gpu_suite.py" + {"full": "", "small": " --small", "tiny": " --tiny"}[mode],
    }


def unet_parameters(cfg: dict[str, Any]) -> int:
    """The U-Net's parameter count, on the meta device (no memory)."""
    from diffusers import Kandinsky3UNet

    with torch.device("meta"):
        return sum(p.numel() for p in Kandinsky3UNet(**cfg["unet"]).parameters())


def write_markdown(res: dict[str, Any], path: Path) -> None:
    e, f, o = res["end_to_end"], res["fid_extraction"], res["generate_overhead"]
    lines = [
        "# GPU suite", "",
        f"{res['mode']}; {res['hardware'].get('device_name')}; {res['date']}; total {res['seconds']['total']:.0f} s "
        f"wall clock, {res['seconds']['process_cpu']:.0f} s of CPU time (this process and its workers).",
        "", res["note"], "",
        f"Load average (1 min) before / after: {res['hardware']['load_average_1m_before_after'][0]:.1f} / "
        f"{res['hardware']['load_average_1m_before_after'][1]:.1f} on {res['hardware']['cpu_count']} cores; ratios "
        "measured in the same run are the figures to read.", "",
        f"## U-Net ({res['unet']['parameters']:,} parameters; bf16 matmul {res['matmul']['n']}^2: "
        f"{res['matmul']['tflops']:.4g} TFLOP/s)", "",
        "| U-Net | dtype | attention | compiled | batch | s / eval | TFLOP/s | of matmul | peak MB |",
        "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for r in res["unet"]["rows"]:
        peak = f"{r['peak_memory_mb']:.0f}" if r.get("peak_memory_mb") else "n/a"
        lines.append(f"| {r['unet']} | {r['dtype']} | {r['attention']} | {'yes' if r['compiled'] else 'no'} | "
                     f"{r['batch']} | {r['seconds_per_eval']:.4f} | {r['tflops']:.4g} | {r['fraction_of_matmul']:.1%} "
                     f"| {peak} |")
    lines += ["", f"Best U-Net rate: {res['unet']['best_fraction_of_matmul']:.1%} of the matmul rate (target >= 40 % "
              f"on an H200). torch.compile: {res['unet']['compile']}.", "", "## End to end (after loading)", "",
              "| generator | U-Net evals | s / image | text s | denoise s | decode s |",
              "|---|---:|---:|---:|---:|---:|"]
    for name in ("kandinsky3", "kandinsky3-flash"):
        r = e[name]
        lines.append(f"| {name} | {r['unet_evals']} | {r['seconds_per_image']:.3f} | {r['text_seconds']:.3f} | "
                     f"{r['denoise_seconds']:.3f} | {r['decode_seconds']:.3f} |")
    lines += ["", f"Flash speed-up: {e['flash_speedup']:.1f}x end to end, {e['flash_speedup_denoise']:.1f}x in "
              "denoising (the report: \"almost 20 times\"; target >= 20x on an H200).", "",
              f"## FID feature extraction ({f['images']} PNGs at {f['size']}x{f['size']}, batch {f['batch_size']})", "",
              "| tool | images/s (extractor built, all features) | max feature difference to k3eval |",
              "|---|---:|---:|"]
    for name in ("k3eval", "torch_fidelity", "torchmetrics"):
        diff = f.get(f"max_feature_difference_vs_{name}")
        lines.append(f"| {name} | {f[name]['images_per_s']:.1f} | {'' if diff is None else f'{diff:.1e}'} |")
    lines += ["", f"k3eval / torch-fidelity: {f['k3eval_vs_torch_fidelity']:.2f}x (target >= 1.5x on an H200); "
              f"k3eval / torchmetrics: {f['k3eval_vs_torchmetrics']:.2f}x (k3eval's first pass, with the process's "
              f"set-up: {f['k3eval_first']['images_per_s']:.1f} images/s). FID from k3eval's features: "
              f"{f['fid_k3eval']:.4f}.", "",
              f"## generate overhead ({o['generator']}, {o['images']} images, batch {o['batch_size']})", "",
              f"`k3eval generate` against a bare diffusers loop: {o['overhead']:+.1%} (bare "
              f"{statistics.mean(o['bare_seconds']):.2f} s, k3eval {statistics.mean(o['k3eval_seconds']):.2f} s per "
              "pass)." + ("" if res["mode"] == "full" else " With so few, so small images a run's fixed cost (run.json "
                          "with package versions and git revision, the manifest merge) dominates; "
                          "generation_overhead.md has the CPU figure at 64 images, and the GPU run at 512x512 the "
                          "one that counts."), "",
              "Seconds per section: " + ", ".join(f"{k} {v:.0f}" for k, v in res["seconds"].items()) + ".", "",
              f"Reproduce: `{res['command']}`. Raw figures: `{path.with_suffix('.json').name}`.", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--small", action="store_true", help="reduced sizes for a CPU run (under 3 minutes)")
    size.add_argument("--tiny", action="store_true", help="smaller still: the test's setting")
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--out", type=Path, default=HERE / "results", help="folder for gpu_suite.json and .md")
    args = ap.parse_args(argv)
    from k3eval.utils import atomic_write_json

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    mode = "tiny" if args.tiny else "small" if args.small else "full"
    cfg = {"full": FULL, "small": SMALL, "tiny": TINY}[mode]
    if mode == "full" and not device.startswith("cuda"):
        note("full size needs a GPU (the T5 encoder alone is 17 GB in bf16); use --small on the CPU")
        return 2
    res = run(cfg, mode, device)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "gpu_suite.json", res)
    write_markdown(res, args.out / "gpu_suite.md")
    note(f"wrote {args.out / 'gpu_suite.json'} and .md in {res['seconds']['total']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
