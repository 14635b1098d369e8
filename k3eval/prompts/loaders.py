"""Loaders for the shipped prompt sets and for user files (CSV, TSV, JSONL, TXT)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from k3eval.errors import UserError, unknown_name
from k3eval.prompts.core import Prompt, PromptSet, slug, text_id


def _data_path(*parts: str) -> Path:
    return Path(str(resources.files("k3eval.prompts").joinpath("data", *parts)))


def _read_text(path: Path) -> str:
    if not path.exists():
        raise UserError(f"prompt file not found: {path}")
    if path.is_dir():
        raise UserError(f"prompt file {path} is a folder, not a file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read prompt file {path}: {e.strerror}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UserError(f"prompt file {path} is not valid UTF-8 (line {line}, byte {e.start}): save it as UTF-8") \
            from None


def _dedupe_ids(rows: list[Prompt]) -> list[Prompt]:
    """Content ids collide only for repeated texts; number the repeats so each id stays stable and unique."""
    seen: dict[str, int] = {}
    out = []
    for p in rows:
        n = seen.get(p.id, 0)
        seen[p.id] = n + 1
        out.append(p if n == 0 else Prompt(f"{p.id}-{n + 1}", p.text, p.category, p.tags))
    return out


# ---- shipped sets -------------------------------------------------------------------------------------------------

def load_parti() -> list[Prompt]:
    text = _read_text(_data_path("parti", "PartiPrompts.tsv"))
    # Quoting off: one prompt starts with a quoted word that an ordinary CSV reader would unquote.
    reader = csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE)
    header = next(reader)
    col = {name: i for i, name in enumerate(header)}
    rows = []
    for r in reader:
        if not r:
            continue
        tags = {"challenge": r[col["Challenge"]]}
        note = r[col["Note"]] if len(r) > col["Note"] else ""
        if note:
            tags["note"] = note
        prompt = r[col["Prompt"]]
        rows.append(Prompt(text_id("parti", prompt), prompt, r[col["Category"]], tags))
    return _dedupe_ids(rows)


def load_geneval() -> list[Prompt]:
    rows = []
    for line in _read_text(_data_path("geneval", "evaluation_metadata.jsonl")).splitlines():
        if not line.strip():
            continue
        obj = json.loads(line)
        tags = {"include": json.dumps(obj["include"])}
        if "exclude" in obj:
            tags["exclude"] = json.dumps(obj["exclude"])
        rows.append(Prompt(text_id("geneval", obj["prompt"]), obj["prompt"], obj["tag"], tags))
    return _dedupe_ids(rows)


COMPBENCH_CATEGORIES = ["color", "shape", "texture", "spatial", "non_spatial", "complex", "3d_spatial", "numeracy"]


def load_compbench() -> list[Prompt]:
    rows = []
    for cat in COMPBENCH_CATEGORIES:
        # splitlines(): the files mix CRLF and LF and some lack a final newline.
        for line in _read_text(_data_path("t2i_compbench", f"{cat}_val.txt")).splitlines():
            if line.strip():
                rows.append(Prompt(text_id(slug(cat).replace("-", "_"), line), line, cat))
    return _dedupe_ids(rows)


def load_coco30k() -> list[Prompt]:
    # A real CSV parser: 97 captions contain a newline inside a quoted field.
    reader = csv.DictReader(io.StringIO(_read_text(_data_path("coco30k", "coco_30k.csv")), newline=""))
    rows = []
    for r in reader:
        caption = " ".join(r["prompt"].split())
        rows.append(Prompt(f"coco-{int(r['image_id'])}", caption, "coco",
                           {"image_id": r["image_id"], "evaluation_seed": r["evaluation_seed"]}))
    return rows


@dataclass(frozen=True)
class SetInfo:
    name: str
    loader: Callable[[], list[Prompt]]
    description: str
    source: str
    license: str
    size: int


BUILTIN: dict[str, SetInfo] = {
    s.name: s
    for s in [
        SetInfo("parti", load_parti, "PartiPrompts (P2): 12 categories, challenge as tag",
                "google-research/parti @ 5a657978", "Apache-2.0", 1632),
        SetInfo("geneval", load_geneval, "GenEval: 6 compositional tasks (category = tag)",
                "djghosh13/geneval @ af4902f2", "MIT", 553),
        SetInfo("t2i-compbench", load_compbench, "T2I-CompBench++ validation prompts, 8 categories x 300",
                "Karine-Huang/T2I-CompBench @ 1b709499", "MIT", 2400),
        SetInfo("coco30k", load_coco30k, "30,000 MS-COCO 2014 val captions, one per image (FID-30K)",
                "rohitgandikota/erasing @ 25613d27", "MIT (file); captions CC BY 4.0 (MS-COCO)", 30000),
    ]
}


# ---- user files ---------------------------------------------------------------------------------------------------

PROMPT_COLUMNS = ("prompt", "prompts", "text", "caption")
ID_COLUMNS = ("id", "prompt_id")
CATEGORY_COLUMNS = ("category", "tag")


def _pick(columns: list[str], names: tuple[str, ...]) -> str | None:
    lower = {c.strip().lower(): c for c in columns}
    for n in names:
        if n in lower:
            return lower[n]
    return None


def _rows_from_records(path: Path, records: list[tuple[int, dict]], prefix: str) -> list[Prompt]:
    if not records:
        raise UserError(f"prompt file {path} has no prompts")
    columns = list(records[0][1].keys())
    pcol = _pick(columns, PROMPT_COLUMNS)
    if pcol is None:
        raise UserError(f"prompt file {path} has no prompt column: found columns {columns}, expected one of "
                        f"{list(PROMPT_COLUMNS)} (case-insensitive)")
    icol = _pick(columns, ID_COLUMNS)
    ccol = _pick(columns, CATEGORY_COLUMNS)
    rows: list[Prompt] = []
    seen_ids: dict[str, int] = {}
    for line, rec in records:
        if pcol not in rec:
            raise UserError(f"prompt file {path}, line {line}: no '{pcol}' field (the prompt column, as on the first "
                            "row)")
        text = rec.get(pcol)
        if not isinstance(text, str):
            raise UserError(f"prompt file {path}, line {line}: the prompt ('{pcol}') must be a string, got "
                            f"{type(text).__name__} {json.dumps(text)[:40]}")
        if not text.strip():
            raise UserError(f"prompt file {path}, line {line}: the prompt is empty")
        text = text.strip()
        category = str(rec.get(ccol) or "uncategorized").strip() if ccol else "uncategorized"
        pid = str(rec.get(icol)).strip() if icol and rec.get(icol) not in (None, "") else text_id(prefix, text)
        if pid in seen_ids:
            what = "id" if icol else "prompt (same text)"
            raise UserError(f"prompt file {path}, line {line}: duplicate {what} '{pid}' (first on line "
                            f"{seen_ids[pid]})")
        seen_ids[pid] = line
        tags = {k: str(v) for k, v in rec.items() if k not in (pcol, icol, ccol) and v not in (None, "")}
        rows.append(Prompt(pid, text, category, tags))
    return rows


def load_file(path: str | Path, prefix: str = "p") -> list[Prompt]:
    """Load a user prompt file: .csv/.tsv (header row), .jsonl (one object a line) or .txt (one prompt a line)."""
    path = Path(path)
    text = _read_text(path)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        delim = "\t" if suffix == ".tsv" else ","
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delim)
        if reader.fieldnames is None:
            raise UserError(f"prompt file {path} is empty")
        records = []
        for rec in reader:
            if None in rec:
                raise UserError(f"prompt file {path}, line {reader.line_num}: more fields than the header's "
                                f"{len(reader.fieldnames)} columns")
            if all(v in (None, "") for v in rec.values()):
                continue
            records.append((reader.line_num, rec))
        return _rows_from_records(path, records, prefix)
    if suffix in (".jsonl", ".ndjson"):
        records = []
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"prompt file {path}, line {i}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise UserError(f"prompt file {path}, line {i}: expected a JSON object, got {type(obj).__name__}")
            records.append((i, obj))
        return _rows_from_records(path, records, prefix)
    if suffix in (".txt", ".text", ""):
        records = [(i, {"prompt": line}) for i, line in enumerate(text.splitlines(), start=1) if line.strip()]
        return _rows_from_records(path, records, prefix)
    raise UserError(f"prompt file {path}: unsupported extension '{suffix}'; use .csv, .tsv, .jsonl or .txt")


def load_drawbench(path: str | Path) -> list[Prompt]:
    """DrawBench from the user's own copy (it states no licence, so k3eval does not ship it)."""
    rows = load_file(path, prefix="drawbench")
    # The sheet export has a trailing space in one category name ('Gary Marcus et al. ').
    return [Prompt(p.id, p.text, p.category.strip(), p.tags) for p in rows]


def load_prompt_set(spec: str) -> PromptSet:
    """Resolve a prompt-set spec: a built-in name, `drawbench:PATH`, `file:PATH`, or a path to a prompt file."""
    if spec in BUILTIN:
        info = BUILTIN[spec]
        return PromptSet(spec, info.loader(), info.source, info.license)
    if spec.startswith("drawbench:"):
        path = spec.split(":", 1)[1]
        return PromptSet(spec, load_drawbench(path), f"user file {path}", "unknown (DrawBench states none)")
    path = spec[5:] if spec.startswith("file:") else spec
    p = Path(path)
    if p.suffix.lower() in (".csv", ".tsv", ".jsonl", ".ndjson", ".txt") or p.exists() or spec.startswith("file:"):
        return PromptSet(spec, load_file(p), f"user file {p}", "user-provided")
    raise unknown_name("prompt set", spec, [*BUILTIN, "drawbench:PATH", "file:PATH"])
