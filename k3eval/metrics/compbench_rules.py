"""T2I-CompBench's scoring rules as pure functions over model outputs (VQA answers, detections, depth, cosines).

Matched to the official scripts (Karine-Huang/T2I-CompBench @ 1b709499), each cited where its rule is:
- attribute binding (colour, shape, texture): `BLIPvqa_eval/BLIP_vqa.py` (+ `BLIP/train_vqa_func.py`,
  `models/blip_vqa.py`, `data/utils.py`);
- 2D spatial: `UniDet_eval/2D_spatial_eval.py` (`determine_position` and the scoring in `main`);
- 3D spatial: `UniDet_eval/3D_spatial_eval.py` (depth from `experts/depth/`, boxes from `experts/obj_detection/`);
- numeracy: `UniDet_eval/numeracy_eval.py` with the object list `examples/dataset/new_objects.txt`;
- non-spatial: `CLIPScore_eval/CLIP_similarity.py`;
- complex: `3_in_1_eval/3_in_1.py` with `examples/dataset/complex_val_{spatial,action}.txt`.
The three data files are shipped in `k3eval/metrics/data/t2i_compbench/` (see SOURCES.md there).

Detections are a k x 6 float array per image, rows sorted by decreasing score: `x1, y1, x2, y2` in the detection
frame of the official UniDet input (`detection_frame`), `score`, `query` (index of the object phrase the detector
was asked for); the label of a row is the rule's name of that phrase (`DetectionQuery`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np

from k3eval.metrics.phrases import Token

CATEGORIES = ("color", "shape", "texture", "spatial", "non_spatial", "complex", "3d_spatial", "numeracy")
ATTRIBUTE = ("color", "shape", "texture")
#: how each category is scored
METHODS = {"color": "blip_vqa", "shape": "blip_vqa", "texture": "blip_vqa", "spatial": "spatial_2d",
           "3d_spatial": "spatial_3d", "numeracy": "numeracy", "non_spatial": "clip", "complex": "3_in_1"}


def _data(name: str) -> str:
    return resources.files("k3eval.metrics").joinpath("data", "t2i_compbench", name).read_text("utf-8")


# ---- attribute binding: BLIP-VQA ---------------------------------------------------------------------------------
#: noun chunks the official script never asks about
SKIPPED_CHUNKS = ("top", "the side", "the left", "the right")
MAX_QUESTIONS = 8  # the official --np_num


def pre_question(question: str, max_words: int = 50) -> str:
    """BLIP's question normalisation (`data/utils.py: pre_question`): lower case, drop . ! " ( ) * # : ; ~, strip
    trailing spaces, keep the first 50 words."""
    q = re.sub(r"[.!\"()*#:;~]", "", question.lower()).rstrip(" ")
    words = q.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else q


def blip_questions(prompt: str, chunks: Sequence[str], max_questions: int = MAX_QUESTIONS) -> list[str]:
    """One question "<noun chunk>?" per noun chunk of the prompt (skipping `SKIPPED_CHUNKS`), at most 8, each
    normalised as BLIP does."""
    kept = [c for c in chunks if c not in SKIPPED_CHUNKS][:max_questions]
    return [pre_question(f"{c}?") for c in kept]


def yes_probability(logit_yes: np.ndarray, logit_no: np.ndarray) -> np.ndarray:
    """P(yes) of BLIP's `vqa_prob`: softmax over the vocabulary, then p(yes) / (p(yes) + p(no)); the vocabulary's
    normaliser cancels, so this is the logistic function of the logit difference."""
    d = np.asarray(logit_yes, np.float64) - np.asarray(logit_no, np.float64)
    return 1.0 / (1.0 + np.exp(-d))


def blip_image_score(probs: Sequence[float], max_questions: int = MAX_QUESTIONS) -> float:
    """The image's attribute score: the product over questions of P(yes), a missing question counting 1. As the
    official script: each answer is written with 4 decimals and read back, the product is taken in float32, and the
    result is written with 4 decimals again."""
    reward = np.ones(max_questions, np.float32)
    for i, p in enumerate(list(probs)[:max_questions]):
        reward[i] = np.float32(float(f"{float(np.float32(p)):.4f}"))
    prod = reward[0]
    for r in reward[1:]:
        prod = np.float32(prod * r)
    return float(f"{float(prod):.4f}")


# ---- the detection frame --------------------------------------------------------------------------------------------
def detection_frame(width: int, height: int, size: int = 479, max_size: int = 480) -> tuple[int, int]:
    """(width, height) of the image UniDet sees: torchvision `Resize(size=479, max_size=480)` of the original, the
    frame its boxes (and so the 150-pixel distance threshold and the depth crops) are in."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    if new_long > max_size:
        new_short, new_long = int(max_size * new_short / new_long), max_size
    return (new_short, new_long) if width <= height else (new_long, new_short)


# ---- objects of a prompt --------------------------------------------------------------------------------------------
PERSON_WORDS = ("girl", "boy", "man", "woman")
SPATIAL_2D = ("on side of", "next to", "near", "on the left of", "on the right of", "on the bottom of", "on the top of",
              "on top of")
SPATIAL_3D = ("in front of", "behind", "hidden")
COMPLEX_PREPOSITIONS = ("on top of", "on bottom of", "on the left", "on the right", "next to", "on side of", "near")


def locality(prompt: str, vocabulary: Sequence[str]) -> str | None:
    """The first relation of the vocabulary that occurs in the prompt (as a substring, as the official)."""
    return next((w for w in vocabulary if w in prompt), None)


def person(word: str | None) -> str | None:
    """girl/boy/man/woman are detected as 'person' (the official mapping to UniDet's label)."""
    return "person" if word in PERSON_WORDS else word


def first_last_nouns(tokens: Sequence[Token]) -> tuple[str | None, str | None]:
    """The two objects of a simple spatial prompt: its first and its last NOUN (None when it has none; the official
    script would fail there)."""
    nouns = [t.text for t in tokens if t.pos == "NOUN"]
    return (nouns[0], nouns[-1]) if nouns else (None, None)


def _span(tokens: Sequence[Token], i: int, k: int) -> str:
    from k3eval.metrics.phrases import span_text

    return span_text(list(tokens[i:i + k]))


def complex_objects(tokens: Sequence[Token]) -> tuple[str | None, str | None]:
    """The two objects of a complex prompt (the `--complex` branch of `2D_spatial_eval.py`): at every preposition of
    `COMPLEX_PREPOSITIONS` (matched over 3, 2 or 1 tokens), the nearest NOUN or PROPN before it and the nearest NOUN
    after it (else the first PROPN after it that is not followed by another PROPN); exactly two objects in all, or
    none."""
    objects: list[str] = []
    n = len(tokens)
    for i in range(n):
        k = next((k for k in (3, 2, 1) if _span(tokens, i, k) in COMPLEX_PREPOSITIONS), 0)
        if not k:
            continue
        for j in range(i - 1, -1, -1):
            if tokens[j].pos in ("NOUN", "PROPN"):
                objects.append(tokens[j].text)
                break
        reached_end = False
        for j in range(i + k, n):
            if tokens[j].pos == "NOUN":
                objects.append(tokens[j].text)
                break
            if j == n - 1:
                reached_end = True
        if reached_end:
            for j in range(i + k, n):
                if j + 1 < n and tokens[j].pos == "PROPN" and tokens[j + 1].pos != "PROPN":
                    objects.append(tokens[j].text)
                    break
    return (objects[0], objects[1]) if len(objects) == 2 else (None, None)


@cache
def numeracy_objects() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(singular names, plural names) of `new_objects.txt`, lower case, in file order."""
    pairs = [line.split(" - ") for line in _data("new_objects.txt").splitlines() if line.strip()]
    return tuple(p[0].strip().lower() for p in pairs), tuple(p[1].strip().lower() for p in pairs)


NUMBER_WORDS = ("a", "an", "one", "two", "three", "four", "five", "six", "seven", "eight")
_NUMBER_VALUES = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8}
#: the official renames of object names before matching detections
NUMERACY_RENAMES = {"boy": "person", "girl": "person", "man": "person", "woman": "person", "ship": "boat",
                    "telivision": "tv", "goldfish": "fish", "painting": "picture"}


def numeracy_targets(tokens: Sequence[Token]) -> tuple[list[str], list[int]]:
    """(objects, counts) of a numeracy prompt as the official parses it: each number word (a, an, one ... eight)
    followed by a one- or two-word name of `new_objects.txt`. A plural name gives its singular and the number
    (word2number's value; 'a'/'an' have none, and the official then records the object without a count); a singular
    name after a/an/one counts 1. A singular-only name after a larger number is an error in the official script;
    here it is skipped."""
    singular, plural = numeracy_objects()
    words = [t.text for t in tokens]
    objs: list[str] = []
    counts: list[int] = []
    for i, w in enumerate(words):
        if w not in NUMBER_WORDS or i + 1 >= len(words):
            continue
        two = f"{words[i + 1]} {words[i + 2]}" if i < len(words) - 2 else None
        if two is not None and (two in singular or two in plural):
            if two in plural and w not in ("a", "an", "one"):
                objs.append(singular[plural.index(two)])
                if w in _NUMBER_VALUES:
                    counts.append(_NUMBER_VALUES[w])
            else:
                counts.append(1)
                objs.append(two)
        elif words[i + 1] in singular or words[i + 1] in plural:
            nxt = words[i + 1]
            if nxt in singular and w in ("a", "an", "one"):
                counts.append(1)
                objs.append(nxt)
            elif nxt in plural:
                objs.append(singular[plural.index(nxt)])
                if w in _NUMBER_VALUES:
                    counts.append(_NUMBER_VALUES[w])
    return objs, counts


def numeracy_label(name: str) -> str:
    return NUMERACY_RENAMES.get(name, name)


@dataclass(frozen=True)
class DetectionQuery:
    """What the detector is asked for in one image: object phrases (as the prompt says them) and the label each
    detection of a phrase gets in the rules (e.g. 'girl' is asked for and labelled 'person')."""

    phrases: tuple[str, ...]
    labels: tuple[str, ...]


# ---- 2D and 3D spatial ----------------------------------------------------------------------------------------------
def _iou_and_distances(box1: Sequence[float], box2: Sequence[float]) -> tuple[float, float, float]:
    c1 = ((box1[0] + box1[2]) / 2, (box1[1] + box1[3]) / 2)
    c2 = ((box2[0] + box2[2]) / 2, (box2[1] + box2[3]) / 2)
    dx, dy = c2[0] - c1[0], c2[1] - c1[1]
    ox = max(0, min(box1[2], box2[2]) - max(box1[0], box2[0]))
    oy = max(0, min(box1[3], box2[3]) - max(box1[1], box2[1]))
    inter = ox * oy
    union = (box1[2] - box1[0]) * (box1[3] - box1[1]) + (box2[2] - box2[0]) * (box2[3] - box2[1]) - inter
    return inter / union, dx, dy


def position_score(relation: str | None, box1: Sequence[float], box2: Sequence[float], iou_threshold: float = 0.1,
                   distance_threshold: float = 150.0, depth1: float | None = None, depth2: float | None = None,
                   iou_threshold_3d: float = 0.5) -> float:
    """The official `determine_position`: the soft score of object 1 having `relation` to object 2, from box
    centres (distance = centre 2 - centre 1) and the IoU. 'on top of' (without 'the') is in the relation vocabulary
    but not handled by the rule, so it scores 0, as in the official script. For 'in front of', 'behind' and
    'hidden', `depth1`/`depth2` are the mean depths of the two boxes (larger = nearer)."""
    iou, dx, dy = _iou_and_distances(box1, box2)
    if relation in ("next to", "on side of", "near"):
        if abs(dx) < distance_threshold or abs(dy) < distance_threshold:
            return 1.0
        return distance_threshold / max(abs(dx), abs(dy))
    horizontal = {"on the right of": dx < 0, "on the left of": dx > 0}
    vertical = {"on the bottom of": dy < 0, "on the top of": dy > 0}
    if relation in horizontal or relation in vertical:
        along, across = (abs(dx), abs(dy)) if relation in horizontal else (abs(dy), abs(dx))
        if not {**horizontal, **vertical}[relation] or along <= across:
            return 0.0
        return 1.0 if iou < iou_threshold else iou_threshold / iou
    if relation in ("in front of", "behind", "hidden"):
        diff = depth1 - depth2
        nearer = diff > 0 if relation == "in front of" else diff < 0
        if iou > iou_threshold_3d:
            return 1.0 if nearer else 0.0
        if 0 < iou < iou_threshold_3d:
            return iou / iou_threshold_3d if nearer else 0.0
        return 0.0
    return 0.0


def spatial_2d_score(relation: str | None, obj1: str | None, obj2: str | None, labels: Sequence[str],
                     dets: np.ndarray) -> float:
    """The image score of `2D_spatial_eval.py`: with both objects detected (the first, i.e. most confident, detection
    of each label), 0.25 x conf1 + 0.25 x conf2 + position score / 2; with one of them, 0.25 x its confidence; then
    anything below 0.5 becomes 0. `labels[i]` is the label of detection row i."""
    dets = np.asarray(dets, np.float64).reshape(-1, 6)
    labels = list(labels)
    if obj1 in labels and obj2 in labels:
        i, j = labels.index(obj1), labels.index(obj2)
        score = 0.25 * dets[i, 4] + 0.25 * dets[j, 4] + position_score(relation, dets[i, :4], dets[j, :4]) / 2
    elif obj1 in labels:
        score = 0.25 * dets[labels.index(obj1), 4]
    elif obj2 in labels:
        score = 0.25 * dets[labels.index(obj2), 4]
    else:
        score = 0.0
    return 0.0 if score < 0.5 else float(score)


def box_depth(depth: np.ndarray, box: Sequence[float]) -> float:
    """Mean of the depth map over a box as `3D_spatial_eval.py` indexes it: `depth[int(x1):int(x2), int(y1):int(y2)]`
    (x as the row index, as the official does); NaN for an empty crop."""
    crop = np.asarray(depth)[int(box[0]):int(box[2]), int(box[1]):int(box[3])]
    return float(crop.mean()) if crop.size else float("nan")


def spatial_3d_score(relation: str | None, obj1: str | None, obj2: str | None, labels: Sequence[str],
                     dets: np.ndarray, depths: Sequence[float]) -> float:
    """The image score of `3D_spatial_eval.py`: objects matched by substring of the detected labels (object 1: the
    last match before both are found, object 2: the first), 0.25 x conf1 + 0.25 x conf2 + position score / 2, one
    object alone 0.25 x its confidence; no cut at 0.5. `depths[i]`: `box_depth` of detection row i."""
    dets = np.asarray(dets, np.float64).reshape(-1, 6)
    labels = list(labels)
    joined = " ".join(labels)
    has1 = obj1 is not None and obj1 in joined
    has2 = obj2 is not None and obj2 in joined
    if has1 and has2:
        p1 = p2 = None
        for i, name in enumerate(labels):
            if obj1 in name:
                p1 = i
            if obj2 in name:
                p2 = i
            if p1 is not None and p2 is not None:
                break
        return float(0.25 * dets[p1, 4] + 0.25 * dets[p2, 4]
                     + position_score(relation, dets[p1, :4], dets[p2, :4], depth1=depths[p1], depth2=depths[p2]) / 2)
    for has, obj in ((has1, obj1), (has2, obj2)):
        if has:
            return float(0.25 * dets[next(i for i, n in enumerate(labels) if obj in n), 4])
    return 0.0


def depth_in_frame(depth: np.ndarray, original_size: tuple[int, int], frame: tuple[int, int]) -> np.ndarray:
    """The depth map as `3D_spatial_eval.py` reads it back: min-max normalised, resized bilinearly (align_corners)
    to the original size, stored as an 8-bit image (PIL's float to 8-bit conversion truncates), resized bilinearly
    (PIL) to the detection frame and divided by 255. `original_size` and `frame` are (width, height)."""
    import torch
    from PIL import Image

    d = torch.as_tensor(np.asarray(depth, np.float32))
    d = (d - d.min()) / (d.max() - d.min())
    w, h = original_size
    d = torch.nn.functional.interpolate(d[None, None], size=(h, w), mode="bilinear", align_corners=True)[0, 0]
    im = Image.fromarray((255 * d).numpy().astype(np.float32)).convert("L").resize(frame, Image.BILINEAR)
    return np.asarray(im, np.float32) / 255.0


# ---- numeracy -----------------------------------------------------------------------------------------------------
def _numeracy_overlap(b1: Sequence[float], b2: Sequence[float]) -> bool:
    """The official `calculate_iou`'s duplicate test (+1 pixel convention): IoU > 0.9, or the intersection covering
    more than 90 % of either box."""
    ix = max(0, min(b1[2], b2[2]) - max(b1[0], b2[0]) + 1)
    iy = max(0, min(b1[3], b2[3]) - max(b1[1], b2[1]) + 1)
    inter = ix * iy
    a1 = (b1[2] - b1[0] + 1) * (b1[3] - b1[1] + 1)
    a2 = (b2[2] - b2[0] + 1) * (b2[3] - b2[1] + 1)
    return inter / (a1 + a2 - inter) > 0.9 or inter / a1 > 0.9 or inter / a2 > 0.9


def numeracy_score(objects: Sequence[str], counts: Sequence[int], labels: Sequence[str], dets: np.ndarray) -> float:
    """The image score of `numeracy_eval.py`: detections of the same label that overlap (`_numeracy_overlap`) with an
    earlier one are dropped; then each prompt object (renamed by `NUMERACY_RENAMES`) adds 0.5/n when detected and
    another 0.5/n when its detected count equals the prompt's (n: number of objects). A prompt object absent from the
    labels takes over the labels that contain it as a substring. No object parsed: 0 (the official divides by 0)."""
    if not objects:
        return 0.0
    dets = np.asarray(dets, np.float64).reshape(-1, 6)
    kept: list[str] = []
    boxes: list[np.ndarray] = []
    for name, row in zip(labels, dets):
        if not any(name == k and _numeracy_overlap(row[:4], b) for k, b in zip(kept, boxes)):
            kept.append(name)
            boxes.append(row[:4])
    weight = 1.0 / len(objects)
    score = 0.0
    for i, obj in enumerate(objects):
        obj = numeracy_label(obj)
        if obj not in kept:
            kept = [obj if obj in k else k for k in kept]
        if obj in kept:
            score += 0.5 * weight
            if i < len(counts) and kept.count(obj) == counts[i]:
                score += 0.5 * weight
    return score


# ---- non-spatial and complex -----------------------------------------------------------------------------------------
def clip_complex_text(tokens: Sequence[Token]) -> str:
    """The CLIP text of a complex prompt: its tokens without adjectives, joined by single spaces."""
    return " ".join(t.text for t in tokens if t.pos != "ADJ")


def _complex_key(line: str) -> str:
    return line.split(".")[0].lower()


@cache
def _complex_lists() -> tuple[frozenset[str], frozenset[str]]:
    return (frozenset(_complex_key(x) for x in _data("complex_val_spatial.txt").splitlines()),
            frozenset(_complex_key(x) for x in _data("complex_val_action.txt").splitlines()))


def complex_kind(prompt: str) -> str:
    """'spatial' (a spatial relation and attributes), 'action' (an action and attributes) or 'both', by the
    official lists (prompts compared by their text before the first '.', lower case)."""
    spatial, action = _complex_lists()
    key = _complex_key(prompt)
    return "spatial" if key in spatial else "action" if key in action else "both"


def three_in_one(kind: str, attribute: float, spatial: float, action: float) -> float:
    """`3_in_1.py`: (spatial + attribute) / 2, (action + attribute) / 2, or the mean of all three."""
    if kind == "spatial":
        return (spatial + attribute) * 0.5
    if kind == "action":
        return (action + attribute) * 0.5
    return (attribute + spatial + action) / 3
