"""The run folder: run.json, manifest.parquet, images/<prompt_id>/<sample>.png.

Crash safety: an image is written under a temporary name and renamed; its manifest row is appended to a per-writer
journal (`.journal/*.jsonl`, one fsync'd line per image) only after the rename. `manifest.parquet` is rebuilt from
the journals atomically. A torn last journal line (a crash mid-write) is ignored, so the manifest never holds a row
whose image is incomplete; the next append starts on a fresh line so the torn one cannot swallow a good row.
Temporary files a kill leaves behind (`.NAME.*.tmp`) are never read and are removed when the run is merged.

Several writers (torchrun ranks, `--shard I/N` jobs) each append to their own journal and, when done, leave a
marker `.journal/shard-I-of-N.done`; the manifest is merged once every shard of the same N has finished.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from k3eval.errors import UserError
from k3eval.utils import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    file_lock,
    now_iso,
    sha256_bytes,
    write_then_rename,
)

if TYPE_CHECKING:
    from k3eval.prompts.core import PromptSet

MANIFEST_COLUMNS = ["prompt_set", "prompt_id", "prompt", "category", "sample", "seed", "path", "width", "height",
                    "steps", "guidance", "seconds", "status", "sha256", "bytes", "generator"]
STATUSES = ("ok", "nan", "black")
#: columns without which a manifest cannot be read at all (a parquet file of something else)
KEY_COLUMNS = ("prompt_id", "sample", "status", "path")
#: fields of run.json that every later stage reads: (section, key)
RUN_FIELDS = (("generator", "name"), ("prompt_set", "name"), ("prompt_set", "hash"))
PNG_END = b"IEND\xaeB`\x82"


def image_relpath(prompt_id: str, sample: int) -> str:
    return f"images/{prompt_id}/{sample}.png"


def classify_image(image: np.ndarray) -> str:
    """'nan' if any value is not finite, 'black' if the image is constant (all black, or flat: fp16 overflow),
    else 'ok'. `image` is float in [0, 1], HxWxC."""
    if not np.isfinite(image).all():
        return "nan"
    if float(image.max()) - float(image.min()) < 1.0 / 255.0:
        return "black"
    return "ok"


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float [0, 1] HxWxC -> uint8 by rounding (not truncation); NaN becomes 0."""
    arr = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)


def encode_png(image_u8: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    mode = "RGB" if image_u8.ndim == 3 and image_u8.shape[2] == 3 else None
    Image.fromarray(image_u8, mode=mode).save(buf, format="PNG", compress_level=4)
    return buf.getvalue()


class RunFolder:
    """One run of one generator over one prompt selection."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # ---- paths --------------------------------------------------------------------------------------------------
    @property
    def run_json(self) -> Path:
        return self.path / "run.json"

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.parquet"

    @property
    def journal_dir(self) -> Path:
        return self.path / ".journal"

    @property
    def scores_dir(self) -> Path:
        return self.path / "scores"

    @property
    def prompts_path(self) -> Path:
        return self.path / "prompts.parquet"

    def exists(self) -> bool:
        return self.run_json.exists()

    # ---- run.json -----------------------------------------------------------------------------------------------
    def read_info(self) -> dict[str, Any]:
        if not self.run_json.exists():
            raise UserError(f"{self.path} is not a run folder: it has no run.json")
        try:
            info = json.loads(self.run_json.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{self.run_json} is not valid JSON: {e}") from None
        if not isinstance(info, dict):
            raise UserError(f"{self.run_json}: expected a JSON object, got {type(info).__name__}")
        return info

    def write_info(self, info: dict[str, Any]) -> None:
        atomic_write_json(self.run_json, info)

    def check_identity(self, identity: dict[str, Any], prompts: PromptSet | None = None) -> None:
        """Refuse to mix runs: an existing run.json must record the same identity (generator, parameters, dtype,
        seed and seed rule, prompt selection hash, samples, beautify model). The error names every difference;
        for the prompt selection it compares the folder's prompts.parquet with `prompts`."""
        if not self.exists():
            return
        old = recorded_identity(self.read_info())
        # compare as stored: JSON turns tuples into lists
        new = json.loads(json.dumps(identity, default=_json_default))
        diffs = []
        unrecorded = [key for key in new if key not in old]
        if unrecorded:
            diffs.append(f"made by an older k3eval, the folder does not record {', '.join(unrecorded)}")
        for key, value in new.items():
            if key not in old or old[key] == value:
                continue
            if key == "params" and isinstance(old[key], dict) and isinstance(value, dict):
                diffs.extend(f"params.{k}: folder has {old[key].get(k)!r}, this run has {value.get(k)!r}"
                             for k in sorted(set(old[key]) | set(value)) if old[key].get(k) != value.get(k))
            elif key == "prompts":
                diffs.append(self._prompts_difference(prompts) or f"prompts: folder has selection hash "
                             f"{str(old[key])[:12]}, this run has {str(value)[:12]}")
            else:
                diffs.append(f"{key}: folder has {old[key]!r}, this run has {value!r}")
        if diffs:
            raise UserError(f"output folder {self.path} holds a different run ({'; '.join(diffs)}); "
                            "use another --out, or --force to replace it")

    def _prompts_difference(self, prompts: PromptSet | None) -> str | None:
        """How this run's prompts differ from the folder's (counts, ids on one side only, changed texts)."""
        if prompts is None or not self.prompts_path.exists():
            return None
        try:
            frame = self.read_prompts()
        except UserError:
            return None
        have = dict(zip(frame["prompt_id"].astype(str), frame["prompt"].astype(str)))
        want = {p.id: p.text for p in prompts}
        only_old = [i for i in have if i not in want]
        only_new = [i for i in want if i not in have]
        changed = [i for i in want if i in have and have[i] != want[i]]
        parts = [f"prompts: the folder has {len(have)}, this run {len(want)}"]
        if only_old:
            parts.append(f"{len(only_old)} only in the folder ({_few(only_old)})")
        if only_new:
            parts.append(f"{len(only_new)} only in this run ({_few(only_new)})")
        if changed:
            i = changed[0]
            parts.append(f"{len(changed)} with another text (e.g. {i}: {have[i][:40]!r} in the folder, "
                         f"{want[i][:40]!r} now)")
        if len(parts) == 1:
            parts.append("the same ids and texts in another order or with other categories")
        return ", ".join(parts)

    def remove_unstarted(self) -> None:
        """Remove what a run that has produced no image yet wrote (run.json, prompts, rewrites, journals, locks),
        so that a command failing before its first result leaves the folder as it found it."""
        for p in (self.path / "images", self.journal_dir):
            if p.exists():
                shutil.rmtree(p)
        for p in (self.run_json, self.prompts_path, self.path / "beautified.json", self.path / ".merge.lock"):
            p.unlink(missing_ok=True)

    def reset(self) -> None:
        """Remove images, manifest, journals, scores and cached prompt rewrites (for --force)."""
        for p in (self.path / "images", self.journal_dir, self.scores_dir):
            if p.exists():
                shutil.rmtree(p)
        for p in (self.manifest_path, self.run_json, self.prompts_path, self.path / "beautified.json"):
            p.unlink(missing_ok=True)

    # ---- images -------------------------------------------------------------------------------------------------
    def write_image(self, prompt_id: str, sample: int, image_u8: np.ndarray) -> tuple[str, str, int]:
        """Write one PNG atomically; returns (relative path, sha256 of the file, size in bytes)."""
        data = encode_png(image_u8)
        rel = image_relpath(prompt_id, sample)
        # No fsync per image: it cost ~10 % of the time of small images and only guards against a machine crash (a
        # killed process loses nothing already written); after one, the resume check (size as journaled, PNG end
        # chunk) finds a torn image and makes it again.
        write_then_rename(self.path / rel, data, fsync=False)
        return rel, sha256_bytes(data), len(data)

    def image_complete(self, row: dict[str, Any]) -> bool:
        """Cheap completeness check: file present, size as recorded and the PNG end chunk in place."""
        if row.get("status") == "nan":
            return True  # no image is written for NaN outputs; the row itself is the record
        p = self.path / str(row["path"])
        try:
            size = p.stat().st_size
            if row.get("bytes") is not None and size != int(row["bytes"]):
                return False
            with open(p, "rb") as f:
                f.seek(max(0, size - len(PNG_END)))
                return f.read() == PNG_END
        except OSError:
            return False

    # ---- manifest -----------------------------------------------------------------------------------------------
    def journal_path(self, writer: str) -> Path:
        return self.journal_dir / f"{writer}.jsonl"

    def append_rows(self, writer: str, rows: Iterable[dict[str, Any]]) -> None:
        """Append rows to this writer's journal, one line each, fsync'd: a row is durable once this returns."""
        self.journal_dir.mkdir(parents=True, exist_ok=True)
        lines = "".join(json.dumps(r, ensure_ascii=False, default=_json_default) + "\n" for r in rows)
        path = self.journal_path(writer)
        # A kill mid-line leaves a torn last line without its newline; appending straight after it would glue the
        # next (good) row onto it and lose both. Start on a fresh line instead: the torn line stays unparseable alone.
        if _ends_without_newline(path):
            lines = "\n" + lines
        with open(path, "a", encoding="utf-8") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())

    def _journal_rows(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        if not self.journal_dir.exists():
            return rows
        for jp in sorted(self.journal_dir.glob("*.jsonl")):
            for line in jp.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line torn by a crash: its image is regenerated on resume
        return rows

    def read_manifest(self):
        """All rows (manifest.parquet plus journals), one per (prompt_id, sample), the latest record winning."""
        import pandas as pd

        frames = []
        if self.manifest_path.exists():
            frames.append(_read_parquet(self.manifest_path, KEY_COLUMNS))
        jrows = self._journal_rows()
        if jrows:
            frames.append(pd.DataFrame(jrows))
        if not frames:
            return pd.DataFrame(columns=MANIFEST_COLUMNS)
        df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        df = df.drop_duplicates(subset=["prompt_id", "sample"], keep="last")
        return df.reset_index(drop=True)

    def consolidate(self, order: list[tuple[str, int]] | None = None):
        """Rewrite manifest.parquet from everything recorded (atomically) and drop the journals."""
        df = self.read_manifest()
        if order is not None and len(df):
            rank = {key: i for i, key in enumerate(order)}
            df = df.assign(_o=[rank.get((p, int(s)), len(rank)) for p, s in zip(df["prompt_id"], df["sample"])])
            df = df.sort_values(["_o", "prompt_id", "sample"]).drop(columns="_o").reset_index(drop=True)
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        atomic_write_bytes(self.manifest_path, buf.getvalue())
        if self.journal_dir.exists():
            shutil.rmtree(self.journal_dir)
        return df

    # ---- shards -------------------------------------------------------------------------------------------------
    def shard_marker(self, rank: int, world: int) -> Path:
        return self.journal_dir / f"shard-{rank:03d}-of-{world:03d}.done"

    def mark_shard_done(self, rank: int, world: int) -> None:
        """Record that shard `rank` of `world` has journaled every image it was given."""
        self.journal_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.shard_marker(rank, world), now_iso() + "\n")

    def shards_done(self, world: int) -> list[int]:
        """Ranks of a `world`-way split that have finished."""
        return [r for r in range(world) if self.shard_marker(r, world).exists()]

    def merge_lock(self):
        """An exclusive lock on the run folder, so two shards finishing together do not both merge."""
        return file_lock(self.path / ".merge.lock")

    def remove_stray_temporaries(self) -> list[Path]:
        """Delete temporary files left by a killed writer (`.NAME.XXXX.tmp`, see `atomic_write_bytes`).

        Only safe when no writer is active, i.e. while merging; returns what was removed.
        """
        removed = []
        folders = [self.path, self.journal_dir, self.scores_dir]
        images = self.path / "images"
        if images.exists():
            folders += [images, *(d for d in images.iterdir() if d.is_dir())]
        for folder in folders:
            if not folder.is_dir():
                continue
            for p in folder.glob(".*.tmp"):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    removed.append(p)
        return removed

    # ---- the prompt list of the run -----------------------------------------------------------------------------
    def write_prompts(self, frame) -> None:
        """Store the run's prompts (prompt_id, prompt, category, in work order) so a later merge knows them."""
        buf = io.BytesIO()
        frame.to_parquet(buf, index=False)
        atomic_write_bytes(self.prompts_path, buf.getvalue())

    def read_prompts(self):
        if not self.prompts_path.exists():
            raise UserError(f"run folder {self.path} has no prompts.parquet (made by a k3eval before 0.1?): "
                            "rerun `k3eval generate` with the same arguments to merge it")
        return _read_parquet(self.prompts_path, ("prompt_id", "prompt", "category"))

    def ok_rows(self):
        """Manifest rows whose status is 'ok' (what metrics and studies use)."""
        df = self.read_manifest()
        return df[df["status"] == "ok"].reset_index(drop=True)

    def image_path(self, row: dict[str, Any]) -> Path:
        return self.path / str(row["path"])


def recorded_identity(info: dict[str, Any]) -> dict[str, Any]:
    """The identity a run.json records. Folders of k3eval 0.1 stored only generator, params, seed and the prompt set's
    name there; the rest of their run.json holds what is now in it (selection hash, samples, dtype, seed rule,
    beautify model), so their identity is completed from it and they can still be resumed."""
    ident = dict(info["identity"]) if isinstance(info.get("identity"), dict) else {}
    sections = {k: info.get(k) if isinstance(info.get(k), dict) else {} for k in ("prompt_set", "generator", "seed")}
    derived = {"prompts": sections["prompt_set"].get("hash"), "samples": info.get("samples"),
               "dtype": sections["generator"].get("dtype"), "seed_rule": sections["seed"].get("rule"),
               "beautify": (info.get("beautify") or {}).get("model") if isinstance(info.get("beautify"), dict)
               else None}
    for key, value in derived.items():
        if key not in ident and (value is not None or key == "beautify"):
            ident[key] = value
    return ident


def _read_parquet(path: Path, columns: Iterable[str]):
    """A parquet file of the run folder, or a one-line error when it is truncated, corrupt or not the run's."""
    import pandas as pd
    import pyarrow

    try:
        df = pd.read_parquet(path)
    except (pyarrow.ArrowException, OSError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path} is truncated or corrupt ({first}); restore it from a copy, or make the run again "
                        "with `k3eval generate ... --force`") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise UserError(f"{path} is not a k3eval run file: it lacks the column(s) {', '.join(missing)}")
    return df


def _few(ids: list[str], n: int = 3) -> str:
    return ", ".join(ids[:n]) + (", ..." if len(ids) > n else "")


def _ends_without_newline(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"
    except FileNotFoundError:
        return False


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def load_run(path: str | Path) -> RunFolder:
    """Open an existing run folder, with a clear error when it is not one."""
    run = RunFolder(path)
    if not run.path.exists():
        raise UserError(f"run folder not found: {run.path}")
    if not run.path.is_dir():
        raise UserError(f"{run.path} is a file, not a run folder")
    info = run.read_info()
    missing = [f"{a}.{b}" for a, b in RUN_FIELDS if not isinstance(info.get(a), dict) or not info[a].get(b)]
    if missing:
        raise UserError(f"{run.run_json} lacks what a run records ({', '.join(missing)}): it was not written by "
                        "`k3eval generate` or `k3eval import`")
    if not run.manifest_path.exists() and not run.journal_dir.exists():
        raise UserError(f"run folder {run.path} has no manifest.parquet: generate into it first")
    return run


__all__ = ["MANIFEST_COLUMNS", "RunFolder", "classify_image", "image_relpath", "load_run", "now_iso", "to_uint8"]
