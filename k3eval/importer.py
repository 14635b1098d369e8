"""`k3eval import`: images made elsewhere (DALL-E 3, Midjourney, any system without open weights) as a run folder.

The mapping CSV says which file answers which prompt: columns `file` (relative to the images folder), `prompt_id`
or `prompt` (the exact text), and optional `sample` (default 0). Every file is decoded; images are stored as 8-bit
RGB PNG under `images/<prompt_id>/<sample>.png` with the same manifest columns as a generated run, so every later
stage treats the folder like a generated one.

Strict by default, and nothing is imported half-way: the folder is built under a temporary name next to `--out`
and renamed into place at the end, and only when all is well. These stop the import (nothing written):
- a mapping path that leaves IMAGES_DIR (absolute, `..`, or a link pointing outside);
- unreadable files, ambiguous rows (two images for one prompt and sample), mapping rows whose prompt id or exact
  text the prompt set does not have, byte-identical files for different rows;
- gaps: prompts with no image, and images that are all black or constant (a refused or failed export), unless
  `allow_missing` (the gaps are then listed, black images kept with status `black`, out of metrics and studies);
- odd sizes (not the most common size, or under MIN_SIDE pixels), unless `allow_odd_sizes`.
Image files in IMAGES_DIR that the mapping does not name are listed and ignored. Everything found is in
`import_report.json`.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import io
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from k3eval.errors import UserError
from k3eval.prompts.core import PromptSet
from k3eval.runs import MANIFEST_COLUMNS, RunFolder, classify_image, encode_png, image_relpath
from k3eval.utils import (
    atomic_write_bytes,
    atomic_write_json,
    check_output_dir,
    current_umask,
    git_revision,
    hardware_info,
    make_dirs,
    now_iso,
    package_versions,
    remove_empty_dirs,
    sha256_bytes,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
#: images smaller than this on either side are reported as odd whatever the usual size is (pixels)
MIN_SIDE = 64
#: how many entries of each problem an error message or the printed report shows
SHOWN = 10


@dataclass
class ImportReport:
    """What an import found. Lists hold plain records (dicts) so the report is written as JSON as is."""

    system: str
    imported: int = 0
    expected_prompts: int = 0
    prompts_without_image: list[str] = field(default_factory=list)
    #: (prompt, sample) pairs missing for prompts that have some images (samples = the highest sample + 1)
    missing_samples: list[dict[str, Any]] = field(default_factory=list)
    #: mapping rows whose prompt id or exact text the prompt set does not have
    images_without_prompt: list[dict[str, Any]] = field(default_factory=list)
    #: image files in IMAGES_DIR that the mapping does not name (ignored)
    unmapped_files: list[str] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    identical_files: list[list[str]] = field(default_factory=list)
    unreadable: list[dict[str, Any]] = field(default_factory=list)
    black_images: list[dict[str, Any]] = field(default_factory=list)
    odd_sizes: list[dict[str, Any]] = field(default_factory=list)
    usual_size: list[int] | None = None
    status: dict[str, int] = field(default_factory=dict)
    run_dir: str = ""

    def problems(self, allow_missing: bool = False, allow_odd_sizes: bool = False) -> list[str]:
        """What stops the import, one phrase each with what would accept it (empty when all is well)."""
        out = []
        if self.unreadable:
            out.append(f"{len(self.unreadable)} unreadable files")
        if self.duplicates:
            out.append(f"{len(self.duplicates)} duplicate rows (two images for one prompt and sample)")
        if self.images_without_prompt:
            out.append(f"{len(self.images_without_prompt)} mapping rows name no prompt of the set")
        if self.identical_files:
            out.append(f"{len(self.identical_files)} groups of identical files (one picture for several rows)")
        if not allow_missing and self.prompts_without_image:
            out.append(f"{len(self.prompts_without_image)} prompts have no image (--allow-missing imports the rest)")
        if not allow_missing and self.missing_samples:
            out.append(f"{len(self.missing_samples)} samples are missing for prompts that have other samples "
                       "(--allow-missing imports the rest)")
        if not allow_missing and self.black_images:
            out.append(f"{len(self.black_images)} images are all black or constant (--allow-missing keeps them "
                       "with status black, out of metrics and studies)")
        if not allow_odd_sizes and self.odd_sizes:
            out.append(f"{len(self.odd_sizes)} images have an odd size (--allow-odd-sizes accepts them)")
        return out

    def lines(self) -> list[str]:
        """The report as short lines for the terminal (every list is whole in import_report.json)."""
        out = [f"{self.system}: {self.imported} images imported into {self.run_dir or '(nothing written)'}; "
               f"status {self.status or {}}; {len(self.prompts_without_image)} of {self.expected_prompts} prompts "
               "have no image"]
        sections = [("prompts with no image", self.prompts_without_image),
                    ("missing samples", self.missing_samples),
                    ("mapping rows with no prompt", self.images_without_prompt),
                    ("files not in the mapping (ignored)", self.unmapped_files), ("duplicates", self.duplicates),
                    ("identical files", self.identical_files), ("unreadable files", self.unreadable),
                    ("all black or constant images", self.black_images),
                    (f"odd sizes (usual {self.usual_size})", self.odd_sizes)]
        for title, entries in sections:
            if entries:
                more = f" (first {SHOWN} shown; all in import_report.json)" if len(entries) > SHOWN else ""
                out.append(f"  {title}: {len(entries)}{more}")
                out.extend(f"    {e}" for e in entries[:SHOWN])
        return out


def _read_mapping(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        raise UserError(f"--mapping: file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"--mapping {path}: not UTF-8 text") from None
    reader = csv.DictReader(io.StringIO(text))
    cols = [c.strip() for c in (reader.fieldnames or [])]
    if "file" not in cols or not ({"prompt_id", "prompt"} & set(cols)):
        raise UserError(f"--mapping {path}: needs the columns 'file' and 'prompt_id' or 'prompt'; it has {cols}")
    rows = []
    for raw in reader:
        rows.append({(k or "").strip(): (v if v is not None else "") for k, v in raw.items()})
    if not rows:
        raise UserError(f"--mapping {path}: no rows")
    return rows


def _check_date(date: str | None) -> str | None:
    if date is None:
        return None
    try:
        return datetime.date.fromisoformat(date).isoformat()
    except ValueError:
        raise UserError(f"--date must be YYYY-MM-DD, got {date!r}") from None


def _decode(path: Path):
    """The image as uint8 RGB (alpha composited on white: exported images are shown that way), or an error text."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                im = Image.alpha_composite(white, rgba)
            return np.asarray(im.convert("RGB"), dtype=np.uint8), None
    except FileNotFoundError:
        return None, "file not found"
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        return None, f"cannot decode: {str(e).splitlines()[0] if str(e) else type(e).__name__}"


def import_images(images_dir: str | Path, mapping: str | Path, prompts: PromptSet, out: str | Path, *, name: str,
                  version: str | None = None, date: str | None = None, force: bool = False,
                  allow_missing: bool = False, allow_odd_sizes: bool = False,
                  progress: bool = False) -> ImportReport:
    """Import the images listed in `mapping` into a new run folder `out`; returns the import report.

    Raises UserError and writes nothing unless all is well (the rules are in the module docstring); `allow_missing`
    accepts prompts with no image and black images, `allow_odd_sizes` images of another size.
    """
    import numpy as np

    images_dir, mapping, out = Path(images_dir), Path(mapping), Path(out)
    if not name or "/" in name:
        raise UserError(f"--name must be a non-empty system name without '/', got {name!r}")
    date = _check_date(date)
    if not images_dir.is_dir():
        raise UserError(f"IMAGES_DIR: not a folder: {images_dir}")
    check_output_dir(out)
    if out.exists() and not force:
        raise UserError(f"--out {out} already exists; choose another folder or pass --force to replace it")
    root = images_dir.resolve()
    rows = _read_mapping(mapping)
    by_id = prompts.by_id()
    by_text: dict[str, str] = {}
    for p in prompts:
        by_text.setdefault(p.text, p.id)
    report = ImportReport(system=name, expected_prompts=len(prompts))

    # 1. resolve every row to (prompt_id, sample)
    claimed: dict[tuple[str, int], int] = {}
    mapped_files: set[Path] = set()
    accepted: list[tuple[int, dict[str, str], str, int, Path]] = []
    for i, row in enumerate(rows, start=2):  # line 1 is the header
        file = row.get("file", "").strip()
        if not file:
            raise UserError(f"--mapping {mapping}, line {i}: empty 'file'")
        fpath = (images_dir / file).resolve()
        if Path(file).is_absolute() or not fpath.is_relative_to(root):
            raise UserError(f"--mapping {mapping}, line {i}: file {file!r} is outside IMAGES_DIR {images_dir}; "
                            "paths in the mapping are relative to IMAGES_DIR and stay inside it")
        mapped_files.add(fpath)
        raw_sample = (row.get("sample") or "0").strip()
        try:
            sample = int(raw_sample)
            if sample < 0:
                raise ValueError
        except ValueError:
            raise UserError(f"--mapping {mapping}, line {i}: 'sample' must be an integer >= 0, got {raw_sample!r}") \
                from None
        pid = (row.get("prompt_id") or "").strip()
        if pid:
            if pid not in by_id:
                report.images_without_prompt.append({"file": file, "line": i, "reason": f"unknown prompt_id {pid!r}"})
                continue
        else:
            text = row.get("prompt") or ""
            pid = by_text.get(text) or by_text.get(text.strip(), "")
            if not pid:
                report.images_without_prompt.append({"file": file, "line": i,
                                                     "reason": f"no prompt with this exact text: {text[:60]!r}"})
                continue
        key = (pid, sample)
        if key in claimed:
            report.duplicates.append({"prompt_id": pid, "sample": sample, "lines": [claimed[key], i], "file": file})
            continue
        claimed[key] = i
        accepted.append((i, row, pid, sample, fpath))
    for f in sorted(p for p in images_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        if f.resolve() not in mapped_files:
            report.unmapped_files.append(str(f.relative_to(images_dir)))

    # 2. decode everything before writing anything
    decoded: list[tuple[str, int, str, Any, str, str]] = []
    for _line, row, pid, sample, fpath in _bar(accepted, progress):
        pixels, err = _decode(fpath)
        if err:
            report.unreadable.append({"file": row["file"], "error": err})
            continue
        src_sha = hashlib.sha256(fpath.read_bytes()).hexdigest()
        status = classify_image(pixels.astype(np.float32) / 255.0)
        decoded.append((pid, sample, row["file"], pixels, src_sha, status))
    report.black_images = [{"file": file, "prompt_id": pid, "sample": sample}
                           for pid, sample, file, _, _, status in decoded if status != "ok"]
    # Black images are alike by nature (a refused export); they are counted as gaps, not as identical files.
    seen_sha: dict[str, list[str]] = {}
    for _, _, file, _, src_sha, status in decoded:
        if status == "ok":
            seen_sha.setdefault(src_sha, []).append(file)
    report.identical_files = [files for files in seen_sha.values() if len(files) > 1]
    sizes = Counter((int(px.shape[1]), int(px.shape[0])) for _, _, _, px, _, _ in decoded)
    if sizes:
        usual = sizes.most_common(1)[0][0]
        report.usual_size = list(usual)
        for pid, sample, file, px, _, _ in decoded:
            w, h = int(px.shape[1]), int(px.shape[0])
            if (w, h) != usual or min(w, h) < MIN_SIDE:
                report.odd_sizes.append({"file": file, "prompt_id": pid, "sample": sample, "width": w, "height": h})
    have = {pid for pid, *_ in decoded}
    report.prompts_without_image = [p.id for p in prompts if p.id not in have]
    n_samples = max((sample for _, sample, *_ in decoded), default=-1) + 1
    got = {(pid, sample) for pid, sample, *_ in decoded}
    report.missing_samples = [{"prompt_id": p.id, "sample": k} for p in prompts if p.id in have
                              for k in range(n_samples) if (p.id, k) not in got]

    if not decoded:
        raise UserError(f"nothing imported: no row of {mapping} matches a prompt of '{prompts.name}'\n"
                        + "\n".join(report.lines()[1:]))
    problems = report.problems(allow_missing, allow_odd_sizes)
    if problems:
        raise UserError(f"nothing imported: {'; '.join(problems)}\n" + "\n".join(report.lines()[1:]))

    # 3. build the run folder under a temporary name, then rename it into place
    created = make_dirs(out.parent)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.importing-"))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it 0700; the run folder follows the umask
        run = RunFolder(tmp)
        order = {p.id: i for i, p in enumerate(prompts)}
        decoded.sort(key=lambda d: (order[d[0]], d[1]))
        manifest = []
        for pid, sample, file, px, src_sha, status in decoded:
            p = by_id[pid]
            data = encode_png(px)
            rel = image_relpath(pid, sample)
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)  # the whole folder is renamed into place at the end: no per-file atomicity
            manifest.append({"prompt_set": prompts.name, "prompt_id": pid, "prompt": p.text, "category": p.category,
                             "sample": sample, "seed": None, "path": rel, "width": int(px.shape[1]),
                             "height": int(px.shape[0]), "steps": None, "guidance": None, "seconds": None,
                             "status": status, "sha256": sha256_bytes(data), "bytes": len(data), "generator": name,
                             "source_file": file, "source_sha256": src_sha})
        report.imported = len(manifest)
        report.status = dict(Counter(r["status"] for r in manifest))
        _write_manifest(run, manifest)
        run.write_prompts(prompts.to_frame()[["prompt_id", "prompt", "category"]])
        info = _run_info(name, version, date, prompts, n_samples, images_dir, mapping, manifest, report)
        run.write_info(info)
        report.run_dir = str(out)
        atomic_write_json(tmp / "import_report.json", asdict(report))
        _replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_empty_dirs(created)
        raise
    return report


def _write_manifest(run: RunFolder, manifest: list[dict[str, Any]]) -> None:
    import pandas as pd

    df = pd.DataFrame(manifest)
    # Columns that are empty for imports still get the generated runs' types, so frames concatenate cleanly.
    df["seed"] = df["seed"].astype("Int64")
    for col in ("steps",):
        df[col] = df[col].astype("Int64")
    for col in ("guidance", "seconds"):
        df[col] = df[col].astype("float64")
    df = df[[*MANIFEST_COLUMNS, "source_file", "source_sha256"]]
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(run.manifest_path, buf.getvalue())


def _run_info(name: str, version: str | None, date: str | None, prompts: PromptSet, samples: int, images_dir: Path,
              mapping: Path, manifest: list[dict[str, Any]], report: ImportReport) -> dict[str, Any]:
    expected = len(prompts) * samples
    now = now_iso()
    status = dict(Counter(r["status"] for r in manifest))
    return {
        "k3eval_run": 1,
        "identity": {"generator": name, "params": {}, "dtype": None, "seed": None, "seed_rule": None,
                     "prompts": prompts.content_hash(), "samples": samples, "beautify": None},
        "generator": {"name": name, "class": "k3eval.importer:import_images", "params": {}, "device": None,
                      "dtype": None, "offline": True, "weights": {}, "version": version, "date": date,
                      "warnings": []},
        "prompt_set": {"name": prompts.name, "hash": prompts.content_hash(), "n_prompts": len(prompts),
                       "categories": prompts.categories(), "selection": prompts.selection, "source": prompts.source,
                       "license": prompts.license},
        "samples": samples,
        "seed": {"benchmark_seed": None, "rule": "imported images: made elsewhere, seeds unknown", "noise": None},
        "packages": package_versions(),
        "git_revision": git_revision(),
        "hardware": hardware_info(),
        "status": "complete" if len(manifest) == expected else "incomplete",
        "started": now,
        "finished": now,
        "totals": {"images": len(manifest), "expected": expected, "missing": expected - len(manifest),
                   "status": status},
        "imported": {"system": name, "version": version, "date": date, "images_dir": str(images_dir.resolve()),
                     "mapping": str(mapping.resolve()), "mapping_sha256": sha256_bytes(mapping.read_bytes()),
                     "imported_at": now, "prompts_without_image": len(report.prompts_without_image),
                     "missing_samples": len(report.missing_samples),
                     "images_without_prompt": len(report.images_without_prompt),
                     "unmapped_files": len(report.unmapped_files), "black_images": len(report.black_images),
                     "identical_files": len(report.identical_files), "odd_sizes": len(report.odd_sizes)},
    }


def _replace_folder(tmp: Path, out: Path) -> None:
    """Rename the finished folder into place; an existing one (--force) is moved aside first and removed after."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.replaced-{now_iso().replace(':', '')}"
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _bar(items, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(items, desc="import", unit="img", disable=not enabled, leave=False)
