"""Small run folders for study tests, written through RunFolder's own API (PNG files, journal, manifest)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from k3eval.runs import RunFolder

PROMPTS = [
    ("p-cat", "a cat on a red sofa", "Animals"),
    ("p-dog", "a dog in the snow", "Animals"),
    ("p-car", "a blue car at night", "Vehicles"),
    ("p-bus", "a yellow bus on a bridge", "Vehicles"),
    ("p-xss", "<script>alert('x')</script> [click](http://evil.example) **bold** ünïcödé " + "long " * 40,
     "Abstract"),
    ("p-tree", "a lone tree on a hill", "Scenes"),
]


def make_run(path: Path, generator: str, prompts=PROMPTS, samples: int = 1, size: int = 32, seed: int = 0,
             prompt_set_hash: str = "hash-of-test-set", bad: tuple[str, ...] = ()) -> Path:
    """A run folder with a random-texture PNG per (prompt, sample); prompt ids in `bad` get status 'black'."""
    run = RunFolder(path)
    run.write_info({"k3eval_run": 1, "identity": {"generator": generator},
                    "generator": {"name": generator}, "prompt_set": {"name": "test-set", "hash": prompt_set_hash},
                    "samples": samples, "status": "complete"})
    rng = np.random.default_rng(seed)
    rows = []
    for pid, text, cat in prompts:
        for s in range(samples):
            img = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
            rel, sha, nbytes = run.write_image(pid, s, img)
            rows.append({"prompt_set": "test-set", "prompt_id": pid, "prompt": text, "category": cat, "sample": s,
                         "seed": s, "path": rel, "width": size, "height": size, "steps": 1, "guidance": 1.0,
                         "seconds": 0.0, "status": "black" if pid in bad else "ok", "sha256": sha, "bytes": nbytes,
                         "generator": generator})
    run.append_rows("test", rows)
    run.consolidate()
    return path
