"""GenEval's decision rules as pure functions over detections (no models): which objects count, colour and relative
position checks, the per-image verdict with its `reason`, and the summary scores.

Matched to the official evaluation (djghosh13/geneval @ af4902f2): `evaluation/evaluate_images.py` (`evaluate_image`,
`evaluate`, `relative_position`, `compute_iou`, `color_classification`, `ImageCrops`) and
`evaluation/summary_scores.py`; object names from `evaluation/object_names.txt` (shipped in
`k3eval/metrics/data/geneval/`). The tests check every rule on hand-made detections with hand-computed outcomes.

Detections of one image are a k x `N_COLS` float array, one row per detected object:
`x1, y1, x2, y2` (pixels of the original image, the detector's box), `score`, `label` (index into
`GENEVAL_OBJECTS`), then the 10 colour logits of `COLORS` (NaN where the colour was not computed: only objects of
classes that a colour clause of the prompt names are classified).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cache
from importlib import resources
from typing import Any

import numpy as np

COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
#: clip_benchmark-style templates of the official colour classifier ({c}: colour, {obj}: object name)
COLOR_TEMPLATES = ("a photo of a {c} {obj}", "a photo of a {c}-colored {obj}", "a photo of a {c} object")
#: the official `bgcolor` default "#999": what surrounds the object's mask in its colour crop
BACKGROUND = (153, 153, 153)
TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS = ("left of", "right of", "above", "below")
BOX, SCORE, LABEL, COLOR0 = slice(0, 4), 4, 5, 6
N_COLS = COLOR0 + len(COLORS)


@cache
def geneval_objects() -> tuple[str, ...]:
    """GenEval's 80 object names (COCO's, with 'computer mouse', 'tv remote', 'computer keyboard'), in order."""
    text = resources.files("k3eval.metrics").joinpath("data", "geneval", "object_names.txt").read_text("utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


@dataclass(frozen=True)
class Rules:
    """The options of the official script (`--options key=value`), with its defaults."""

    threshold: float = 0.3
    counting_threshold: float = 0.9
    max_objects: int = 16
    max_overlap: float = 1.0
    position_threshold: float = 0.1

    @property
    def floor(self) -> float:
        """The lowest confidence any task accepts: detections at or below it can never count."""
        return min(self.threshold, self.counting_threshold)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- which detections count -------------------------------------------------------------------------------------
def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU with the +1 pixel convention of the official `compute_iou` (a box x1..x2 covers x2 - x1 + 1 pixels)."""
    def area(x1, y1, x2, y2):
        return max(x2 - x1 + 1, 0) * max(y2 - y1 + 1, 0)

    inter = area(max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))
    union = area(*a[:4]) + area(*b[:4]) - inter
    return inter / union if union else 0.0


def confidence_order(scores: np.ndarray) -> np.ndarray:
    """Indices by decreasing score. Ties go to the later detection first: the official `argsort(...)[::-1]` reverses
    an ascending sort, which numpy performs stably for the <= 16-ish detections of one class."""
    return np.argsort(scores, kind="stable")[::-1]


def select_objects(dets: np.ndarray, tag: str, rules: Rules = Rules()) -> dict[str, list[int]]:
    """Per object name, the rows of `dets` that count, most confident first: score strictly above the threshold
    (`counting_threshold` for the counting task), at most `max_objects`, then greedy NMS when `max_overlap` < 1.
    Classes with nothing left are absent (as in the official `detected` dict)."""
    names = geneval_objects()
    dets = np.asarray(dets, dtype=np.float64).reshape(-1, N_COLS)
    thr = rules.counting_threshold if tag == "counting" else rules.threshold
    out: dict[str, list[int]] = {}
    labels = dets[:, LABEL].astype(np.int64)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        order = rows[confidence_order(dets[rows, SCORE])]
        order = [int(i) for i in order if dets[i, SCORE] > thr][:rules.max_objects]
        kept: list[int] = []
        while order:
            best = order.pop(0)
            kept.append(best)
            if rules.max_overlap < 1:
                order = [i for i in order if box_iou(dets[best, BOX], dets[i, BOX]) < rules.max_overlap]
        if kept:
            out[names[label]] = kept
    return out


# ---- relations and colours --------------------------------------------------------------------------------------
def relative_position(box_a: Sequence[float], box_b: Sequence[float], position_threshold: float = 0.1) -> set[str]:
    """Relations of A to B from box centres and sizes: the centre offset is shrunk towards 0 on each axis by
    `position_threshold` x (size A + size B); both shrunk components below 1e-3 means no relation; otherwise they are
    divided by the length of the unshrunk offset and compared with +-0.5 (image y grows downwards)."""
    a, b = np.asarray(box_a[:4], np.float64), np.asarray(box_b[:4], np.float64)
    centre_a, centre_b = (a[:2] + a[2:]) / 2, (b[:2] + b[2:]) / 2
    size_a, size_b = np.abs(a[2:] - a[:2]), np.abs(b[2:] - b[:2])
    offset = centre_a - centre_b
    shrunk = np.maximum(np.abs(offset) - position_threshold * (size_a + size_b), 0) * np.sign(offset)
    if np.all(np.abs(shrunk) < 1e-3):
        return set()
    dx, dy = shrunk / np.linalg.norm(offset)
    rels = set()
    if dx < -0.5:
        rels.add("left of")
    if dx > 0.5:
        rels.add("right of")
    if dy < -0.5:
        rels.add("above")
    if dy > 0.5:
        rels.add("below")
    return rels


def color_names(dets: np.ndarray, rows: Sequence[int]) -> list[str]:
    """The colour of each of `rows`: the argmax of its colour logits. A row without logits is an error of the
    extractor, not of the image, so it raises."""
    logits = np.asarray(dets, np.float64)[list(rows), COLOR0:]
    if np.isnan(logits).any():
        raise ValueError("a detection of a colour clause's class has no colour logits")
    return [COLORS[i] for i in logits.argmax(1)]


def color_classes(metadata: dict[str, Any]) -> list[str]:
    """Object names whose detections need a colour (those of include clauses with a `color`), sorted."""
    return sorted({req["class"] for req in metadata.get("include", []) if "color" in req})


def zero_shot_weights(text_embeddings: np.ndarray) -> np.ndarray:
    """clip_benchmark's zero-shot classifier: each template embedding L2-normalised, averaged per class, the mean
    normalised again. `text_embeddings`: classes x templates x D; returns classes x D."""
    t = np.asarray(text_embeddings, np.float64)
    t = t / np.linalg.norm(t, axis=-1, keepdims=True)
    w = t.mean(1)
    return w / np.linalg.norm(w, axis=-1, keepdims=True)


def zero_shot_logits(image_embeddings: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """100 x cosine of each (normalised) image embedding with each class weight (N x classes)."""
    x = np.asarray(image_embeddings, np.float64)
    x = x / np.linalg.norm(x, axis=-1, keepdims=True)
    return 100.0 * x @ np.asarray(weights, np.float64).T


def masked_crop(image: np.ndarray, mask: np.ndarray | None, box: Sequence[float],
                background: tuple[int, int, int] = BACKGROUND) -> np.ndarray:
    """The colour classifier's input: the object composited through its mask over a flat background, then cropped to
    its box with the box coordinates rounded as PIL's crop rounds them, as the official `ImageCrops` with
    `bgcolor=#999`, `crop=1`. A box that rounds to nothing is widened to one pixel (the official would fail there)."""
    from PIL import Image

    img = np.asarray(image, np.uint8)
    if mask is not None:
        img = np.where(np.asarray(mask, bool)[..., None], img, np.array(background, np.uint8))
    x1, y1, x2, y2 = (int(round(float(v))) for v in box[:4])
    return np.asarray(Image.fromarray(img).crop((x1, y1, max(x2, x1 + 1), max(y2, y1 + 1))))


# ---- the verdict ------------------------------------------------------------------------------------------------
def evaluate(metadata: dict[str, Any], dets: np.ndarray, rules: Rules = Rules()) -> tuple[bool, str]:
    """(correct, reason) of one image: `include` clauses ANDed, `exclude` clauses ORed, as the official `evaluate`.

    For each include clause the first `count` objects of its class must exist; with a `color`, at least `count` of
    them must get that colour; with a `position` (relation, index of an earlier clause), each of them must have the
    relation to each object that earlier clause matched (a failed earlier clause leaves no target). An exclude clause
    fails when at least `count` objects of its class were found. Relations in a reason are listed in the fixed order
    left of, right of, above, below (the official joins a Python set, whose order varies between runs).
    """
    dets = np.asarray(dets, np.float64).reshape(-1, N_COLS)
    objects = select_objects(dets, metadata.get("tag", ""), rules)
    correct = True
    reason: list[str] = []
    matched_groups: list[list[int] | None] = []
    for req in metadata.get("include", []):
        cls, count = req["class"], req["count"]
        found = objects.get(cls, [])[:count]
        matched = True
        if len(found) < count:
            correct = matched = False
            reason.append(f"expected {cls}>={count}, found {len(found)}")
        else:
            if "color" in req:
                colors = color_names(dets, found)
                if colors.count(req["color"]) < count:
                    correct = matched = False
                    seen = ", ".join(f"{colors.count(c)} {c}" for c in COLORS if c in colors)
                    reason.append(f"expected {req['color']} {cls}>={count}, found "
                                  f"{colors.count(req['color'])} {req['color']}; and {seen}")
            if "position" in req and matched:
                relation, target = req["position"]
                if matched_groups[target] is None:
                    correct = matched = False
                    reason.append(f"no target for {cls} to be {relation}")
                else:
                    for obj in found:
                        for other in matched_groups[target]:
                            rels = relative_position(dets[obj, BOX], dets[other, BOX], rules.position_threshold)
                            if relation not in rels:
                                correct = matched = False
                                shown = " and ".join(r for r in RELATIONS if r in rels)
                                reason.append(f"expected {cls} {relation} target, found {shown} target")
                                break
                        if not matched:
                            break
        matched_groups.append(found if matched else None)
    for req in metadata.get("exclude", []):
        cls = req["class"]
        if len(objects.get(cls, [])) >= req["count"]:
            correct = False
            reason.append(f"expected {cls}<{req['count']}, found {len(objects[cls])}")
    return correct, "\n".join(reason)


def detected_boxes(dets: np.ndarray, metadata: dict[str, Any], rules: Rules = Rules()) -> str:
    """The official `details` column: per object name, the boxes (x1, y1, x2, y2, score) that counted, as JSON."""
    dets = np.asarray(dets, np.float64).reshape(-1, N_COLS)
    objects = select_objects(dets, metadata.get("tag", ""), rules)
    return json.dumps({k: [dets[i, :5].round(4).tolist() for i in rows] for k, rows in objects.items()})


# ---- label names of a detector ----------------------------------------------------------------------------------
#: other spellings of GenEval's object names in common COCO label lists (detectron2/HF: 'mouse', 'remote', ...)
ALIASES = {"mouse": "computer mouse", "remote": "tv remote", "keyboard": "computer keyboard",
           "motorbike": "motorcycle", "aeroplane": "airplane", "sofa": "couch", "pottedplant": "potted plant",
           "diningtable": "dining table", "tvmonitor": "tv", "hair dryer": "hair drier", "cellphone": "cell phone",
           "doughnut": "donut"}


def _norm(name: str) -> str:
    return " ".join(str(name).replace("_", " ").replace("-", " ").lower().split())


def label_mapping(id2label: dict[int, str]) -> tuple[dict[int, int], list[str]]:
    """Detector class index -> GenEval object index, by name (exact, then `ALIASES`); and the GenEval names no class
    maps to. Detector classes that are not GenEval objects (e.g. panoptic 'stuff') map to nothing."""
    index = {n: i for i, n in enumerate(geneval_objects())}
    mapping: dict[int, int] = {}
    for k, name in id2label.items():
        n = _norm(name)
        n = n if n in index else ALIASES.get(n, ALIASES.get(n.replace(" ", ""), n))
        if n in index:
            mapping[int(k)] = index[n]
    missing = [n for n in geneval_objects() if index[n] not in set(mapping.values())]
    return mapping, missing


# ---- summary ------------------------------------------------------------------------------------------------------
def task_order(tags: Sequence[str]) -> list[str]:
    """Tasks in order of first appearance (the official `groupby('tag', sort=False)`)."""
    return list(dict.fromkeys(str(t) for t in tags))


def summary_scores(tags: Sequence[str], correct: Sequence[bool], prompts: Sequence[str]) -> dict[str, Any]:
    """The official summary: per task the fraction of correct images; overall = mean of the task scores; the
    fraction of correct images; the fraction of prompts with at least one correct image."""
    tags = np.asarray([str(t) for t in tags])
    ok = np.asarray(correct, dtype=np.float64)
    prompts = np.asarray([str(p) for p in prompts])
    tasks = {t: float(ok[tags == t].mean()) for t in task_order(tags)}
    any_ok = [ok[prompts == p].max() for p in dict.fromkeys(prompts)]
    return {"tasks": tasks, "overall": float(np.mean(list(tasks.values()))), "correct_images": float(ok.mean()),
            "correct_prompts": float(np.mean(any_ok)), "n_images": int(ok.size), "n_prompts": len(any_ok)}
