"""GenEval (`k3eval score RUN --metrics geneval`): the object detector and the colour classifier as one cached
extractor, the official decision rules (`geneval_rules`) as the metric.

Per image the extractor returns the detections above the lowest threshold any task uses (at most `max_objects` per
class), each with the 10 colour logits of CLIP on its masked crop when a colour clause of the prompt names its class
(k x 16 float32; layout in `geneval_rules`). It is cached by (image sha256, colour classes of the prompt) and the
fingerprint of detector, CLIP and crop rules, so changing a threshold rescoring a run computes nothing again.
The metric applies `geneval_rules.evaluate` per image and reports the official summary: the mean over tasks of the
fraction of correct images (the value), per task, the fraction of correct images and of prompts with at least one
correct image, each with a bootstrap interval over prompts.

Detector: transformers' `Mask2FormerForUniversalSegmentation` (`--set geneval.detector=HUB_ID|FOLDER|synthetic`,
default facebook/mask2former-swin-small-coco-instance) run with mmdet's pipeline (`vision_models`), or the official
mmdet checkpoint where mmdet is installed (`--set geneval.detector_backend=mmdet`). The colour CLIP is open_clip
ViT-L-14 / openai by default, the same extractor object as the CLIP score's when that uses the same model, so the
network is loaded once.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from k3eval.errors import UserError
from k3eval.metrics import geneval_rules as R
from k3eval.metrics.api import ImageTextExtractor, Metric, MetricResult, Need, ScoreContext, ScoreData, weights_warning

GENEVAL_SET = "geneval"
DEFAULT_DETECTOR = "facebook/mask2former-swin-small-coco-instance"
OFFICIAL = "djghosh13/geneval @ af4902f2, evaluation/evaluate_images.py and evaluation/summary_scores.py"
EXTRACTOR_VERSION = 1


@cache
def shipped_metadata() -> dict[str, dict[str, Any]]:
    """prompt id (as the `geneval` prompt set names it) -> its metadata line, keys in the official order."""
    from k3eval.prompts.loaders import load_geneval

    out = {}
    for p in load_geneval():
        meta: dict[str, Any] = {"tag": p.category, "include": json.loads(p.tags["include"])}
        if "exclude" in p.tags:
            meta["exclude"] = json.loads(p.tags["exclude"])
        meta["prompt"] = p.text
        out[p.id] = meta
    return out


def wrong_set_error(metric: str, row: dict) -> UserError:
    """The error for a run of another prompt set: which metric needs which set."""
    return UserError(
        f"--metrics {metric}: prompt '{row.get('prompt_id')}' of prompt set '{row.get('prompt_set', '?')}' is not a "
        f"{'GenEval' if metric == 'geneval' else 'T2I-CompBench'} prompt. geneval scores runs of the 'geneval' prompt "
        "set, t2i_compbench runs of 't2i-compbench' (clip_score, fid, kid, is and cmmd take any set); images made "
        "elsewhere in GenEval's folder layout come in with `k3eval import DIR --layout geneval`")


def metadata_of(row: dict) -> dict[str, Any]:
    """The GenEval metadata of a manifest row (by prompt id); a UserError for prompts of other sets."""
    meta = shipped_metadata().get(str(row.get("prompt_id")))
    if meta is None or meta["prompt"] != row.get("prompt", meta["prompt"]):
        raise wrong_set_error("geneval", row)
    return meta


class GenevalSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)  # frozen: hashable, so `ctx.shared` can key on it

    detector: str = Field(DEFAULT_DETECTOR, description="transformers Mask2Former COCO-instance checkpoint: hub id, "
                          "local folder, or 'synthetic'")
    detector_backend: Literal["transformers", "mmdet"] = "transformers"
    detector_scale: tuple[int, int] = Field((1333, 800), description="mmdet keep-ratio resize target (long, short)")
    mmdet_config: str | None = None
    mmdet_checkpoint: str | None = None
    clip_model: str = "ViT-L-14"
    clip_pretrained: str = Field("openai", description="open_clip tag or checkpoint file, or 'synthetic'")
    threshold: float = Field(0.3, ge=0, le=1)
    counting_threshold: float = Field(0.9, ge=0, le=1)
    max_objects: int = Field(16, ge=1)
    max_overlap: float = Field(1.0, gt=0, le=1)
    position_threshold: float = Field(0.1, ge=0)
    batch_size: int | None = Field(None, ge=1, description="detector batch (default: --batch-size)")

    def rules(self) -> R.Rules:
        return R.Rules(self.threshold, self.counting_threshold, self.max_objects, self.max_overlap,
                       self.position_threshold)


def colour_text(row: dict) -> str:
    """What the extractor needs to know of a row's prompt: the object names that need a colour (JSON list)."""
    return json.dumps(R.color_classes(metadata_of(row)))


def make_detector(s: GenevalSettings, device: str):
    from k3eval.metrics import vision_models as V

    if s.detector_backend == "mmdet":
        return V.MmdetDetector(s.mmdet_config, s.mmdet_checkpoint, device)
    return V.Mask2FormerDetector(V.resolve_model("mask2former", s.detector, "geneval.detector"), "geneval.detector",
                                 device, scale=s.detector_scale)


class GenevalDetections(ImageTextExtractor):
    """Detections (GenEval labels) with colour logits for the classes the prompt's colour clauses name."""

    def __init__(self, detector, clip, floor: float, max_objects: int, batch_size: int):
        self.detector, self.clip = detector, clip
        self.floor, self.max_objects, self.batch_size = floor, max_objects, batch_size
        self._mapping: dict[int, int] | None = None
        self._weights: dict[str, np.ndarray] = {}

    @property
    def fingerprint(self) -> dict[str, Any]:
        clip = {k: v for k, v in self.clip.fingerprint.items() if k != "features"}
        return {"extractor": "geneval detections", "version": EXTRACTOR_VERSION, **self.detector.fingerprint,
                "labels": "detector class names mapped to GenEval's 80 object names (exact, then aliases)",
                "floor": self.floor, "max_objects_per_class": self.max_objects,
                "colour": {"clip": clip, "colours": list(R.COLORS), "templates": list(R.COLOR_TEMPLATES),
                           "crop": "object composited through its mask over #999, cropped to its box",
                           "classifier": "clip_benchmark zero-shot (normalised template mean), 100 x cosine"},
                "synthetic_weights": bool(self.detector.fingerprint.get("synthetic_weights")
                                          or clip.get("synthetic_weights"))}

    def mapping(self) -> dict[int, int]:
        if self._mapping is None:
            mapping, missing = R.label_mapping(self.detector.id2label())
            if missing:
                raise UserError(f"--set geneval.detector: the detector's classes do not cover {len(missing)} of "
                                f"GenEval's 80 objects: {', '.join(missing)}; use a COCO instance-segmentation "
                                "checkpoint (e.g. facebook/mask2former-swin-small-coco-instance)")
            self._mapping = mapping
        return self._mapping

    def prepare(self, image: np.ndarray, text: str):
        classes = json.loads(text)
        return self.detector.prepare(image), (image if classes else None), classes

    def _class_weights(self, name: str) -> np.ndarray:
        if name not in self._weights:
            texts = [t.format(c=c, obj=name) for c in R.COLORS for t in R.COLOR_TEMPLATES]
            emb = self.clip.encoder().encode_texts(texts).reshape(len(R.COLORS), len(R.COLOR_TEMPLATES), -1)
            self._weights[name] = R.zero_shot_weights(emb)
        return self._weights[name]

    def run(self, batch: list) -> list[np.ndarray]:
        mapping = self.mapping()
        found = self.detector.detect([b[0] for b in batch], self.floor)
        names = R.geneval_objects()
        outs, crops, where = [], [], []
        for k, ((_, image, classes), det) in enumerate(zip(batch, found)):
            rows = []
            by_class: dict[int, list[int]] = {}
            for i, lab in enumerate(det.labels):
                if int(lab) in mapping:
                    by_class.setdefault(mapping[int(lab)], []).append(i)
            for g, idx in by_class.items():
                idx = np.asarray(idx)[R.confidence_order(det.scores[idx])][:self.max_objects]
                for i in idx:
                    row = np.full(R.N_COLS, np.nan, np.float32)
                    row[R.BOX], row[R.SCORE], row[R.LABEL] = det.boxes[i], det.scores[i], g
                    rows.append(row)
                    if names[g] in classes:
                        mask = det.masks[i] if det.masks is not None else None
                        crops.append(R.masked_crop(image, mask, det.boxes[i]))
                        where.append((k, len(rows) - 1, names[g]))
            outs.append(np.stack(rows) if rows else np.zeros((0, R.N_COLS), np.float32))
        if crops:
            emb = self.clip.encoder().encode_images(crops)
            for (k, r, name), e in zip(where, emb):
                outs[k][r, R.COLOR0:] = R.zero_shot_logits(e[None], self._class_weights(name))[0]
        return outs


class Geneval(Metric):
    name = "geneval"
    display_name = "GenEval"
    higher_is_better = True
    unit = "fraction correct"
    Settings = GenevalSettings

    def needs(self, ctx: ScoreContext) -> dict[str, Need]:
        from k3eval.metrics.clip_metrics import clip_image_need

        s: GenevalSettings = self.settings
        o = ctx.opts
        clip = clip_image_need(ctx, "open_clip", s.clip_model, s.clip_pretrained, "GenEval colour CLIP").extractor
        det = ctx.shared(make_detector, s, o.device)
        rules, default = s.rules(), R.Rules()
        # stored: everything the default rules could use, or more when the rules ask for more, so that stricter
        # settings rescore from the cache
        floor, cap = min(rules.floor, default.floor), max(rules.max_objects, default.max_objects)
        ext = ctx.shared(GenevalDetections, det, clip, floor, cap, s.batch_size or o.batch_size)
        return {"detections": Need(ext, text=colour_text, desc="GenEval detections")}

    def compute(self, data: ScoreData) -> MetricResult:
        from k3eval.metrics.breakdown import prompt_any, task_breakdown
        from k3eval.stats import bootstrap_ci

        s: GenevalSettings = self.settings
        rules = s.rules()
        rows = data.rows.to_dict("records")
        metas = [metadata_of(r) for r in rows]
        dets = [np.asarray(d, np.float64).reshape(-1, R.N_COLS) for d in data["detections"]]
        verdicts = [R.evaluate(m, d, rules) for m, d in zip(metas, dets)]
        correct = np.array([float(c) for c, _ in verdicts])
        tasks = [m["tag"] for m in metas]
        value, ci, per_task = task_breakdown(data, correct, tasks)
        any_ok, _ = prompt_any(correct, data.groups)
        prompts_ci = bootstrap_ci(any_ok, n_resamples=data.opts.bootstrap, seed=data.opts.seed) \
            if data.opts.bootstrap > 0 and len(any_ok) >= 2 else None
        ext = data.extractors["detections"]
        fp = ext.fingerprint
        warnings = weights_warning(ext.detector.fingerprint, "GenEval detections") \
            + weights_warning(ext.clip.fingerprint, "GenEval colours")
        if s.detector_backend == "transformers" and not fp.get("synthetic_weights"):
            warnings.append("detector: transformers Mask2Former weights, not the mmdet checkpoint of the official "
                            "GenEval; compare with numbers computed the same way, not with published GenEval scores")
        if rules != R.Rules():
            warnings.append(f"non-default GenEval rules: {rules.as_dict()}")
        missing = sorted(set(R.TASKS) - set(tasks))
        if missing:
            warnings.append(f"tasks without images: {', '.join(missing)}; the overall score averages the others")
        proto = {**fp, "rules": rules.as_dict(), "official": OFFICIAL,
                 "score": "mean over tasks of the fraction of correct images", "n": data.n, "seed": data.opts.seed}
        extra = {"tasks": {t: e["value"] for t, e in per_task.items()},
                 "correct_images": {"value": float(correct.mean()), "ci": _ci(data.bootstrap_mean(correct))},
                 "correct_prompts": {"value": float(any_ok.mean()), "ci": _ci(prompts_ci)},
                 "n_prompts": int(len(any_ok))}
        per_image = {"geneval": correct, "geneval_reason": [r for _, r in verdicts],
                     "geneval_details": [R.detected_boxes(d, m, rules) for d, m in zip(dets, metas)]}
        return MetricResult(proto, value=value, ci=ci,
                            ci_method=f"bootstrap over prompts within tasks, {data.opts.bootstrap} resamples",
                            warnings=warnings, per_category=per_task, per_image=per_image, extra=extra)


def _ci(ci) -> list[float] | None:
    return None if ci is None or not np.all(np.isfinite(ci)) else [float(ci[0]), float(ci[1])]
