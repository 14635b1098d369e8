"""GenEval's folder layout in and out: `k3eval export geneval RUN --out DIR` writes a run of the `geneval` prompt set
the way the official generation script does (`generation/diffusers_generate.py`: `<index>/metadata.jsonl` holding the
prompt's metadata line, `<index>/samples/<sample>.png`, index = line of `evaluation_metadata.jsonl`, both zero-padded
to 5 digits), so the official `evaluate_images.py` can score it; `k3eval import DIR --layout geneval` reads any folder
laid out that way (images made by other tools) into a run folder that `k3eval score --metrics geneval` scores.
The official reader takes every all-digit subfolder and every `<digits>.png` in its `samples/`; so does this one.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from k3eval.errors import UserError
from k3eval.metrics.geneval import metadata_of, shipped_metadata
from k3eval.utils import atomic_write_text

SAMPLE = re.compile(r"\d+\.png")


def export_geneval(run_dir: str | Path, out: str | Path, force: bool = False) -> dict[str, int]:
    """Write the status-ok images of a `geneval` run in the official layout; returns the numbers written. The folder
    is built under a temporary name and renamed into place: nothing is half-written."""
    from k3eval.runs import load_run

    run = load_run(run_dir)
    out = Path(out)
    if out.exists() and not force:
        raise UserError(f"--out {out} already exists; choose another folder or pass --force to replace it")
    rows = run.ok_rows().to_dict("records")
    if not rows:
        raise UserError(f"{run.path}: no image with status ok to export")
    order = {pid: i for i, pid in enumerate(shipped_metadata())}
    metas = [metadata_of(r) for r in rows]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.exporting-"))
    try:
        prompts = set()
        for r, meta in zip(rows, metas):
            folder = tmp / f"{order[r['prompt_id']]:05d}"
            if r["prompt_id"] not in prompts:
                (folder / "samples").mkdir(parents=True)
                (folder / "metadata.jsonl").write_text(json.dumps(meta), encoding="utf-8")
                prompts.add(r["prompt_id"])
            shutil.copyfile(run.image_path(r), folder / "samples" / f"{int(r['sample']):05d}.png")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"prompts": len(prompts), "images": len(rows)}


def _read_metadata(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path}: missing; every <index> folder of GenEval's layout holds metadata.jsonl and samples/")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg}, line {e.lineno} column {e.colno}); expected one GenEval "
                        "metadata line such as {\"tag\": ..., \"include\": [...], \"prompt\": ...}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("prompt"), str):
        raise UserError(f"{path}: expected a JSON object with a 'prompt', got {str(meta)[:80]}")
    return meta


def read_layout(folder: str | Path) -> list[dict[str, Any]]:
    """Mapping rows (file, prompt_id, sample) of a folder in GenEval's layout. Each metadata must be one of GenEval's
    553 (same prompt, tag and clauses): the metric's rules read the shipped metadata."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"IMAGES_DIR: not a folder: {folder}")
    subs = sorted((p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    if not subs:
        raise UserError(f"IMAGES_DIR {folder}: not laid out the GenEval way (no <index>/metadata.jsonl with "
                        "<index>/samples/NNNNN.png under it)")
    by_text = {m["prompt"]: pid for pid, m in shipped_metadata().items()}
    rows = []
    for sub in subs:
        meta = _read_metadata(sub / "metadata.jsonl")
        pid = by_text.get(meta["prompt"])
        if pid is None:
            raise UserError(f"{sub / 'metadata.jsonl'}: prompt {meta['prompt']!r} is not one of GenEval's 553 prompts")
        official = shipped_metadata()[pid]
        if {k: meta.get(k) for k in ("tag", "include", "exclude")} != \
                {k: official.get(k) for k in ("tag", "include", "exclude")}:
            raise UserError(f"{sub / 'metadata.jsonl'}: the tag or clauses differ from GenEval's metadata of prompt "
                            f"{meta['prompt']!r}: {json.dumps(official)}")
        samples = sub / "samples"
        for f in sorted(samples.iterdir() if samples.is_dir() else [], key=lambda p: p.name):
            if f.is_file() and SAMPLE.fullmatch(f.name):
                rows.append({"file": str(f.relative_to(folder)), "prompt_id": pid, "sample": int(f.stem)})
    return rows


def import_geneval(folder: str | Path, out: str | Path, *, name: str, version: str | None = None,
                   date: str | None = None, force: bool = False, allow_missing: bool = True, progress: bool = False):
    """Import a folder in GenEval's layout as a run of the `geneval` prompt set (through `k3eval import`'s checks:
    every image decoded, nothing half-written); the mapping it was read as is kept in the run folder."""
    from k3eval.importer import import_images
    from k3eval.prompts import load_prompt_set
    from k3eval.runs import RunFolder

    rows = read_layout(folder)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["file", "prompt_id", "sample"])
    writer.writeheader()
    writer.writerows(rows)
    with tempfile.TemporaryDirectory() as tmp:
        mapping = Path(tmp) / "geneval_layout_mapping.csv"
        mapping.write_text(buf.getvalue(), encoding="utf-8")
        report = import_images(folder, mapping, load_prompt_set("geneval"), out, name=name, version=version,
                               date=date, force=force, allow_missing=allow_missing, progress=progress)
    run = RunFolder(out)
    kept = run.path / "geneval_layout_mapping.csv"
    atomic_write_text(kept, buf.getvalue())
    info = run.read_info()
    info["imported"].update(mapping=str(kept.resolve()), layout="geneval")
    run.write_info(info)
    return report
