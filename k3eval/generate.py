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
from k3eval.generators.base import GenRequest
from k3eval.prompts.core import PromptSet
from k3eval.runs import RunFolder, classify_image, image_relpath, to_uint8
from k3eval.seeds import SEED_RULE, image_seed
from k3eval.utils import (
    check_device,
    check_output_dir,
    git_revision,
    hardware_info,
    make_dirs,
    now_iso,
    package_versions,
    remove_empty_dirs,
)


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


def run_identity(gen, prompts: PromptSet, samples: int, benchmark_seed: int, beautify: str | None = None):
    """What a rerun must match to resume into an existing folder: the generator and its parameters (as
    `gen.identity()` states them), dtype, benchmark seed and seed rule, the resolved prompt selection (hash over
    ids, texts and categories in order: the same file named by another path is the same run), samples per prompt,
    beautify model. Anything else (device, batch size, shards, progress) may change between resumes."""
    return {**gen.identity(), "dtype": gen.dtype or "fp32", "seed": benchmark_seed, "seed_rule": SEED_RULE,
            "prompts": prompts.content_hash(), "samples": samples, "beautify": beautify}


def run_info(gen, prompts: PromptSet, samples: int, benchmark_seed: int, extra: dict[str, Any] | None = None,
             beautify: str | None = None):
    return {
        "k3eval_run": 1,
        "identity": run_identity(gen, prompts, samples, benchmark_seed, beautify),
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


def check_generator(gen) -> None:
    """Refuse settings the generator cannot run before anything is loaded or written. A generator states its own
    rules (bounds on what sizes memory, divisibility) in an optional `check_params()` method; this is the one place
    that calls it, for `generate` and for a benchmark's check before any stage runs."""
    check = getattr(gen, "check_params", None)
    if callable(check):
        check()


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
    check_output_dir(run.path)
    check_device(gen.device)
    check_generator(gen)
    items = work_items(prompts, samples, seed)
    if beautifier is not None:
        extra_info = {**(extra_info or {}), "beautify": beautifier.describe()}
    info = run_info(gen, prompts, samples, seed, extra_info,
                    beautify=beautifier.describe().get("model") if beautifier is not None else None)
    if run.path.exists() and not run.exists() and any(p.name != ".merge.lock" for p in run.path.iterdir()):
        raise UserError(f"output folder {run.path} is not empty and is not a run folder; choose another --out")
    if force and world == 1:
        run.reset()
    # A single process that fails before its first image removes what it wrote (and the folders it made), so the
    # corrected command starts clean; a folder whose earlier command died that early (killed) holds no result and
    # is taken over the same way. Shards and torchrun ranks never clean up (another writer may be starting);
    # torchrun takes over such a folder in `_generate`, where its ranks are in step.
    unstarted = world == 1 and (not run.exists() or not _has_results(run))
    if unstarted and run.exists():
        run.remove_unstarted()
    created = make_dirs(run.path) if unstarted else []
    state = {"produced": False}
    group = _Group(rank, world)
    try:
        return _generate(gen, prompts, run, items, info, state, group, batch_size=batch_size, force=force,
                         shard=shard, progress=progress, beautifier=beautifier, retry_bad=retry_bad)
    except BaseException:
        if unstarted and not state["produced"]:
            run.remove_unstarted()
            remove_empty_dirs(created)
        raise
    finally:
        group.close()


def _has_results(run: RunFolder) -> bool:
    """Whether the folder holds any manifest row (merged or journaled)."""
    return len(run.read_manifest()) > 0


def _generate(gen, prompts: PromptSet, run: RunFolder, items: list[WorkItem], info: dict[str, Any],
              state: dict[str, bool], group: _Group, *, batch_size: int, force: bool, shard: tuple[int, int],
              progress: bool, beautifier, retry_bad: bool) -> GenerateSummary:
    """The body of `generate_run`; sets state['produced'] once the first image is recorded."""
    rank, world = shard
    if force and world > 1 and not group.active:
        raise UserError("--force with --shard I/N would let one job delete what the others write; delete the "
                        f"folder {run.path} before starting the jobs instead")
    group.barrier()  # every rank has looked at the folder before rank 0 may clear it
    # Under torchrun the ranks are in step here, so rank 0 may also take over a folder that an earlier job left
    # before its first image; hand-made shards cannot know whether another job is just starting, so they do not.
    if rank == 0 and world > 1 and (force or (group.active and run.exists() and not _has_results(run))):
        run.reset()
    group.barrier()  # nobody looks at the folder while rank 0 may still be clearing it
    run.check_identity(info["identity"], prompts)

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
        try:
            passes = [(gen, fresh, False)]
            if again:
                passes.append((retry_generator(gen), again, True))
            for g, part, retried in passes:
                if not part:
                    continue
                g.ensure_loaded()
                for b in range(0, len(part), batch_size):
                    batch = part[b:b + batch_size]
                    rows = _first_batch_checked(g, run, prompts, batch, rewrites, beautifier is not None,
                                                first=not state["produced"])
                    for row in rows:
                        if retried:
                            row["retried"] = True
                            row["retry_dtype"] = g.dtype or "fp32"
                        counts[row["status"]] = counts.get(row["status"], 0) + 1
                    run.append_rows(writer, rows)
                    state["produced"] = True
                    bar.update(len(batch))
                if g is not gen:
                    g.close()
        finally:
            bar.close()  # also on Ctrl-C: the bar's line is cleared before the CLI says "interrupted"
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


def _first_batch_checked(gen, run: RunFolder, prompts: PromptSet, batch: list[WorkItem], rewrites: dict[str, str],
                         beautified: bool, first: bool) -> list[dict[str, Any]]:
    """`_generate_batch`, where a ValueError on the first batch (a pipeline's own input checks, such as diffusers'
    "height and width have to be divisible by 8", run before any compute) becomes a one-line error: nothing has
    been recorded, and the folder is cleaned up by `generate_run`."""
    try:
        return _generate_batch(gen, run, prompts, batch, rewrites, beautified)
    except ValueError as e:
        if not first:
            raise
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"generator '{gen.name}' cannot make images with these settings: {message}") from e


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
    by killed writers; returns the status counts of the run. Call it only when no writer is active.

    Refuses a folder whose rows are not all part of this run (made by a k3eval that did not check the prompt
    selection): counting them would report more images than the run has."""
    expected = {(it.prompt_id, it.sample) for it in items}
    current = run.read_manifest()
    foreign = sorted({(str(p), int(s)) for p, s in zip(current["prompt_id"], current["sample"])} - expected)
    if foreign:
        raise UserError(f"{run.path}: the manifest holds {len(foreign)} image(s) that are not part of this run's "
                        f"prompts and samples (e.g. {foreign[0][0]} sample {foreign[0][1]}): the folder mixes two "
                        "runs; make the run again with --force or into another folder")
    df = run.consolidate([(it.prompt_id, it.sample) for it in items])
    run.remove_stray_temporaries()
    info = run.read_info()
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
    run.read_manifest()  # a corrupt manifest is refused before the lock file is made
    with run.merge_lock():
        finalize_run(run, items)
    return run.read_info()["totals"]


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, dynamic_ncols=True, leave=False)
