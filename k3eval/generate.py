"""The generate stage: one generator over a prompt selection into a run folder, resumable and shardable."""

from __future__ import annotations

import atexit
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from k3eval.errors import UserError
from k3eval.generators.base import NOISE_RULE, GenRequest
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
    #: status counts of the whole run after the merge (empty when another shard merges later)
    run_counts: dict[str, int] = field(default_factory=dict)


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
                 "noise": gen.noise_rule() if hasattr(gen, "noise_rule") else NOISE_RULE},
        "packages": package_versions(),
        "git_revision": git_revision(),
        "hardware": hardware_info(),
        **(extra or {}),
    }


def launched_by_torchrun() -> bool:
    """True inside a process started by torchrun (or another launcher that sets the env:// rendezvous variables)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "MASTER_ADDR" in os.environ and "RANK" in os.environ


def rank_device(device: str) -> str:
    """Under torchrun, a bare `cuda` means this rank's own GPU (`cuda:$LOCAL_RANK`), so ranks do not share one."""
    if device == "cuda" and launched_by_torchrun():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


class _Group:
    """Synchronises the ranks of one torchrun job (gloo barrier), or does nothing for a single process or a
    hand-made `--shard` job (those finish through marker files instead)."""

    def __init__(self, rank: int, world: int):
        self.active = False
        if world > 1 and launched_by_torchrun() and (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])) == (
                rank, world):
            import datetime

            import torch.distributed as dist

            if not dist.is_initialized():
                # gloo works on CPU-only machines too; a long timeout because ranks may finish their shares hours
                # apart when a resume left them uneven amounts of work. The group lives until the process exits,
                # so a benchmark's several runs reuse it.
                dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=DIST_TIMEOUT_S))
                atexit.register(_destroy_group)
            self.active = True

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        self.active = False


def _destroy_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


#: how long a torchrun rank waits for the others at a barrier (seconds)
DIST_TIMEOUT_S = int(os.environ.get("K3EVAL_DIST_TIMEOUT", str(48 * 3600)))
BAD_STATUSES = ("nan", "black")


def shard_items(items: Sequence[WorkItem], rank: int, world: int, batch_size: int = 1) -> list[WorkItem]:
    """This shard's items: blocks of `batch_size` consecutive items dealt round-robin to the shards.

    Dealing whole batches (not single items) keeps each batch the same as in a single-process run with the same
    batch size, so a sharded run reproduces a single-process run bit for bit (batched kernels may differ in the last
    bits from unbatched ones). With batch size 1 this is items rank, rank + world, ...
    """
    return [it for k, it in enumerate(items) if (k // batch_size) % world == rank]


def generate_run(gen, prompts: PromptSet, out_dir: str | Path, *, samples: int = 1, seed: int = 0,
                 batch_size: int = 1, force: bool = False, shard: tuple[int, int] = (0, 1), progress: bool = True,
                 extra_info: dict[str, Any] | None = None, beautifier=None,
                 retry_bad: bool = False) -> GenerateSummary:
    """Generate every missing image of the run into `out_dir`; rerunning resumes, `force` starts over.

    With `shard=(i, n)` this process makes its share of the items (see `shard_items`) and writes its own journal.
    Under torchrun the ranks meet at a barrier and rank 0 merges the manifest; hand-made shards (`--shard I/N`)
    each leave a marker when done and the last one to finish merges. `retry_bad` regenerates the rows with status
    nan/black with the same seed, in fp32 where the generator runs in half precision.
    """
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    rank, world = shard
    if world < 1 or not 0 <= rank < world:
        raise UserError(f"shard {rank}/{world}: need 0 <= I < N")
    run = RunFolder(out_dir)
    items = work_items(prompts, samples, seed)
    if beautifier is not None:
        extra_info = {**(extra_info or {}), "beautify": beautifier.describe()}
    info = run_info(gen, prompts, samples, seed, extra_info)
    if beautifier is not None:
        info["identity"]["beautify"] = beautifier.describe().get("model")
    group = _Group(rank, world)
    try:
        if force and world > 1 and not group.active:
            raise UserError("--force with --shard I/N would let one job delete what the others write; delete the "
                            f"folder {run.path} before starting the jobs instead")
        if run.path.exists() and not run.exists() and any(p.name != ".merge.lock" for p in run.path.iterdir()):
            raise UserError(f"output folder {run.path} is not empty and is not a run folder; choose another --out")
        group.barrier()  # every rank has looked at the folder before rank 0 may clear it
        if force and rank == 0:
            run.reset()
        group.barrier()  # nobody looks at the folder while rank 0 may still be clearing it
        run.check_identity(info["identity"])

        existing = run.read_manifest() if run.exists() else None
        done: set[tuple[str, int]] = set()
        retry: set[tuple[str, int]] = set()
        if existing is not None and len(existing):
            for row in existing.to_dict("records"):
                key = (row["prompt_id"], int(row["sample"]))
                if retry_bad and row.get("status") in BAD_STATUSES:
                    retry.add(key)
                elif run.image_complete(row):
                    done.add(key)
        mine = shard_items(items, rank, world, batch_size)
        todo = [it for it in mine if (it.prompt_id, it.sample) not in done]

        started = now_iso()
        if rank == 0 or not run.exists():
            # Hand-made shards may start in any order, so whichever comes first records the run (same content).
            old = run.read_info() if run.exists() else {}
            run.write_info({**info, "status": "running", "started": old.get("started", started), "resumed": started,
                            "finished": None})
            run.write_prompts(prompts.to_frame()[["prompt_id", "prompt", "category"]])
        group.barrier()
        counts: dict[str, int] = {}
        t_start = time.perf_counter()
        writer = f"shard-{rank:03d}-of-{world:03d}"
        rewrites: dict[str, str] = {}
        if todo and beautifier is not None:
            rewrites = beautify_prompts(run, beautifier, sorted({it.prompt for it in todo}))
        fresh = [it for it in todo if (it.prompt_id, it.sample) not in retry]
        again = [it for it in todo if (it.prompt_id, it.sample) in retry]
        if todo:
            bar = _progress(len(todo), f"{gen.name} -> {run.path}" + (f" [{rank}/{world}]" if world > 1 else ""),
                            progress and (rank == 0 or not group.active))
            passes = [(gen, fresh, False)]
            if again:
                passes.append((retry_generator(gen), again, True))
            for g, part, retried in passes:
                if not part:
                    continue
                g.ensure_loaded()
                for b in range(0, len(part), batch_size):
                    batch = part[b:b + batch_size]
                    rows = _generate_batch(g, run, prompts, batch, rewrites, beautifier is not None)
                    for row in rows:
                        if retried:
                            row["retried"] = True
                            row["retry_dtype"] = g.dtype or "fp32"
                        counts[row["status"]] = counts.get(row["status"], 0) + 1
                    run.append_rows(writer, rows)
                    bar.update(len(batch))
                if g is not gen:
                    g.close()
            bar.close()
        elapsed = time.perf_counter() - t_start
        summary = GenerateSummary(run.path, len(mine), len(mine) - len(todo), len(todo), counts, elapsed)
        if world == 1:
            summary.run_counts = finalize_run(run, items, gen)
        elif group.active:
            group.barrier()  # every rank has journaled its share
            if rank == 0:
                summary.run_counts = finalize_run(run, items, gen)
            group.barrier()  # nobody returns (and maybe reads the folder) before the merge is written
        else:
            run.mark_shard_done(rank, world)
            with run.merge_lock():
                if run.journal_dir.exists() and len(run.shards_done(world)) == world:
                    summary.run_counts = finalize_run(run, items, gen)
        return summary
    finally:
        group.close()


def _generate_batch(gen, run: RunFolder, prompts: PromptSet, batch: list[WorkItem], rewrites: dict[str, str],
                    beautified: bool) -> list[dict[str, Any]]:
    """Make and write the images of one batch; returns their manifest rows (not yet journaled)."""
    requests = [GenRequest(it.prompt_id, rewrites.get(it.prompt, it.prompt), it.sample, it.seed) for it in batch]
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
        if beautified:
            row["beautified_prompt"] = rewrites[it.prompt]
        rows.append(row)
    return rows


def retry_generator(gen):
    """The generator that remakes bad images: the same one, or a full-precision copy when it runs in fp16/bf16
    (fp16 overflow is the usual cause of NaN and black images). A generator opts out with `supports_fp32 = False`."""
    if gen.dtype in (None, "fp32") or not getattr(gen, "supports_fp32", True):
        return gen
    return type(gen)(gen.name, dict(gen.params), device=gen.device, dtype="fp32")


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


def finalize_run(run: RunFolder, items: Sequence[WorkItem], gen=None) -> dict[str, int]:
    """Merge journals into manifest.parquet (in work order), record totals in run.json, remove temporaries left
    by killed writers; returns the status counts of the run. Call it only when no writer is active."""
    df = run.consolidate([(it.prompt_id, it.sample) for it in items])
    run.remove_stray_temporaries()
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
    if "prompt_truncated" in df:
        # prompts the text encoder cut (the generator warned about each as it made it), counted over the whole run
        totals["truncated_prompts"] = int(df.loc[df["prompt_truncated"].eq(True), "prompt_id"].nunique())
    if gen is not None and gen.load_seconds is not None:
        totals["load_seconds"] = gen.load_seconds
    info.update({"totals": totals, "finished": now_iso(),
                 "status": "complete" if not totals["missing"] else "incomplete"})
    if gen is not None:
        info["generator"] = gen.describe()
    run.write_info(info)
    return totals["status"]


def items_from_folder(run: RunFolder) -> list[WorkItem]:
    """The work list of an existing run, rebuilt from its prompts.parquet and run.json (for `k3eval runs merge`)."""
    info = run.read_info()
    frame = run.read_prompts()
    try:
        samples, seed = int(info["samples"]), int(info["seed"]["benchmark_seed"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{run.run_json}: 'samples' or 'seed.benchmark_seed' is missing") from None
    return [WorkItem(r["prompt_id"], r["prompt"], r["category"], s, image_seed(seed, r["prompt_id"], s))
            for r in frame.to_dict("records") for s in range(samples)]


def merge_run(path: str | Path) -> dict[str, Any]:
    """Merge the journals of a sharded run into manifest.parquet now; returns the run's totals.

    Safe to repeat. Run it once every shard has stopped: a shard still writing would have to redo the rows it
    journaled between the merge's read and its removal of the journals.
    """
    run = RunFolder(path)
    if not run.exists():
        raise UserError(f"{run.path} is not a run folder: it has no run.json")
    items = items_from_folder(run)
    with run.merge_lock():
        finalize_run(run, items)
    return run.read_info()["totals"]


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, dynamic_ncols=True, leave=False)
