"""Kandinsky 3 speed: U-Net time per evaluation, achieved TFLOP/s against a large matmul measured in the same run,
peak memory, and end-to-end `kandinsky3` (50 guided steps) against `kandinsky3-flash` (4 steps).

    python benchmarks/perf/kandinsky3_speed.py            # GPU: full Kandinsky3UNet() config, bf16, 1024x1024
    python benchmarks/perf/kandinsky3_speed.py --small    # CPU: reduced U-Net / T5 / MoVQ, fp32, 256x256

Every network is the real class (diffusers Kandinsky3UNet and VQModel, transformers T5EncoderModel) with seeded
random weights: speed does not depend on the weight values. End to end runs the real generator classes
(`Kandinsky3ReleasedGenerator`, `Kandinsky3FlashGenerator`) on these components after they are loaded; each
generator encodes its prompts itself (no shared embedding cache). Writes
benchmarks/perf/results/kandinsky3_speed.json and .md (override with --out).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"

# Full size: the official U-Net config (diffusers' Kandinsky3UNet defaults), FLAN-UL2's encoder config (google/flan-ul2
# and kandinsky-community/kandinsky-3 text_encoder/config.json: gated-silu, 32 relative-position buckets up to 128)
# and Sber-MoVQGAN 270M (kandinsky-community/kandinsky-3 movq/config.json; 270,603,567 parameters without the
# codebook, as the official weights/movq.pt).
FULL = {
    "unet": {},
    "t5": {"d_model": 4096, "d_kv": 256, "d_ff": 16384, "num_layers": 32, "num_heads": 16,
           "feed_forward_proj": "gated-silu", "relative_attention_num_buckets": 32,
           "relative_attention_max_distance": 128, "layer_norm_epsilon": 1e-6},
    "movq": {"block_out_channels": (256, 512, 512, 1024), "layers_per_block": 2, "norm_num_groups": 32,
             "num_vq_embeddings": 16384},
    "size": 1024, "matmul_n": 8192, "dtype": "bf16", "context_tokens": 32, "repeats": 5, "prompts": 3,
}
SMALL = {
    "unet": {"block_out_channels": (64, 128, 256, 512), "time_embedding_dim": 256, "cross_attention_dim": 512,
             "encoder_hid_dim": 512},
    "t5": {"d_model": 512, "d_kv": 64, "d_ff": 1024, "num_layers": 4, "num_heads": 8,
           "feed_forward_proj": "gated-gelu"},
    "movq": {"block_out_channels": (32, 64, 64, 128), "layers_per_block": 1, "norm_num_groups": 32,
             "num_vq_embeddings": 1024},
    "size": 256, "matmul_n": 2048, "dtype": "fp32", "context_tokens": 32, "repeats": 2, "prompts": 2,
}
PROMPTS = ["a red fox in the snow, photograph", "an oil painting of a lighthouse on a cliff at sunset",
           "a bowl of ramen on a wooden table, studio light"]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _median_seconds(fn, device: str, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_tflops(n: int, dtype: torch.dtype, device: str, repeats: int) -> float:
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, generator=g, device=device, dtype=torch.float32).to(dtype)
    b = torch.randn(n, n, generator=g, device=device, dtype=torch.float32).to(dtype)
    sec = _median_seconds(lambda: a @ b, device, repeats * 4, warmup=3)
    return 2 * n ** 3 / sec / 1e12


def build(cfg: dict[str, Any], device: str, dtype: torch.dtype):
    """(U-Net with its projection, null embedding, MoVQ, T5 encoder, tokenizer), seeded random weights."""
    from diffusers import Kandinsky3UNet, VQModel
    from transformers import T5Config, T5EncoderModel

    from k3eval.generators.tiny import build_tokenizer

    tokenizer = build_tokenizer(128)
    # Built on the device in float32 (the initialisers are written for it), then cast one network at a time: the full
    # T5 peaks at 34 GB + its 17 GB bf16 copy, which fits a large GPU; nothing is initialised on the CPU.
    with torch.device(device):
        torch.manual_seed(0)
        unet = Kandinsky3UNet(**cfg["unet"]).eval().to(dtype)
        torch.manual_seed(1)
        movq = VQModel(down_block_types=["DownEncoderBlock2D"] * 3 + ["AttnDownEncoderBlock2D"],
                       up_block_types=["AttnUpDecoderBlock2D"] + ["UpDecoderBlock2D"] * 3, latent_channels=4,
                       vq_embed_dim=4, norm_type="spatial", **cfg["movq"]).eval().to(dtype)
        torch.manual_seed(2)
        t5 = T5EncoderModel(T5Config(vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=1,
                                     decoder_start_token_id=0, **cfg["t5"])).eval().to(dtype)
        null = torch.randn(unet.config.cross_attention_dim)
    return unet, null, movq, t5, tokenizer


def unet_figures(unet, cfg: dict[str, Any], device: str, dtype: torch.dtype, batch: int) -> dict[str, Any]:
    from torch.utils.flop_counter import FlopCounterMode

    latent = cfg["size"] // 8
    g = torch.Generator(device="cpu").manual_seed(batch)
    x = torch.randn(batch, 4, latent, latent, generator=g).to(device, dtype)
    ctx = torch.randn(batch, cfg["context_tokens"], unet.config.encoder_hid_dim, generator=g).to(device, dtype)
    mask = torch.ones(batch, cfg["context_tokens"], dtype=torch.long, device=device)
    t = torch.full((batch,), 500, device=device)

    def run():
        with torch.inference_mode():
            unet(x, t, encoder_hidden_states=ctx, encoder_attention_mask=mask)

    with FlopCounterMode(display=False) as counter:
        run()
    flops = counter.get_total_flops()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    sec = _median_seconds(run, device, cfg["repeats"])
    out = {"batch": batch, "seconds_per_eval": sec, "seconds_per_image_eval": sec / batch, "flops": flops,
           "tflops": flops / sec / 1e12}
    if device.startswith("cuda"):
        out["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return out


def end_to_end(components, cfg: dict[str, Any], device: str, dtype_name: str) -> dict[str, Any]:
    from k3eval.generators.base import GenRequest
    from k3eval.generators.kandinsky3 import Kandinsky3FlashGenerator, Kandinsky3ReleasedGenerator
    from k3eval.seeds import image_seed

    unet, null, movq, t5, tokenizer = components
    prompts = PROMPTS[: cfg["prompts"]]
    out: dict[str, Any] = {}
    for cls, name in ((Kandinsky3ReleasedGenerator, "kandinsky3"), (Kandinsky3FlashGenerator, "kandinsky3-flash")):
        gen = cls(name, {"height": cfg["size"], "width": cfg["size"], "embedding_cache": "none", "variant": None},
                  device=device, dtype=dtype_name)
        # each generator takes its projection out of the U-Net: hand both a fresh one holding the same weights
        with torch.device(device):
            u = type(unet).from_config(unet.config).to(dtype=unet.dtype)
        u.load_state_dict(unet.state_dict())
        gen.use_components(u, null, movq, tokenizer, t5)
        gen.generate([GenRequest("warmup", "warm up", 0, 1)])
        rows = []
        _sync(device)
        t0 = time.perf_counter()
        for i, p in enumerate(prompts):
            rows.append(gen.generate([GenRequest(f"p{i}", p, 0, image_seed(0, f"p{i}", 0))])[0].extra)
        _sync(device)
        total = (time.perf_counter() - t0) / len(prompts)
        out[name] = {"seconds_per_image": total, "unet_evals": rows[0]["unet_evals"],
                     **{k: statistics.mean(r[k] for r in rows) for k in ("text_seconds", "denoise_seconds",
                                                                        "decode_seconds")},
                     "peak_memory_mb": max((r["peak_memory_mb"] or 0) for r in rows) or None}
        del gen, u
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    out["flash_speedup"] = out["kandinsky3"]["seconds_per_image"] / out["kandinsky3-flash"]["seconds_per_image"]
    out["flash_speedup_denoise"] = (out["kandinsky3"]["denoise_seconds"]
                                    / out["kandinsky3-flash"]["denoise_seconds"])
    return out


def write_markdown(res: dict[str, Any], path: Path) -> None:
    u1, u2 = res["unet"]["batch1"], res["unet"]["batch2"]
    e = res["end_to_end"]
    lines = [
        "# Kandinsky 3 speed", "",
        f"{res['mode']}; {res['hardware'].get('device_name')}; {res['date']}; dtype {res['dtype']}; "
        f"{res['size']}x{res['size']} images (latent {res['size'] // 8}x{res['size'] // 8}).", "",
        res["note"], "",
        f"Load average (1 min) before / after: {res['hardware']['load_average_1m_before_after'][0]:.1f} / "
        f"{res['hardware']['load_average_1m_before_after'][1]:.1f} on {res['hardware']['cpu_count']} cores: other "
        "processes shared the machine, and every figure moves with them; ratios measured in the same run are the "
        "figures to read.", "",
        "| figure | value |", "|---|---|",
        f"| U-Net parameters | {res['unet']['parameters']:,} |",
        f"| U-Net s / evaluation, batch 1 | {u1['seconds_per_eval']:.4f} |",
        f"| U-Net s / evaluation, batch 2 (one guided step) | {u2['seconds_per_eval']:.4f} |",
        f"| U-Net GFLOP / evaluation, batch 1 | {u1['flops'] / 1e9:.1f} |",
        f"| U-Net TFLOP/s, batch 1 / 2 | {u1['tflops']:.4g} / {u2['tflops']:.4g} |",
        f"| matmul {res['matmul']['n']}^2 TFLOP/s (same run) | {res['matmul']['tflops']:.4g} |",
        f"| U-Net / matmul rate, batch 2 | {res['unet_fraction_of_matmul']['batch2']:.1%} (target >= 40 % on H200) |",
        f"| peak memory, U-Net batch 2 (MB) | {u2.get('peak_memory_mb', 'n/a (CPU)')} |",
        f"| kandinsky3 s / image ({e['kandinsky3']['unet_evals']} U-Net evals) | "
        f"{e['kandinsky3']['seconds_per_image']:.3f} |",
        f"| kandinsky3-flash s / image ({e['kandinsky3-flash']['unet_evals']} U-Net evals) | "
        f"{e['kandinsky3-flash']['seconds_per_image']:.3f} |",
        f"| Flash speed-up end to end / denoising only | {e['flash_speedup']:.1f}x / {e['flash_speedup_denoise']:.1f}x "
        "(target >= 20x on H200) |", "",
        f"Reproduce: `{res['command']}`. Raw figures: `{path.with_suffix('.json').name}`.", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="reduced sizes for a CPU run")
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--out", type=Path, default=RESULTS / "kandinsky3_speed.json")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (1 avoids OpenMP spin-waits on cores shared with other processes)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from k3eval.generators.base import torch_dtype
    from k3eval.utils import atomic_write_json, hardware_info, now_iso, package_versions

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = SMALL if args.small else FULL
    dtype_name = cfg["dtype"]
    dtype = torch_dtype(dtype_name)
    hw = hardware_info()
    hw["device_name"] = torch.cuda.get_device_name(0) if device.startswith("cuda") else f"CPU ({hw['cpu_count']} "\
        f"cores, torch threads {torch.get_num_threads()})"
    load_before = os.getloadavg()
    mm = matmul_tflops(cfg["matmul_n"], dtype, device, cfg["repeats"])
    components = build(cfg, device, dtype)
    unet = components[0]
    b1 = unet_figures(unet, cfg, device, dtype, 1)
    b2 = unet_figures(unet, cfg, device, dtype, 2)
    e2e = end_to_end(components, cfg, device, dtype_name)
    gpu = device.startswith("cuda")
    res = {
        "benchmark": "kandinsky3_speed", "date": now_iso(), "mode": "full size, GPU" if not args.small else
        f"reduced size (--small), {device}", "device": device, "dtype": dtype_name, "size": cfg["size"],
        "note": ("Full Kandinsky3UNet() config with seeded random weights." if not args.small else
                 "No GPU was lent to this task: these figures come from the CPU at reduced size (--small) and say "
                 "nothing about the H200 targets; run the script without --small on a GPU for those."),
        "config": {k: (v if not isinstance(v, dict) else {kk: list(vv) if isinstance(vv, tuple) else vv
                                                          for kk, vv in v.items()}) for k, v in cfg.items()},
        "unet": {"parameters": sum(p.numel() for p in unet.parameters()), "context_tokens": cfg["context_tokens"],
                 "batch1": b1, "batch2": b2},
        "matmul": {"n": cfg["matmul_n"], "dtype": dtype_name, "tflops": mm},
        "unet_fraction_of_matmul": {"batch1": b1["tflops"] / mm, "batch2": b2["tflops"] / mm},
        "end_to_end": e2e,
        "targets": {"flash_speedup_min": 20.0, "unet_fraction_of_matmul_min": 0.40,
                    "apply_to": "H200, full size, bf16", "met": None if not gpu else {
                        "flash_speedup": e2e["flash_speedup"] >= 20.0,
                        "unet_fraction": b2["tflops"] / mm >= 0.40}},
        "hardware": {**hw, "load_average_1m_before_after": [load_before[0], os.getloadavg()[0]]},
        "packages": package_versions(),
        "command": "python benchmarks/perf/kandinsky3_speed.py" + (" --small" if args.small else "")
        + (f" --threads {args.threads}" if args.threads else ""),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, res)
    write_markdown(res, args.out.with_suffix(".md"))
    print(json.dumps({"unet_b1_s": b1["seconds_per_eval"], "unet_b2_s": b2["seconds_per_eval"],
                      "unet_tflops_b2": b2["tflops"], "matmul_tflops": mm, "flash_speedup": e2e["flash_speedup"]},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
