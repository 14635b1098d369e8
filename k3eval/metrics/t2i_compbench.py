"""T2I-CompBench (`k3eval score RUN --metrics t2i_compbench`): each category scored the way its official script
scores it, from cached model outputs, with the rules of `compbench_rules` (cited there).

| category | official evaluator | here |
|---|---|---|
| color, shape, texture | BLIP VQA, `BLIP_vqa.py` | transformers `BlipForQuestionAnswering` (Salesforce/blip-vqa-base) |
| spatial | UniDet (detectron2), `2D_spatial_eval.py` | Grounding DINO asked for the two objects |
| 3d_spatial | UniDet + DPT depth, `3D_spatial_eval.py` | Grounding DINO + Depth Anything |
| numeracy | UniDet, `numeracy_eval.py` | Grounding DINO asked for the counted objects |
| non_spatial | CLIP ViT-B/32, `CLIP_similarity.py` | open_clip ViT-B-32 / openai |
| complex | `3_in_1.py`: BLIP-VQA, UniDet 2D and CLIP | the three above |

Why Grounding DINO: UniDet answers with a 700-class unified label space (COCO, Objects365, OpenImages, Mapillary) and
the prompts name objects outside COCO's 80 (lamp, candle, balloon, desk...), so a COCO detector such as Mask2Former
would miss them by construction; Grounding DINO is open-vocabulary and is asked for exactly the prompt's object
phrases, each detection labelled with the name the rule matches (girl/boy/man/woman -> person, as the official).

Every extractor is an image-text extractor whose text is empty for images of categories that do not use it, so each
model runs only on its categories; answers, detections and depths are cached by (image sha256, text).
"""

from __future__ import annotations

import json
from functools import cache, cached_property
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from k3eval.metrics import compbench_rules as C
from k3eval.metrics.api import ImageTextExtractor, Metric, MetricResult, Need, ScoreContext, ScoreData, weights_warning

OFFICIAL = "Karine-Huang/T2I-CompBench @ 1b709499"
EXTRACTOR_VERSION = 1


@cache
def shipped_prompts() -> dict[str, tuple[str, str]]:
    """prompt id of the `t2i-compbench` prompt set -> (text, category)."""
    from k3eval.prompts.loaders import load_compbench

    return {p.id: (p.text, p.category) for p in load_compbench()}


def category_of(row: dict) -> str:
    """The category of a T2I-CompBench prompt; a UserError for prompts of other sets."""
    from k3eval.metrics.geneval import wrong_set_error

    known = shipped_prompts().get(str(row.get("prompt_id")))
    if known is None or known[0] != row.get("prompt", known[0]):
        raise wrong_set_error("t2i_compbench", row)
    return known[1]


class CompbenchSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    vqa_model: str = Field("Salesforce/blip-vqa-base", description="BLIP VQA: hub id, folder, or 'synthetic'")
    vqa_image_size: int = Field(480, ge=16, description="BLIP input size (the official config: 480)")
    detector: str = Field("IDEA-Research/grounding-dino-base", description="Grounding DINO: hub id, folder, synthetic")
    box_threshold: float = Field(0.35, ge=0, le=1)
    depth_model: str = Field("depth-anything/Depth-Anything-V2-Small-hf", description="hub id, folder, synthetic")
    clip_model: str = "ViT-B-32"
    clip_pretrained: str = "openai"
    parser: Literal["auto", "spacy", "rules"] = "auto"
    batch_size: int | None = Field(None, ge=1)


# ---- what each image asks the models ----------------------------------------------------------------------------
def detection_query(prompt: str, category: str, tokens) -> C.DetectionQuery | None:
    """The object phrases the detector is asked for in an image of `category`, and their labels in the rules."""
    if category in ("spatial", "3d_spatial", "complex"):
        o1, o2 = C.complex_objects(tokens) if category == "complex" else C.first_last_nouns(tokens)
        if o1 is None:
            return None
        phrases = tuple(dict.fromkeys((o1, o2)))
        return C.DetectionQuery(phrases, tuple(C.person(p) for p in phrases))
    if category == "numeracy":
        objs, _ = C.numeracy_targets(tokens)
        phrases = tuple(dict.fromkeys(objs))
        return C.DetectionQuery(phrases, tuple(C.numeracy_label(p) for p in phrases)) if phrases else None
    return None


def parse_outcome(prompt: str, category: str, parser) -> tuple:
    """Everything the parser decides about a prompt (questions, objects, CLIP text): two parsers agree on a prompt
    when these are equal."""
    tokens = parser.tokens(prompt)
    questions = C.blip_questions(prompt, parser.noun_chunks(prompt)) if category in C.ATTRIBUTE + ("complex",) else ()
    query = detection_query(prompt, category, tokens)
    clip = C.clip_complex_text(tokens) if category == "complex" else None
    return tuple(questions), query, clip


class _Skipping(ImageTextExtractor):
    """An image-text extractor that does nothing (an empty output of the usual number of dimensions) for an empty
    text."""

    empty_shape: tuple[int, ...] = (0,)

    def prepare(self, image: np.ndarray, text: str):
        return None if not text else self.prepare_one(image, text)

    def prepare_one(self, image: np.ndarray, text: str) -> Any:
        raise NotImplementedError

    def run(self, batch: list) -> list[np.ndarray]:
        todo = [i for i, b in enumerate(batch) if b is not None]
        out = [np.zeros(self.empty_shape, np.float32) for _ in batch]
        for i, v in zip(todo, self.run_some([batch[i] for i in todo]) if todo else []):
            out[i] = v
        return out

    def run_some(self, batch: list) -> list[np.ndarray]:
        raise NotImplementedError


class BlipAnswers(_Skipping):
    """P(yes) of each question (text: JSON list of questions)."""

    def __init__(self, blip, batch_size: int):
        self.blip, self.batch_size = blip, batch_size

    @property
    def fingerprint(self) -> dict[str, Any]:
        return {"extractor": "t2i-compbench blip-vqa answers", "version": EXTRACTOR_VERSION, **self.blip.fingerprint}

    def prepare_one(self, image, text):
        return self.blip.prepare(image), json.loads(text)

    def run_some(self, batch):
        return self.blip.yes_probability([b[0] for b in batch], [b[1] for b in batch])


class GroundedObjects(_Skipping):
    """Detections of the phrases (text: JSON list) as k x 6 rows in UniDet's detection frame: x1, y1, x2, y2, score,
    phrase index, by decreasing score."""

    empty_shape = (0, 6)

    def __init__(self, detector, batch_size: int):
        self.detector, self.batch_size = detector, batch_size

    @property
    def fingerprint(self) -> dict[str, Any]:
        return {"extractor": "t2i-compbench grounded objects", "version": EXTRACTOR_VERSION,
                **self.detector.fingerprint, "frame": "torchvision Resize(479, max_size=480) of the image (UniDet's)"}

    def prepare_one(self, image, text):
        h, w = image.shape[:2]
        return self.detector.prepare(image, json.loads(text)), (w, h)

    def run_some(self, batch):
        out = []
        for det, (w, h) in zip(self.detector.detect([b[0] for b in batch]), [b[1] for b in batch]):
            fw, fh = C.detection_frame(w, h)
            det = det.copy()
            det[:, [0, 2]] *= fw / w
            det[:, [1, 3]] *= fh / h
            out.append(det.reshape(-1, 6))
        return out


class GroundedDepth(_Skipping):
    """`GroundedObjects` rows plus the mean depth of each box (`compbench_rules.box_depth` on the depth map as the
    official reads it back: `depth_in_frame`), k x 7."""

    empty_shape = (0, 7)

    def __init__(self, objects: GroundedObjects, depth, batch_size: int):
        self.objects, self.depth, self.batch_size = objects, depth, batch_size

    @property
    def fingerprint(self) -> dict[str, Any]:
        return {**self.objects.fingerprint, "extractor": "t2i-compbench grounded objects with depth",
                "depth": self.depth.fingerprint, "depth_map": "min-max, bilinear (align_corners) to the image, "
                "8-bit, PIL bilinear to the frame, /255; box mean over depth[x1:x2, y1:y2] as the official"}

    def prepare_one(self, image, text):
        h, w = image.shape[:2]
        return self.objects.prepare_one(image, text), self.depth.prepare(image), (w, h)

    def run_some(self, batch):
        dets = self.objects.run_some([b[0] for b in batch])
        maps = self.depth.predict([b[1] for b in batch])
        out = []
        for det, pred, (w, h) in zip(dets, maps, [b[2] for b in batch]):
            dmap = C.depth_in_frame(pred, (w, h), C.detection_frame(w, h))
            depths = np.array([C.box_depth(dmap, r[:4]) for r in det], np.float32)
            out.append(np.concatenate([det, depths[:, None]], 1).reshape(-1, 7))
        return out


class ClipCosine(_Skipping):
    """Cosine of the CLIP embeddings of the image and the text, as `CLIP_similarity.py` (no scaling, no clamp)."""

    def __init__(self, clip, batch_size: int):
        self.clip, self.batch_size = clip, batch_size

    @property
    def fingerprint(self) -> dict[str, Any]:
        fp = {k: v for k, v in self.clip.fingerprint.items() if k != "features"}
        return {**fp, "extractor": "t2i-compbench clip cosine", "version": EXTRACTOR_VERSION}

    def prepare_one(self, image, text):
        return image, text

    def run_some(self, batch):
        enc = self.clip.encoder()
        a = enc.encode_images([b[0] for b in batch]).astype(np.float64)
        t = enc.encode_texts([b[1] for b in batch]).astype(np.float64)
        cos = (a * t).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(t, axis=1))
        return [np.array([c], np.float32) for c in cos]


def _models(s: CompbenchSettings, device: str):
    from k3eval.metrics import vision_models as V

    return (V.BlipVqa(V.resolve_model("blip_vqa", s.vqa_model, "t2i_compbench.vqa_model"),
                      "t2i_compbench.vqa_model", device, s.vqa_image_size),
            V.GroundingDetector(V.resolve_model("grounding_dino", s.detector, "t2i_compbench.detector"),
                                "t2i_compbench.detector", device, s.box_threshold),
            V.DepthModel(V.resolve_model("depth", s.depth_model, "t2i_compbench.depth_model"),
                         "t2i_compbench.depth_model", device))


class T2ICompBench(Metric):
    name = "t2i_compbench"
    display_name = "T2I-CompBench"
    higher_is_better = True
    unit = "score (0-1; CLIP: cosine)"
    Settings = CompbenchSettings

    def needs(self, ctx: ScoreContext) -> dict[str, Need]:
        from k3eval.metrics.clip_metrics import clip_image_need

        s: CompbenchSettings = self.settings
        o = ctx.opts
        bs = s.batch_size or o.batch_size
        blip, detector, depth = ctx.shared(_models, s, o.device)
        objects = ctx.shared(GroundedObjects, detector, bs)
        clip = clip_image_need(ctx, "open_clip", s.clip_model, s.clip_pretrained, "T2I-CompBench CLIP").extractor

        def text(kind: str):
            def of(row: dict) -> str:
                cat = category_of(row)
                questions, query, clip_text = self.outcome(str(row["prompt"]), cat)
                if kind == "vqa":
                    return json.dumps(list(questions)) if cat in C.ATTRIBUTE + ("complex",) else ""
                if kind == "objects":
                    return json.dumps(query.phrases) if query and cat in ("spatial", "numeracy", "complex") else ""
                if kind == "depth":
                    return json.dumps(query.phrases) if query and cat == "3d_spatial" else ""
                return clip_text if cat == "complex" else str(row["prompt"]) if cat == "non_spatial" else ""
            return of

        return {"vqa": Need(ctx.shared(BlipAnswers, blip, bs), text=text("vqa"), desc="BLIP-VQA answers"),
                "objects": Need(objects, text=text("objects"), desc="Grounding DINO detections"),
                "depth": Need(ctx.shared(GroundedDepth, objects, depth, bs), text=text("depth"), desc="depth"),
                "clip": Need(ctx.shared(ClipCosine, clip, bs), text=text("clip"), desc="CLIP similarity")}

    @cached_property
    def parsers(self):
        """(the parser used, spaCy's when installed), chosen once per scoring call."""
        from k3eval.metrics.phrases import get_parser

        return get_parser(self.settings.parser)

    @property
    def parser(self):
        return self.parsers[0]

    def outcome(self, prompt: str, category: str) -> tuple:
        """`parse_outcome` of a prompt with the parser used, computed once per prompt."""
        if not hasattr(self, "_outcomes"):
            self._outcomes: dict[tuple[str, str], tuple] = {}
        key = (prompt, category)
        if key not in self._outcomes:
            self._outcomes[key] = parse_outcome(prompt, category, self.parser)
        return self._outcomes[key]

    def image_score(self, prompt: str, category: str, vqa, objects, depth, clip) -> float:
        """The official score of one image of `category` from its model outputs."""
        tokens = self.parser.tokens(prompt)
        method = C.METHODS[category]
        if method == "blip_vqa":
            return C.blip_image_score(vqa)
        if method == "clip":
            return float(clip[0])
        query = detection_query(prompt, category, tokens)
        if method == "spatial_3d":
            d = np.asarray(depth, np.float64).reshape(-1, 7)
            labels = [query.labels[int(i)] for i in d[:, 5]] if query else []
            o1, o2 = (C.person(x) for x in C.first_last_nouns(tokens))
            return C.spatial_3d_score(C.locality(prompt, C.SPATIAL_3D), o1, o2, labels, d[:, :6], d[:, 6])
        dets = np.asarray(objects, np.float64).reshape(-1, 6)
        labels = [query.labels[int(i)] for i in dets[:, 5]] if query else []
        if method == "numeracy":
            objs, counts = C.numeracy_targets(tokens)
            return C.numeracy_score(objs, counts, labels, dets)
        o1, o2 = C.complex_objects(tokens) if category == "complex" else C.first_last_nouns(tokens)
        spatial = C.spatial_2d_score(C.locality(prompt, C.SPATIAL_2D), C.person(o1), C.person(o2), labels, dets)
        if method == "spatial_2d":
            return spatial
        return C.three_in_one(C.complex_kind(prompt), C.blip_image_score(vqa), spatial, float(clip[0]))

    def parser_differences(self, prompts: list[tuple[str, str]]) -> int | None:
        """How many distinct prompts the rule-based parser and spaCy parse differently (None without spaCy)."""
        from k3eval.metrics.phrases import RuleParser

        spacy = self.parsers[1]
        if spacy is None:
            return None
        rules = RuleParser()
        return sum(parse_outcome(p, c, rules) != parse_outcome(p, c, spacy) for p, c in set(prompts))

    def compute(self, data: ScoreData) -> MetricResult:
        from k3eval.metrics.breakdown import task_breakdown
        from k3eval.metrics.phrases import RuleParser

        rows = data.rows.to_dict("records")
        cats = [category_of(r) for r in rows]
        scores = np.array([self.image_score(str(r["prompt"]), c, data["vqa"][i], data["objects"][i],
                                            data["depth"][i], data["clip"][i]) for i, (r, c) in enumerate(zip(rows,
                                                                                                             cats))])
        value, ci, per_cat = task_breakdown(data, scores, cats)
        s: CompbenchSettings = self.settings
        used = {C.METHODS[c] for c in cats}
        ext = data.extractors
        parts = {"vqa": ("blip_vqa", "3_in_1"), "objects": ("spatial_2d", "numeracy", "3_in_1"),
                 "depth": ("spatial_3d",), "clip": ("clip", "3_in_1")}
        fps = {role: ext[role].fingerprint for role, methods in parts.items() if used & set(methods)}
        warnings = [w for role, fp in fps.items() for w in weights_warning(fp, f"T2I-CompBench {role}")]
        if not any(fp.get("synthetic_weights") for fp in fps.values()):
            warnings.append("models differ from the official evaluators (Grounding DINO for UniDet, Depth Anything "
                            "for DPT, transformers BLIP): compare with numbers computed the same way")
        diff = self.parser_differences([(str(r["prompt"]), c) for r, c in zip(rows, cats)])
        if isinstance(self.parser, RuleParser):
            warnings.append(f"prompts parsed by the {self.parser.name} parser, not spaCy's en_core_web_sm (the "
                            "official): noun phrases and objects may differ on some prompts")
        proto = {"metric": "t2i_compbench", "version": EXTRACTOR_VERSION, "official": OFFICIAL,
                 "methods": {c: C.METHODS[c] for c in dict.fromkeys(cats)}, "models": fps,
                 "settings": s.model_dump(mode="json"), "parser": self.parser.name,
                 "value": "mean over categories of the mean image score (T2I-CompBench itself reports categories)",
                 "synthetic_weights": any(fp.get("synthetic_weights") for fp in fps.values()), "n": data.n,
                 "seed": data.opts.seed}
        extra = {"categories": {c: e["value"] for c, e in per_cat.items()}, "parser": self.parser.name,
                 "parser_differences": diff}
        return MetricResult(proto, value=value, ci=ci,
                            ci_method=f"bootstrap over prompts within categories, {data.opts.bootstrap} resamples",
                            warnings=warnings, per_category=per_cat,
                            per_image={"t2i_compbench": scores,
                                       "t2i_compbench_method": [C.METHODS[c] for c in cats]}, extra=extra)
