"""Throughput of the learned preference and alignment metrics: k3eval against the authors' scoring loops.

One run, one machine, the same synthetic weights (the real architectures, small, seeded) and the same images and
prompts for every tool. The authors' packages (`hpsv2`, `image-reward`, `t2v-metrics`) do not install beside
k3eval's pins (docs/metrics.md), and PickScore and the aesthetic predictor have no package, so each reference is the
authors' scoring loop written out with plain transformers / open_clip / torch, as their code runs it: one image at
a time (PickScore: the README's `calc_probs`, one call per prompt with its images; HPS: `img_score.score`;
ImageReward: `ImageReward.score`; aesthetic: `simple_inference.py`; VQAScore: t2v-metrics' `generate` per image).
k3eval runs `score_run` end to end (image checks, threaded decoding, batches, feature cache, summary), first with an
empty feature cache, then again from the cache. Every tool runs in its own process; model loading is timed for both,
importing the libraries (torch, transformers, open_clip, torchvision) for neither.

    python benchmarks/perf/preference_speed.py               # 500 PNGs at 512x512, best of 5
    python benchmarks/perf/preference_speed.py --n 64 --repeats 1

Writes benchmarks/perf/results/preference_speed.json and .md. Not part of `make test`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
METRICS = ["pickscore", "hpsv21", "imagereward", "aesthetic", "vqascore"]
BATCH = 16


def make_run(path: Path, n: int, size: int, seed: int) -> None:
    """A run folder of n seeded structured PNGs, 2 images per prompt, every fifth prompt longer than 77 tokens."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from k3eval.runs import RunFolder

    run = RunFolder(path)
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        x = F.interpolate(torch.rand(1, 3, 8, 8, generator=g) * 255, size=(size, size), mode="bilinear",
                          align_corners=False)
        x = (x + torch.randn(x.shape, generator=g) * 10).clamp(0, 255).round().to(torch.uint8)
        p = i // 2
        text = f"a photo of object number {p} on a wooden table"
        if p % 5 == 0:
            text = " ".join([text] * 8)
        rel, sha, nbytes = run.write_image(f"p{p:04d}", i % 2, np.ascontiguousarray(x[0].permute(1, 2, 0).numpy()))
        rows.append({"prompt_set": "bench", "prompt_id": f"p{p:04d}", "prompt": text, "category": f"c{p % 4}",
                     "sample": i % 2, "seed": i, "path": rel, "width": size, "height": size, "steps": 1,
                     "guidance": 1.0, "seconds": 0.0, "status": "ok", "sha256": sha, "bytes": nbytes,
                     "generator": "bench"})
    run.append_rows("w0", rows)
    run.consolidate()
    run.write_info({"generator": {"name": "bench"}, "prompt_set": {"name": "bench", "hash": "x"}, "run_name": "bench"})


def _settings(metric: str) -> dict:
    return {metric: {"model": "synthetic"} if metric == "vqascore" else {"weights": "synthetic"}}


def tool_k3eval(run: str, metric: str, cache: str) -> dict:
    import pandas as pd

    from k3eval.metrics.score import ScoreOptions, score_run

    t = time.perf_counter()
    s = score_run(run, ScoreOptions(metrics=[metric], cache=cache, bootstrap=0, batch_size=BATCH,
                                    settings=_settings(metric)))
    sec = time.perf_counter() - t
    scores = pd.read_parquet(Path(run) / "scores" / "per_image.parquet")[metric].tolist()
    return {"seconds": sec, "images": s["n_images"], "scores": scores}


def _rows(run: str):
    import pandas as pd

    from k3eval.metrics.preprocess import load_rgb8

    per = pd.read_parquet(Path(run) / "scores" / "per_image.parquet")[["prompt_id", "sample"]]
    man = per.merge(pd.read_parquet(Path(run) / "manifest.parquet"), on=["prompt_id", "sample"])
    for r in man.itertuples(index=False):
        yield r.prompt_id, r.prompt, (lambda p=Path(run) / r.path: load_rgb8(p))


def ref_pickscore(run: str) -> list[float]:
    """README `calc_probs`: per prompt, its images through the processor, embeddings normalised, logit scale."""
    import torch
    from PIL import Image
    from transformers import AutoModel, AutoProcessor

    from k3eval.metrics.clip import synthetic_transformers_clip

    folder = synthetic_transformers_clip()
    processor = AutoProcessor.from_pretrained(folder, backend="pil")
    model = AutoModel.from_pretrained(folder).eval()
    by_prompt: dict[str, tuple[str, list]] = {}
    for pid, text, load in _rows(run):
        by_prompt.setdefault(pid, (text, []))[1].append(load)
    out = []
    for text, loads in by_prompt.values():
        with torch.no_grad():
            im = processor(images=[Image.fromarray(f()) for f in loads], return_tensors="pt")
            tx = processor(text=text, padding=True, truncation=True, max_length=77, return_tensors="pt")
            ie = model.get_image_features(**im).pooler_output
            te = model.get_text_features(**tx).pooler_output
            ie = ie / torch.norm(ie, dim=-1, keepdim=True)
            te = te / torch.norm(te, dim=-1, keepdim=True)
            out += (model.logit_scale.exp() * (te @ ie.T)[0]).tolist()
    return out


def ref_hpsv21(run: str) -> list[float]:
    """hpsv2 `img_score.score`: per image, the evaluation transform, tokenizer, model(image, text), diagonal."""
    import open_clip
    import torch
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode, Normalize, ToTensor

    from k3eval.metrics.clip import TINY_CLIP, register_tiny_config
    from k3eval.metrics.hps import OPENAI_MEAN, OPENAI_STD, synthetic_hps_checkpoint

    register_tiny_config()
    model = open_clip.create_model(TINY_CLIP, pretrained=None)
    model.load_state_dict(torch.load(synthetic_hps_checkpoint(), map_location="cpu", weights_only=True)["state_dict"])
    model.eval()
    tokenizer = open_clip.get_tokenizer(TINY_CLIP)
    size = model.visual.image_size[0]
    out = []
    for _, text, load in _rows(run):
        x = ToTensor()(load())
        h, w = x.shape[1:]
        scale = size / float(max(h, w))
        if scale != 1.0:
            nh, nw = round(h * scale), round(w * scale)
            x = TF.pad(TF.resize(x, [nh, nw], InterpolationMode.BICUBIC),
                       [(size - nw) // 2, (size - nh) // 2, size - nw - (size - nw) // 2, size - nh - (size - nh) // 2])
        with torch.no_grad():
            img_f, txt_f, _ = model(Normalize(OPENAI_MEAN, OPENAI_STD)(x).unsqueeze(0), tokenizer([text]))
            out.append(float(torch.diagonal(img_f @ txt_f.T)[0]))
    return out


def ref_imagereward(run: str) -> list[float]:
    """`ImageReward.score`: per image, PIL preprocessing, tokenizer (max_length 35), visual encoder, text encoder with
    cross-attention, head, (r - mean) / std. The networks: the same BLIP modules k3eval loads."""
    import json as _json

    from PIL import Image
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

    from k3eval.metrics.imagereward import REWARD_MEAN, REWARD_STD, Blip, load_tokenizer, synthetic_imagereward

    ckpt, med, tok_dir = synthetic_imagereward()
    net = Blip(ckpt, _json.loads(med.read_text()), "cpu")
    tokenizer = load_tokenizer(tok_dir)
    preprocess = Compose([Resize(224, interpolation=InterpolationMode.BICUBIC), CenterCrop(224), ToTensor(),
                          Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))])
    out = []
    for _, text, load in _rows(run):
        t = tokenizer(text, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
        r = net.rewards(preprocess(Image.fromarray(load())).unsqueeze(0), t.input_ids, t.attention_mask)
        out.append(float((r[0, 0] - REWARD_MEAN) / REWARD_STD))
    return out


def ref_aesthetic(run: str) -> list[float]:
    """`simple_inference.py`: per image, CLIP encode_image, numpy L2 normalisation, the nn.Sequential head."""
    import numpy as np
    import open_clip
    import torch
    from PIL import Image
    from torch import nn

    from k3eval.metrics.aesthetic import synthetic_head
    from k3eval.metrics.clip import TINY_CLIP, register_tiny_config, synthetic_open_clip_checkpoint

    register_tiny_config()
    clip, _, preprocess = open_clip.create_model_and_transforms(TINY_CLIP, pretrained=str(
        synthetic_open_clip_checkpoint()))
    clip.eval()
    head = nn.Sequential(nn.Linear(32, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                         nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))
    head.load_state_dict({k.removeprefix("layers."): v for k, v in
                          torch.load(synthetic_head(32), weights_only=True).items()})
    head.eval()
    out = []
    for _, _, load in _rows(run):
        with torch.no_grad():
            f = clip.encode_image(preprocess(Image.fromarray(load())).unsqueeze(0)).numpy()
            f = f / np.linalg.norm(f, 2, -1, keepdims=True)
            out.append(float(head(torch.from_numpy(f).float())[0, 0]))
    return out


def ref_vqascore(run: str) -> list[float]:
    """t2v-metrics `Qwen2VLModel.forward`: per image, chat template, generate(max_new_tokens=1, output_scores),
    softmax of the first step's scores at 'Yes'."""
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from k3eval.metrics.vqascore import QUESTION, synthetic_vlm

    folder = synthetic_vlm()
    proc = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    yes = proc.tokenizer.encode("Yes", add_special_tokens=False)[0]
    out = []
    for _, text, load in _rows(run):
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION.format(text)}]}]
        chat = proc.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        inputs = proc(text=[chat], images=[Image.fromarray(load())], padding=True, return_tensors="pt")
        with torch.inference_mode():
            g = model.generate(**inputs, max_new_tokens=1, do_sample=False, temperature=1.0, output_scores=True,
                               return_dict_in_generate=True)
        out.append(float(torch.softmax(g.scores[0][0], -1)[yes]))
    return out


def tool_reference(run: str, metric: str) -> dict:
    t = time.perf_counter()
    scores = globals()[f"ref_{metric}"](run)
    return {"seconds": time.perf_counter() - t, "images": len(scores), "scores": scores}


def run_child(tool: str, *targs) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, __file__, "--tool", tool, "--tool-args", json.dumps(list(targs))],
                         capture_output=True, text=True, env=env, check=False)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{tool} {targs} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][7:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=500, help="images (default 500; 2 per prompt)")
    p.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    p.add_argument("--metrics", default=",".join(METRICS))
    p.add_argument("--repeats", type=int, default=5, help="runs of each measurement; the fastest counts (default 5)")
    p.add_argument("--out", default=str(HERE / "results" / "preference_speed"))
    p.add_argument("--tool")
    p.add_argument("--tool-args")
    args = p.parse_args()
    if args.tool:
        # libraries are imported before any timer starts, on both sides (on a loaded 2-core machine importing them
        # takes longer than scoring a hundred images with the small synthetic models)
        import open_clip  # noqa: F401
        import pandas  # noqa: F401
        import pyarrow.dataset  # noqa: F401  (what pandas.read_parquet imports on first use)
        import pyarrow.pandas_compat  # noqa: F401
        import pyarrow.parquet  # noqa: F401
        import torch  # noqa: F401
        import torchvision  # noqa: F401
        import transformers  # noqa: F401
        from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor  # noqa: F401

        import k3eval.config  # noqa: F401
        import k3eval.metrics.extract  # noqa: F401
        import k3eval.metrics.score  # noqa: F401
        import k3eval.runs  # noqa: F401
        import k3eval.stats  # noqa: F401
        from k3eval.metrics import (  # noqa: F401
            aesthetic,
            clip,
            hps,
            hub,
            imagereward,
            pickscore,
            preference,
            registry,
            verify,
            vqascore,
        )

        fn = {"k3eval": tool_k3eval, "reference": tool_reference}[args.tool]
        print("RESULT " + json.dumps(fn(*json.loads(args.tool_args))))
        return

    import numpy as np

    from k3eval.utils import hardware_info, now_iso, package_versions

    results, ratios = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["K3EVAL_CACHE"] = str(Path(tmp) / "k3eval-cache")
        os.environ["HF_HUB_OFFLINE"] = "1"
        run = Path(tmp) / "run"
        make_run(run, args.n, args.size, seed=0)
        # the synthetic weights are built once, outside the timed runs
        from k3eval.metrics import aesthetic, clip, hps, imagereward, vqascore

        clip.synthetic_open_clip_checkpoint(), clip.synthetic_transformers_clip(), hps.synthetic_hps_checkpoint()
        imagereward.synthetic_imagereward(), vqascore.synthetic_vlm(), aesthetic.synthetic_head(32)
        load_before = os.getloadavg()
        for m in args.metrics.split(","):
            # best of --repeats, each in a fresh process, the tools interleaved so that a change of the machine's
            # load hits all of them; every first run starts from an empty feature cache
            firsts, cached, refs = [], [], []
            for k in range(args.repeats):
                cache = str(Path(tmp) / f"features-{m}-{k}")
                firsts.append(run_child("k3eval", str(run), m, cache))
                cached.append(run_child("k3eval", str(run), m, cache))
                refs.append(run_child("reference", str(run), m))
            first, cached, ref = (min(x, key=lambda r: r["seconds"]) for x in (firsts, cached, refs))
            diff = float(np.max(np.abs(np.subtract(first["scores"], ref["scores"])) /
                                np.maximum(np.abs(ref["scores"]), 1e-12)))
            results[m] = {k: {"seconds": v["seconds"], "images_per_s": v["images"] / v["seconds"]}
                          for k, v in (("k3eval_first", first), ("k3eval_cached", cached), ("reference", ref))}
            ratios[m] = {"throughput_vs_reference": results[m]["k3eval_first"]["images_per_s"]
                         / results[m]["reference"]["images_per_s"],
                         "cache_speedup": first["seconds"] / cached["seconds"], "max_rel_diff": diff,
                         "cached_equals_first": first["scores"] == cached["scores"]}
            print(m, json.dumps(ratios[m]), flush=True)
        load_after = os.getloadavg()
    doc = {"benchmark": "preference_speed", "date": now_iso(),
           "setting": {"images": args.n, "size": args.size, "images_per_prompt": 2, "batch_size": BATCH,
                       "repeats": args.repeats,
                       "weights": "synthetic (seeded small models of the real architectures), the same for both",
                       "reference": "the authors' scoring loop, one image at a time (their packages do not install)"},
           "results": results, "ratios": ratios, "hardware": hardware_info(),
           "load_average_before_after": [load_before, load_after],
           "packages": package_versions(["torch", "transformers", "open-clip-torch", "torchvision"])}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    out.with_suffix(".md").write_text(render_md(doc))
    print(render_md(doc))


def render_md(doc: dict) -> str:
    s = doc["setting"]
    lines = [f"# preference_speed ({doc['date']})", "",
             f"{s['images']} PNGs at {s['size']}x{s['size']} ({s['images_per_prompt']} per prompt), synthetic weights "
             f"shared by both sides; reference: {s['reference']}; k3eval batch size {s['batch_size']}. Each "
             "measurement in its own process, model loading included, library imports excluded; best of "
             f"{s['repeats']}. CPU: {doc['hardware'].get('cpu_count')} cores, load average before/after "
             f"{doc['load_average_before_after'][0][0]:.1f}/{doc['load_average_before_after'][1][0]:.1f} (shared "
             "machine).", "",
             "| metric | k3eval img/s | reference img/s | ratio | k3eval cached s | cache speedup | max rel diff |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for m, r in doc["results"].items():
        q = doc["ratios"][m]
        lines.append(f"| {m} | {r['k3eval_first']['images_per_s']:.1f} | {r['reference']['images_per_s']:.1f} | "
                     f"{q['throughput_vs_reference']:.2f}x | {r['k3eval_cached']['seconds']:.2f} | "
                     f"{q['cache_speedup']:.0f}x | {q['max_rel_diff']:.1e} |")
    lines += ["", f"Reproduce: `python benchmarks/perf/preference_speed.py --n {s['images']} --size {s['size']} "
              f"--repeats {s['repeats']}`.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
