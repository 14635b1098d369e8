"""Helpers of the metrics tests (a uniquely named module: several test folders have a conftest.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def smooth_images(n: int, size: int | tuple[int, int], seed: int) -> list[np.ndarray]:
    """Seeded images with structure (upsampled coarse noise plus fine noise), uint8 H x W x 3."""
    import torch
    import torch.nn.functional as F

    h, w = (size, size) if isinstance(size, int) else size
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 6, 6, generator=g) * 255
    x = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    x = x + torch.randn(x.shape, generator=g) * 12
    return [a for a in x.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()]


def write_pngs(folder: Path, images: list[np.ndarray]) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, a in enumerate(images):
        p = folder / f"{i:04d}.png"
        Image.fromarray(a).save(p)
        paths.append(p)
    return paths


def make_run(path: Path, n_prompts: int = 6, samples: int = 2, size: int = 48, seed: int = 0,
             categories: tuple[str, ...] = ("Animals", "Food"), long_prompt_every: int = 0) -> Path:
    """A complete run folder written through the RunFolder API (no generator needed)."""
    from k3eval.runs import RunFolder

    run = RunFolder(path)
    imgs = smooth_images(n_prompts * samples, size, seed)
    rows = []
    for i in range(n_prompts):
        text = f"a photo of thing number {i} on a table"
        if long_prompt_every and i % long_prompt_every == 0:
            text = " ".join(["a very long prompt about many colourful objects"] * 12)
        for s in range(samples):
            rel, sha, nbytes = run.write_image(f"p{i:03d}", s, imgs[i * samples + s])
            rows.append({"prompt_set": "test", "prompt_id": f"p{i:03d}", "prompt": text,
                         "category": categories[i % len(categories)], "sample": s, "seed": i * 10 + s, "path": rel,
                         "width": size, "height": size, "steps": 1, "guidance": 1.0, "seconds": 0.0, "status": "ok",
                         "sha256": sha, "bytes": nbytes, "generator": "fake"})
    run.append_rows("w0", rows)
    run.consolidate()
    run.write_info({"generator": {"name": "fake"}, "prompt_set": {"name": "test", "hash": "abc"},
                    "run_name": path.name})
    return path


def make_set_run(path: Path, prompt_set: str, prompt_ids: list[str], samples: int = 2, size: int = 64,
                 seed: int = 0) -> Path:
    """A run folder of a built-in prompt set (real prompt ids, texts and categories) with seeded images."""
    from k3eval.prompts import load_prompt_set
    from k3eval.runs import RunFolder

    prompts = load_prompt_set(prompt_set).by_id()
    run = RunFolder(path)
    imgs = smooth_images(len(prompt_ids) * samples, size, seed)
    rows = []
    for i, pid in enumerate(prompt_ids):
        p = prompts[pid]
        for s in range(samples):
            rel, sha, nbytes = run.write_image(pid, s, imgs[i * samples + s])
            rows.append({"prompt_set": prompt_set, "prompt_id": pid, "prompt": p.text, "category": p.category,
                         "sample": s, "seed": i * 10 + s, "path": rel, "width": size, "height": size, "steps": 1,
                         "guidance": 1.0, "seconds": 0.0, "status": "ok", "sha256": sha, "bytes": nbytes,
                         "generator": "fake"})
    run.append_rows("w0", rows)
    run.consolidate()
    run.write_info({"generator": {"name": "fake"}, "prompt_set": {"name": prompt_set, "hash": "abc"},
                    "run_name": path.name})
    return path
