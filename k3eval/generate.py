"""The generate stage: one generator over a prompt selection into a run folder, resumable and shardable."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from k3eval.errors import UserError
from k3eval.generators.base import GenRequest
from k3eval.prompts.core import PromptSet
from k3eval.runs import RunFolder, classify_image, image_relpath, to_uint8
from k3eval.seeds import SEED_RULE, image_seed
from k3eval.utils import git_revision, hardware_info, now_iso, package_versions


@dataclass
class WorkItem:
    prompt_id: str
    prompt: str
    category: str
    sample: int
    seed: int


@dataclass
class GenerateSummary:
    run_dir: Path
    total: int
    done_before: int
    generated: int
    status_counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def work_items(prompts: PromptSet, samples: int, benchmark_seed: int) -> list[WorkItem]:
    """Every (prompt, sample) of the run, in prompt order then sample order, each with its paired seed."""
    if samples < 1:
        raise UserError(f"--samples must be at least 1, got {samples}")
    return [WorkItem(p.id, p.text, p.category, s, image_seed(benchmark_seed, p.id, s))
            for p in prompts for s in range(samples)]


def parse_shard(text: str | None) -> tuple[int, int]:
    """'I/N' -> (I, N) with 0 <= I < N; None -> the torchrun rank and world size, or (0, 1)."""
    if text is None:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        return rank, world
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UserError(f"--shard expects I/N (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise UserError(f"--shard {text}: need 0 <= I < N")
    return i, n


def _manifest_row(prompts: PromptSet, item: WorkItem, gen, out, path: str, status: str, sha: str | None,
                  nbytes: int | None) -> dict[str, Any]:
    row: dict[str, Any] = {"prompt_set": prompts.name, "prompt_id": item.prompt_id, "prompt": item.prompt,
                           "category": item.category, "sample": item.sample, "seed": item.seed, "path": path,
                           **gen.manifest_fields(), "seconds": None, "status": status, "sha256": sha, "bytes": nbytes,
                           "generator": gen.name}
    h, w = out.image.shape[:2]
    row["height"], row["width"] = int(h), int(w)
    row.update(out.extra)
    return row


def run_info(gen, prompts: PromptSet, samples: int, benchmark_seed: int, extra: dict[str, Any] | None = None):
    return {
        "k3eval_run": 1,
        "identity": {**gen.identity(), "seed": benchmark_seed, "prompt_set": prompts.name},
        "generator": gen.describe(),
        "prompt_set": {"name": prompts.name, "hash": prompts.content_hash(), "n_prompts": len(prompts),
                       "categories": prompts.categories(), "selection": prompts.selection, "source": prompts.source,
                       "license": prompts.license},
        "samples": samples,
        "seed": {"benchmark_seed": benchmark_seed, "rule": SEED_RULE,
                 "noise": "initial noise drawn on the CPU in float32 from the image seed"},
        "packages": package_versions(),
        "git_revision": git_revision(),
        "hardware": hardware_info(),
        **(extra or {}),
    }


def generate_run(gen, prompts: PromptSet, out_dir: str | Path, *, samples: int = 1, seed: int = 0,
                 batch_size: int = 1, force: bool = False, shard: tuple[int, int] = (0, 1), progress: bool = True,
                 extra_info: dict[str, Any] | None = None, beautifier=None) -> GenerateSummary:
    """Generate every missing image of the run into `out_dir`; rerunning resumes, `force` starts over.

    With `shard=(i, n)` this process makes items i, i+n, i+2n, ... and writes its own journal; the process with
    i == 0 of a single-process run (n == 1) consolidates the manifest. Several shards are merged with
    `RunFolder.consolidate` once all are done.
    """
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    run = RunFolder(out_dir)
    items = work_items(prompts, samples, seed)
    if beautifier is not None:
        extra_info = {**(extra_info or {}), "beautify": beautifier.describe()}
    info = run_info(gen, prompts, samples, seed, extra_info)
    if beautifier is not None:
        info["identity"]["beautify"] = beautifier.describe().get("model")
    rank, world = shard
    if run.path.exists() and not run.exists() and any(run.path.iterdir()):
        raise UserError(f"output folder {run.path} is not empty and is not a run folder; choose another --out")
    if force and rank == 0:
        run.reset()
    run.check_identity(info["identity"])

    existing = run.read_manifest() if run.exists() else None
    done: set[tuple[str, int]] = set()
    if existing is not None and len(existing):
        for row in existing.to_dict("records"):
            if run.image_complete(row):
                done.add((row["prompt_id"], int(row["sample"])))
    mine = [it for k, it in enumerate(items) if k % world == rank]
    todo = [it for it in mine if (it.prompt_id, it.sample) not in done]

    started = now_iso()
    if rank == 0:
        old = run.read_info() if run.exists() else {}
        run.write_info({**info, "status": "running", "started": old.get("started", started), "resumed": started,
                        "finished": None})
    counts: dict[str, int] = {}
    t_start = time.perf_counter()
    writer = f"shard-{rank:03d}-of-{world:03d}"
    rewrites: dict[str, str] = {}
    if todo and beautifier is not None:
        rewrites = beautify_prompts(run, beautifier, sorted({it.prompt for it in todo}))
    if todo:
        bar = _progress(len(todo), f"{gen.name} -> {run.path}", progress)
        gen.ensure_loaded()
        for b in range(0, len(todo), batch_size):
            batch = todo[b:b + batch_size]
            requests = [GenRequest(it.prompt_id, rewrites.get(it.prompt, it.prompt), it.sample, it.seed)
                        for it in batch]
            t0 = time.perf_counter()
            outputs = gen.generate(requests)
            per_image = (time.perf_counter() - t0) / len(batch)
            if len(outputs) != len(batch):
                raise RuntimeError(f"generator {gen.name} returned {len(outputs)} images for {len(batch)} prompts")
            rows = []
            for it, out in zip(batch, outputs):
                status = classify_image(out.image)
                path, sha, nbytes = image_relpath(it.prompt_id, it.sample), None, None
                if status != "nan":
                    path, sha, nbytes = run.write_image(it.prompt_id, it.sample, to_uint8(out.image))
                row = _manifest_row(prompts, it, gen, out, path, status, sha, nbytes)
                row["seconds"] = out.extra.get("seconds", per_image)
                if beautifier is not None:
                    row["beautified_prompt"] = rewrites[it.prompt]
                rows.append(row)
                counts[status] = counts.get(status, 0) + 1
            run.append_rows(writer, rows)
            bar.update(len(batch))
        bar.close()
    elapsed = time.perf_counter() - t_start
    if world == 1:
        finalize_run(run, items, gen)
    return GenerateSummary(run.path, len(mine), len(mine) - len(todo), len(todo), counts, elapsed)


def beautify_prompts(run: RunFolder, beautifier, texts: list[str]) -> dict[str, str]:
    """Rewrite each prompt once per run; rewrites are cached in RUN/beautified.json so a resume reuses them."""
    import json

    from k3eval.utils import atomic_write_json

    cache_path = run.path / "beautified.json"
    cache: dict[str, str] = json.loads(cache_path.read_text(encoding="utf-8")) if cache_path.exists() else {}
    missing = [t for t in texts if t not in cache]
    if missing:
        cache.update(zip(missing, beautifier.rewrite(missing)))
        atomic_write_json(cache_path, cache)
    return {t: cache[t] for t in texts}


def finalize_run(run: RunFolder, items: Sequence[WorkItem], gen=None) -> None:
    """Merge journals into manifest.parquet (in work order) and record totals in run.json."""
    df = run.consolidate([(it.prompt_id, it.sample) for it in items])
    info = run.read_info()
    expected = {(it.prompt_id, it.sample) for it in items}
    have = {(p, int(s)) for p, s in zip(df["prompt_id"], df["sample"])}
    status = df["status"].value_counts().to_dict() if len(df) else {}
    totals: dict[str, Any] = {"images": int(len(df)), "expected": len(expected),
                              "missing": len(expected - have), "status": {k: int(v) for k, v in status.items()}}
    if len(df) and "seconds" in df:
        totals["seconds_total"] = float(df["seconds"].fillna(0).sum())
        totals["seconds_per_image"] = float(df["seconds"].mean())
    for col in ("text_seconds", "denoise_seconds", "decode_seconds", "unet_evals", "peak_memory_mb"):
        if col in df and df[col].notna().any():
            totals[f"{col}_mean"] = float(df[col].mean())
    if gen is not None and gen.load_seconds is not None:
        totals["load_seconds"] = gen.load_seconds
    info.update({"totals": totals, "finished": now_iso(),
                 "status": "complete" if not totals["missing"] else "incomplete"})
    if gen is not None:
        info["generator"] = gen.describe()
    run.write_info(info)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, dynamic_ncols=True, leave=False)
