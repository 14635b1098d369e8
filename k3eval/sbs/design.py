"""Study design: which pairs of images are compared, by whom, in which order and on which side.

Pure and seeded: `plan_study` turns run folders into a `StudyPlan` (items, gold items, swapped repeats and every
annotator's queue with the side of each shown item) without touching the database; `k3eval.sbs.store` persists it.

Rules (docs/sbs.md):
- one regular item per (prompt_id, sample) present with status ok in both runs of a comparison; comparisons are all
  pairs of runs in the order given, or each run against `reference`;
- every regular and gold item is assigned to exactly `overlap` distinct annotators, loads differ by at most one;
- gold items (a fraction of the regular ones) have a known answer: for alignment, the true image against the same
  run's image for another prompt (preferably of another category); for quality, an image against a visibly
  degraded copy of itself (blur + noise + JPEG, made here and stored in the database, never as a file next to the
  run);
- a repeat shows one of an annotator's regular items to that annotator again, later in the queue, with the sides
  swapped; it is an item of its own assigned to that annotator only, so it never adds a vote to the original;
- each queue interleaves categories and comparisons evenly and never holds an item twice;
- the side of every shown item is drawn at random and stored;
- a comparison is paired only when both runs used the same benchmark seed, seed rule and samples per prompt, so
  that each item shows two images made from the same initial noise; runs that differ there are refused unless
  `unpaired` is asked for, and the study records which it is (`StudyPlan.pairing`). Imported runs (seeds unknown)
  are paired by prompt and sample only, and recorded as such.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from k3eval.errors import UserError

QUESTIONS = ("alignment", "quality")
ANSWERS = ("left", "right", "equal", "both_bad")
# Gold answers are stored relative to the item's a/b images; the first image is always the genuine one.
GOLD_KINDS = {"alignment": "other_prompt", "quality": "degraded"}
# A repeat comes at least this many positions after its original (fewer when the queue is short).
REPEAT_MIN_GAP = 5
#: what each pairing mode of a study means, in words (for the CLI and reports)
PAIRING_MODES = {
    "seed": "paired: both images of an item answer the same prompt and sample from the same initial noise",
    "prompt": "paired by prompt and sample only: some runs do not record their seeds (imported images)",
    "unpaired": "UNPAIRED (--unpaired): the runs differ in benchmark seed or samples per prompt, so the images of an "
                "item do not share their initial noise",
}


@dataclass(frozen=True)
class RunImages:
    """One run folder as a study sees it: its name, folder and ok images keyed by (prompt_id, sample)."""

    name: str
    path: Path
    prompt_set: str
    prompt_set_hash: str
    generator: str
    images: dict[tuple[str, int], dict] = field(repr=False)
    #: benchmark seed, seed rule and samples per prompt from run.json (None when not recorded, e.g. imported images)
    benchmark_seed: int | None = None
    seed_rule: str | None = None
    samples: int | None = None


@dataclass(frozen=True)
class ImageSource:
    """Where a shown image comes from: a run's file, or a degraded copy of one (made when the study is created)."""

    run: str
    prompt_id: str
    sample: int
    degraded: bool = False


@dataclass
class PlannedItem:
    """One comparison shown to annotators. `image_a` is from `model_a`, `image_b` from `model_b`.

    kind: 'regular', 'gold' or 'repeat'. For gold, `gold_question` is the question with a known answer and
    `gold_answer` is 'a' (the first image is always the genuine one); `model_b` is then '<gold:other_prompt>' or
    '<gold:degraded>' so that a gold vote can never count for a real model. For a repeat, `repeat_of` is the index
    of the original item in `StudyPlan.items`.
    """

    key: int
    kind: str
    prompt_id: str
    prompt: str
    category: str
    sample: int
    model_a: str
    model_b: str
    image_a: ImageSource
    image_b: ImageSource
    gold_question: str | None = None
    gold_answer: str | None = None
    repeat_of: int | None = None


@dataclass
class PlannedAssignment:
    """Item `item` (index into `StudyPlan.items`) shown to annotator `annotator` at queue `position` (0-based);
    `left_is_a` tells whether image_a is on the left."""

    annotator: int
    item: int
    position: int
    left_is_a: bool


@dataclass
class StudyPlan:
    runs: list[RunImages]
    comparisons: list[tuple[str, str]]
    items: list[PlannedItem]
    assignments: list[PlannedAssignment]
    annotators: list[str]
    overlap: int
    questions: tuple[str, ...]
    prompt_set: str
    prompt_set_hash: str
    #: how the compared images are paired (see `pairing_of`); stored with the study
    pairing: dict = field(default_factory=dict)

    def queue(self, annotator: int) -> list[PlannedAssignment]:
        return sorted((a for a in self.assignments if a.annotator == annotator), key=lambda a: a.position)


# ---- inputs -----------------------------------------------------------------------------------------------------
def load_run_images(runs: dict[str, Path] | list[Path]) -> list[RunImages]:
    """Open run folders (made by `k3eval generate`); names default to the folder names. Only status-ok rows count."""
    from k3eval.runs import load_run

    if isinstance(runs, dict):
        named = [(str(k), Path(v)) for k, v in runs.items()]
    else:
        named = [(Path(p).name, Path(p)) for p in runs]
    if len(named) < 2:
        raise UserError(f"runs: a study needs at least two run folders, got {len(named)}")
    names = [n for n, _ in named]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"runs: two runs share the name {dup[0]!r}; give them distinct names (runs as a dict)")
    out = []
    for name, path in named:
        if not name or name.startswith("<"):
            raise UserError(f"runs: run name {name!r} is not allowed (empty or starting with '<')")
        run = load_run(path)
        info = run.read_info()
        ps = info.get("prompt_set") or {}
        rows = run.ok_rows()
        images = {(str(r["prompt_id"]), int(r["sample"])): {"prompt": str(r["prompt"]),
                                                            "category": str(r["category"]),
                                                            "path": str(run.image_path(r).resolve())}
                  for r in rows.to_dict("records")}
        gen = (info.get("generator") or {}).get("name") or str(info.get("identity", {}).get("generator", ""))
        seed = info.get("seed") if isinstance(info.get("seed"), dict) else {}
        samples = info.get("samples")
        out.append(RunImages(name, path.resolve(), str(ps.get("name", "")), str(ps.get("hash", "")), gen, images,
                             seed.get("benchmark_seed"), seed.get("rule") if seed.get("benchmark_seed") is not None
                             else None, samples if isinstance(samples, int) else None))
    hashes = {r.prompt_set_hash for r in out}
    if len(hashes) != 1:
        listed = ", ".join(f"{r.name}: {r.prompt_set} {r.prompt_set_hash[:12]}" for r in out)
        raise UserError(f"runs: the run folders were made on different prompt sets ({listed}); a study compares "
                        "runs of one prompt set (same selection)")
    return out


def comparisons_for(names: list[str], reference: str | None,
                    pairs: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    """The comparisons of a study: the explicit `pairs` (e.g. the benchmark's `comparisons:`), else each other run
    against `reference` (reference first), else all pairs in the order given."""
    if pairs is not None:
        if reference is not None:
            raise UserError("give either reference or explicit pairs (comparisons), not both")
        seen: set[frozenset[str]] = set()
        for a, b in pairs:
            for n in (a, b):
                if n not in names:
                    raise UserError(f"pairs: {n!r} is not one of the runs ({', '.join(names)})")
            if a == b or frozenset((a, b)) in seen:
                raise UserError(f"pairs: {a} vs {b} compares a run with itself or repeats a pair")
            seen.add(frozenset((a, b)))
        if not pairs:
            raise UserError("pairs: at least one comparison is needed")
        return [(a, b) for a, b in pairs]
    if reference is None:
        return [(names[i], names[j]) for i in range(len(names)) for j in range(i + 1, len(names))]
    if reference not in names:
        raise UserError(f"reference: {reference!r} is not one of the runs ({', '.join(names)})")
    return [(reference, n) for n in names if n != reference]


def pairing_of(runs: list[RunImages], comparisons: list[tuple[str, str]], unpaired: bool = False) -> dict:
    """How the images of each comparison are paired, as stored with the study (`study_info(...)["pairing"]`).

    mode: 'seed' when both runs of every comparison share the benchmark seed, seed rule and samples per prompt
    (the same prompt, sample and initial noise on both sides); 'prompt' when some run does not record its seeds
    (imported images) but samples agree; 'unpaired' when seeds or sample counts differ, which is refused unless
    `unpaired` is True. Also: runs {name: {benchmark_seed, samples}} and differences (one line per comparison)."""
    by_name = {r.name: r for r in runs}
    differences: list[str] = []
    unknown = False
    for a, b in comparisons:
        ra, rb = by_name[a], by_name[b]
        diff = []
        if ra.samples is not None and rb.samples is not None and ra.samples != rb.samples:
            diff.append(f"samples per prompt {ra.samples} vs {rb.samples}")
        if ra.benchmark_seed is None or rb.benchmark_seed is None:
            unknown = True
        elif ra.benchmark_seed != rb.benchmark_seed:
            diff.append(f"benchmark seed {ra.benchmark_seed} vs {rb.benchmark_seed}")
        elif ra.seed_rule != rb.seed_rule:
            diff.append(f"seed rule {ra.seed_rule!r} vs {rb.seed_rule!r}")
        if diff:
            differences.append(f"{a} vs {b}: {', '.join(diff)}")
    if differences and not unpaired:
        raise UserError(f"runs: not a paired comparison ({'; '.join(differences)}): the images of an item would not "
                        "share their initial noise or the runs cover other samples; make the runs with the same seed "
                        "and samples, or pass --unpaired (study: unpaired: true) to compare them anyway, recorded as "
                        "unpaired")
    mode = "unpaired" if differences else ("prompt" if unknown else "seed")
    return {"mode": mode, "differences": differences,
            "runs": {r.name: {"benchmark_seed": r.benchmark_seed, "samples": r.samples} for r in runs}}


def annotator_names(annotators: int | list[str]) -> list[str]:
    """An int N gives annotator-01 ... annotator-N; a list is used as given (names must be distinct, non-empty)."""
    if isinstance(annotators, bool) or not isinstance(annotators, (int, list, tuple)):
        raise UserError(f"annotators: expected a number or a list of names, got {annotators!r}")
    if isinstance(annotators, int):
        if annotators < 1:
            raise UserError(f"annotators: need at least 1, got {annotators}")
        width = max(2, len(str(annotators)))
        return [f"annotator-{i + 1:0{width}d}" for i in range(annotators)]
    names = [str(a).strip() for a in annotators]
    if not names or any(not n for n in names):
        raise UserError(f"annotators: names must be non-empty, got {list(annotators)!r}")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"annotators: the name {dup[0]!r} appears twice")
    if any(len(n) > 100 for n in names):
        raise UserError("annotators: names are at most 100 characters")
    return names


# ---- planning ---------------------------------------------------------------------------------------------------
def plan_study(runs: list[RunImages], annotators: list[str], overlap: int, *, gold: float = 0.05,
               repeats: float = 0.05, questions: tuple[str, ...] = QUESTIONS, reference: str | None = None,
               seed: int = 0, pairs: list[tuple[str, str]] | None = None, unpaired: bool = False) -> StudyPlan:
    """Build the whole study design, deterministically from `seed`.

    overlap: annotators per item, 1 <= overlap <= len(annotators). gold: gold items as a fraction of the regular
    items, in [0, 0.5]. repeats: swapped repeats as a fraction of each annotator's regular items, in [0, 0.5].
    unpaired: accept comparisons of runs made with other seeds or sample counts (see `pairing_of`).
    """
    questions = check_questions(questions)
    if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 1:
        raise UserError(f"overlap: expected an integer >= 1, got {overlap!r}")
    if overlap > len(annotators):
        raise UserError(f"overlap: each item needs {overlap} distinct annotators but the study has only "
                        f"{len(annotators)}; lower --overlap or add annotators")
    for label, v in (("gold", gold), ("repeats", repeats)):
        if not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 0.5:
            raise UserError(f"{label}: expected a fraction between 0 and 0.5, got {v!r}")
    rng = np.random.default_rng(seed)
    comps = comparisons_for([r.name for r in runs], reference, pairs)
    pairing = pairing_of(runs, comps, unpaired)
    by_name = {r.name: r for r in runs}

    items: list[PlannedItem] = []
    for a, b in comps:
        ra, rb = by_name[a], by_name[b]
        for key in sorted(set(ra.images) & set(rb.images)):
            meta = ra.images[key]
            items.append(PlannedItem(len(items), "regular", key[0], meta["prompt"], meta["category"], key[1], a, b,
                                     ImageSource(a, *key), ImageSource(b, *key)))
    if not items:
        raise UserError("runs: no (prompt, sample) has an ok image in both runs of any comparison; nothing to compare")
    n_regular = len(items)
    items.extend(_gold_items(runs, items, questions, gold, rng))

    assign = _assign(len(items), len(annotators), overlap, rng)
    assignments: list[PlannedAssignment] = []
    for ann, own in enumerate(assign):
        order = _interleave(own, [(items[i].model_a, items[i].model_b, items[i].category) for i in own], rng)
        shown = [PlannedAssignment(ann, i, 0, bool(rng.random() < 0.5)) for i in order]
        shown = _add_repeats(shown, items, n_regular, repeats, rng)
        for pos, s in enumerate(shown):
            s.position = pos
        assignments.extend(shown)
    r0 = runs[0]
    return StudyPlan(runs, comps, items, assignments, annotators, overlap, questions, r0.prompt_set,
                     r0.prompt_set_hash, pairing)


def check_questions(questions) -> tuple[str, ...]:
    if isinstance(questions, str):
        questions = tuple(q.strip() for q in questions.split(",") if q.strip())
    qs = tuple(questions)
    bad = [q for q in qs if q not in QUESTIONS]
    if not qs or bad or len(set(qs)) != len(qs):
        raise UserError(f"questions: expected distinct names from {', '.join(QUESTIONS)}, got {list(qs)!r}")
    return qs


def _gold_items(runs: list[RunImages], regular: list[PlannedItem], questions: tuple[str, ...], gold: float,
                rng: np.random.Generator) -> list[PlannedItem]:
    n = int(round(gold * len(regular)))
    if gold > 0 and n == 0:
        n = 1  # a requested gold fraction never silently becomes no gold at all
    if n == 0:
        return []
    kinds = [q for q in questions if q in GOLD_KINDS]
    out: list[PlannedItem] = []
    picks = rng.permutation(len(regular))
    by_name = {r.name: r for r in runs}
    for j in range(n):
        src = regular[int(picks[j % len(picks)])]
        run_name = src.model_a if rng.random() < 0.5 else src.model_b
        q = kinds[j % len(kinds)]
        key = len(regular) + len(out)
        genuine = ImageSource(run_name, src.prompt_id, src.sample)
        if q == "alignment":
            other = _other_prompt_image(by_name[run_name], src, rng)
            if other is None:
                continue
            item = PlannedItem(key, "gold", src.prompt_id, src.prompt, src.category, src.sample, run_name,
                               "<gold:other_prompt>", genuine, ImageSource(run_name, other[0], other[1]),
                               "alignment", "a")
        else:
            item = PlannedItem(key, "gold", src.prompt_id, src.prompt, src.category, src.sample, run_name,
                               "<gold:degraded>", genuine, ImageSource(run_name, src.prompt_id, src.sample, True),
                               "quality", "a")
        out.append(item)
    return out


def _other_prompt_image(run: RunImages, src: PlannedItem, rng: np.random.Generator) -> tuple[str, int] | None:
    """An image of the same run made for a different prompt, preferably of another category."""
    keys = [k for k in run.images if k[0] != src.prompt_id and run.images[k]["prompt"] != src.prompt]
    if not keys:
        return None
    other_cat = [k for k in keys if run.images[k]["category"] != src.category]
    pool = sorted(other_cat or keys)
    return pool[int(rng.integers(len(pool)))]


def _assign(n_items: int, n_annotators: int, overlap: int, rng: np.random.Generator) -> list[list[int]]:
    """Give every item `overlap` distinct annotators, always the least-loaded ones (random among ties), so loads
    differ by at most one and annotator pairs mix (which agreement statistics need)."""
    load = np.zeros(n_annotators, dtype=np.int64)
    own: list[list[int]] = [[] for _ in range(n_annotators)]
    for item in rng.permutation(n_items):
        # sort by load, random tie-break: lexsort uses the last key as primary
        order = np.lexsort((rng.random(n_annotators), load))
        for ann in order[:overlap]:
            own[int(ann)].append(int(item))
            load[ann] += 1
    return own


def _interleave(ids: list[int], groups: list[tuple], rng: np.random.Generator) -> list[int]:
    """Order ids so that every group (comparison, category) is spread evenly over the queue: the i-th of n members of
    a group gets the position (i + U) / n, U uniform, and ids are sorted by position."""
    members: dict[tuple, list[int]] = {}
    for i, g in zip(ids, groups):
        members.setdefault(g, []).append(i)
    keyed = []
    for g in sorted(members):
        m = [members[g][k] for k in rng.permutation(len(members[g]))]
        for rank, i in enumerate(m):
            keyed.append(((rank + rng.random()) / len(m), i))
    keyed.sort()
    return [i for _, i in keyed]


def _add_repeats(shown: list[PlannedAssignment], items: list[PlannedItem], n_regular: int, repeats: float,
                 rng: np.random.Generator) -> list[PlannedAssignment]:
    regular = [k for k, s in enumerate(shown) if items[s.item].kind == "regular"]
    n = int(round(repeats * len(regular)))
    if repeats > 0 and n == 0 and len(regular) >= 2 * REPEAT_MIN_GAP:
        n = 1
    if n == 0:
        return shown
    # repeat items from the first part of the queue so that the repeat can come well after the original
    candidates = regular[: max(n, len(regular) - REPEAT_MIN_GAP)]
    chosen = sorted(int(candidates[k]) for k in rng.choice(len(candidates), size=min(n, len(candidates)),
                                                           replace=False))
    out = list(shown)
    for k in chosen:
        orig = shown[k]
        src = items[orig.item]
        rep = PlannedItem(len(items), "repeat", src.prompt_id, src.prompt, src.category, src.sample, src.model_a,
                          src.model_b, src.image_a, src.image_b, repeat_of=orig.item)
        items.append(rep)
        at = next(j for j, s in enumerate(out) if s is orig)
        lo = min(len(out), at + REPEAT_MIN_GAP)
        pos = int(rng.integers(lo, len(out) + 1))
        out.insert(pos, PlannedAssignment(orig.annotator, rep.key, 0, not orig.left_is_a))
    return out


# ---- degraded gold copies ---------------------------------------------------------------------------------------
def degrade_image(data: bytes, seed: int) -> bytes:
    """A visibly degraded copy of an image (heavy blur, Gaussian noise, JPEG at quality 8), returned as PNG so that
    its file format does not differ from the other images shown. Deterministic for a given seed."""
    from PIL import Image, ImageFilter

    img = Image.open(io.BytesIO(data)).convert("RGB")
    radius = max(2.0, max(img.size) / 40.0)
    img = img.filter(ImageFilter.GaussianBlur(radius))
    arr = np.asarray(img, dtype=np.float32)
    noise = np.random.default_rng(seed).normal(0.0, 28.0, size=arr.shape)
    img = Image.fromarray(np.clip(arr + noise, 0, 255).astype(np.uint8), mode="RGB")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=8)
    img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


__all__ = ["ANSWERS", "PAIRING_MODES", "QUESTIONS", "ImageSource", "PlannedAssignment", "PlannedItem", "RunImages",
           "StudyPlan", "annotator_names", "check_questions", "comparisons_for", "degrade_image", "load_run_images",
           "pairing_of", "plan_study"]
