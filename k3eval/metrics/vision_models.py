"""The models of the compositional benchmarks, loaded through transformers: resolution of a model setting (hub id,
local folder or `synthetic`), its fingerprint, loading with offline errors that say what to pass, and batched
inference that returns plain arrays. The benchmark rules that read those arrays are in `geneval_rules` and
`compbench_rules`; the extractors that drive these models are in `geneval` and `t2i_compbench`.

- `Mask2FormerDetector`: transformers' `Mask2FormerForUniversalSegmentation` (COCO instance) with the input pipeline
  and instance post-processing of mmdet's Mask2Former, which GenEval runs: resize to fit 1333 x 800 keeping the aspect
  ratio, ImageNet normalisation, padding to a multiple of 32; top 100 (query, class) pairs by class probability,
  masks upsampled to the padded input, cropped, upsampled to the original size, binarised at logit 0; score = class
  probability x mean mask probability inside the mask; box = the mask's extent (mmdet `mask2bbox`).
- `MmdetDetector`: the official detector through mmdet, only where mmdet is installed (`detector_backend=mmdet`).
- `GroundingDetector`: Grounding DINO asked for the prompt's object phrases (T2I-CompBench spatial and numeracy).
- `DepthModel`: Depth Anything (relative inverse depth; T2I-CompBench 3D spatial).
- `BlipVqa`: BLIP VQA, P("yes") to a question as `vqa_prob` of T2I-CompBench's BLIP.

`synthetic` builds each architecture from a small config with seeded weights, saves it with `save_pretrained` (plus
its processor and a WordPiece tokenizer written from a generated vocabulary) under `$K3EVAL_CACHE/weights/`, and loads
it back with `from_pretrained`: for tests and the demo only (numbers computed with them say so).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from k3eval.errors import UserError
from k3eval.metrics.weights import SYNTHETIC, weights_dir
from k3eval.utils import build_once, sha256_file

SYNTHETIC_VISION_VERSION = "v2"  # bump when a builder below changes, so cached folders are rebuilt
MMDET_SIZE = (1333, 800)
MASK_CHUNK = 32  # masks post-processed at a time
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
#: the 80 COCO instance classes as detectron2 and transformers name them (GenEval renames three)
COCO_NAMES = tuple(
    "person|bicycle|car|motorcycle|airplane|bus|train|truck|boat|traffic light|fire hydrant|stop sign|parking meter|"
    "bench|bird|cat|dog|horse|sheep|cow|elephant|bear|zebra|giraffe|backpack|umbrella|handbag|tie|suitcase|frisbee|"
    "skis|snowboard|sports ball|kite|baseball bat|baseball glove|skateboard|surfboard|tennis racket|bottle|wine glass|"
    "cup|fork|knife|spoon|bowl|banana|apple|sandwich|orange|broccoli|carrot|hot dog|pizza|donut|cake|chair|couch|"
    "potted plant|bed|dining table|toilet|tv|laptop|mouse|remote|keyboard|cell phone|microwave|oven|toaster|sink|"
    "refrigerator|book|clock|vase|scissors|teddy bear|hair drier|toothbrush".split("|"))


@dataclass
class ModelRef:
    """A resolved model setting: what to load (hub id or folder) and the fingerprint of the weights."""

    kind: str
    source: str
    fingerprint: dict[str, Any] = field(default_factory=dict)

    @property
    def synthetic(self) -> bool:
        return bool(self.fingerprint.get("synthetic_weights"))


def resolve_model(kind: str, spec: str, setting: str) -> ModelRef:
    """`spec` -> ModelRef without loading anything: 'synthetic' builds (once) the seeded test model of `kind`; a local
    folder is fingerprinted by the sha256 of its weights file; anything else is taken as a hub id."""
    if spec == SYNTHETIC:
        folder = build_synthetic(kind)
        return ModelRef(kind, str(folder), {"model": "synthetic", "synthetic_weights": True, "standard_weights": False,
                                            "sha256": _weights_sha(folder), **_versions()})
    p = Path(spec).expanduser()
    if p.is_dir():
        return ModelRef(kind, str(p), {"model": p.name, "synthetic_weights": False, "sha256": _weights_sha(p),
                                       **_versions()})
    if p.suffix and p.exists():
        raise UserError(f"--set {setting}: {spec} is a file; give a hub id or a folder saved with save_pretrained")
    return ModelRef(kind, spec, {"model": spec, "synthetic_weights": False, "sha256": _hub_sha(spec), **_versions()})


def _hub_sha(repo: str) -> str | None:
    """sha256 of a hub model's weights file when it is in the local Hugging Face cache (so a new revision gets a new
    fingerprint), else None; never downloads."""
    from huggingface_hub import try_to_load_from_cache

    for name in ("model.safetensors", "pytorch_model.bin"):
        try:
            path = try_to_load_from_cache(repo, name)
        except ValueError:  # not a valid repo id: loading will say so
            return None
        if isinstance(path, str):
            return sha256_file(path)
    return None


def _versions() -> dict[str, str]:
    return {"transformers": metadata.version("transformers")}


def _weights_sha(folder: Path) -> str | None:
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    return sha256_file(files[0]) if files else None


@contextlib.contextmanager
def quiet_transformers():
    """transformers' progress bars ("Loading weights", "Writing model shards") off while it loads or saves."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def unusable(setting: str, source: str, what: str, err: Exception) -> UserError:
    """The error for a model that cannot be loaded here: it names the hub id or folder and what to pass instead."""
    first = str(err).splitlines()[0] if str(err) else ""
    return UserError(f"--set {setting}: cannot load the {what} of {source!r} ({type(err).__name__}: {first}). "
                     f"Offline, download it once on a connected machine (huggingface-cli download {source}) or save "
                     f"it with save_pretrained and pass --set {setting}=FOLDER; 'synthetic' gives seeded random test "
                     "weights")


def load_pretrained(cls, ref: ModelRef, setting: str, device: str = "cpu"):
    """`cls.from_pretrained(source)` in eval mode on `device`; a failure (offline, missing files) is a UserError that
    names the hub id and how to give a local folder."""
    try:
        with quiet_transformers():
            model = cls.from_pretrained(ref.source)
    except Exception as e:  # hub, network, file and config errors all mean "these weights are not usable here"
        raise unusable(setting, ref.source, f"{cls.__name__} weights", e) from None
    return model.to(device).eval()


def load_processor(cls, ref: ModelRef, setting: str):
    try:
        return cls.from_pretrained(ref.source)
    except Exception as e:  # as load_pretrained
        raise unusable(setting, ref.source, "processor", e) from None


# ---- GenEval's detector: Mask2Former with mmdet's pipeline --------------------------------------------------------
def mmdet_resize_shape(width: int, height: int, scale: tuple[int, int] = MMDET_SIZE) -> tuple[int, int]:
    """(width, height) after mmcv's keep-ratio rescale to fit `scale` (by default long side <= 1333, short side <=
    800), rounding half up."""
    factor = min(max(scale) / max(width, height), min(scale) / min(width, height))
    return int(width * factor + 0.5), int(height * factor + 0.5)


def mask_boxes(masks):
    """mmdet's `mask2bbox`: per binary mask (n x H x W) the box x1, y1 (first row/column) and x2, y2 (last + 1);
    zeros for an empty mask."""
    import torch

    n = masks.shape[0]
    boxes = torch.zeros((n, 4), dtype=torch.float32, device=masks.device)
    if n == 0:
        return boxes
    cols, rows = masks.any(1), masks.any(2)
    w, h = masks.shape[2], masks.shape[1]
    xs = torch.arange(w, device=masks.device)
    ys = torch.arange(h, device=masks.device)
    big = torch.iinfo(torch.int64).max
    x1 = torch.where(cols, xs, big).amin(1)
    x2 = torch.where(cols, xs, -1).amax(1) + 1
    y1 = torch.where(rows, ys, big).amin(1)
    y2 = torch.where(rows, ys, -1).amax(1) + 1
    found = cols.any(1)
    boxes[found] = torch.stack([x1, y1, x2, y2], 1)[found].float()
    return boxes


@dataclass
class Detections:
    """Detections of one image in the detector's own labels: boxes (k x 4, original pixels), scores (k), labels (k,
    detector class indices) and binary masks (k x H x W, numpy bool) or None."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | None


class Mask2FormerDetector:
    """transformers Mask2Former (COCO instance) run the way mmdet runs it (see the module docstring)."""

    def __init__(self, ref: ModelRef, setting: str, device: str = "cpu", scale: tuple[int, int] = MMDET_SIZE,
                 max_per_image: int = 100):
        self.ref, self.setting, self.device, self.max_per_image = ref, setting, device, max_per_image
        self.scale = (max(scale), min(scale))
        self._model = None

    @property
    def fingerprint(self) -> dict[str, Any]:
        return {**self.ref.fingerprint, "detector": "transformers Mask2FormerForUniversalSegmentation",
                "pipeline": "mmdet Mask2Former test pipeline: keep-ratio resize to fit the scale (bilinear), ImageNet "
                "normalisation, pad to /32; instance post-processing: top-100, mask logit > 0, class prob x mask "
                "score, mask2bbox", "scale": list(self.scale), "max_per_image": self.max_per_image}

    def model(self):
        if self._model is None:
            from transformers import Mask2FormerForUniversalSegmentation

            self._model = load_pretrained(Mask2FormerForUniversalSegmentation, self.ref, self.setting, self.device)
        return self._model

    def id2label(self) -> dict[int, str]:
        """The class names of the checkpoint (read from its config, without loading the weights)."""
        from transformers import AutoConfig

        try:
            cfg = AutoConfig.from_pretrained(self.ref.source)
        except Exception as e:  # as load_pretrained
            raise unusable(self.setting, self.ref.source, "config", e) from None
        return {int(k): v for k, v in cfg.id2label.items()}

    def prepare(self, image: np.ndarray):
        """CPU: resized (mmdet rule), normalised C x H x W float tensor, and the original (height, width)."""
        import torch

        h, w = image.shape[:2]
        nw, nh = mmdet_resize_shape(w, h, self.scale)
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
        x = torch.nn.functional.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)[0]
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        return (x - mean) / std, (h, w)

    def detect(self, prepared: list, floor: float) -> list[Detections]:
        """Detections with score > `floor` for each prepared image. Images are batched by padded size, so every image
        sees exactly the padding it would see alone (Mask2Former has no padding mask)."""
        import torch

        out: list[Detections | None] = [None] * len(prepared)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (x, _) in enumerate(prepared):
            groups.setdefault((-(-x.shape[1] // 32) * 32, -(-x.shape[2] // 32) * 32), []).append(i)
        model = self.model()
        for padded, idx in groups.items():
            batch = torch.zeros((len(idx), 3, *padded))
            for j, i in enumerate(idx):
                x = prepared[i][0]
                batch[j, :, :x.shape[1], :x.shape[2]] = x
            with torch.inference_mode():
                res = model(pixel_values=batch.to(self.device))
            # images of the same resized and original size are post-processed together
            same: dict[tuple, list[int]] = {}
            for j, i in enumerate(idx):
                same.setdefault((tuple(prepared[i][0].shape[1:]), tuple(prepared[i][1])), []).append(j)
            for (resized, original), js in same.items():
                found = self._postprocess(res.class_queries_logits[js], res.masks_queries_logits[js], padded,
                                          resized, original, floor)
                for j, d in zip(js, found):
                    out[idx[j]] = d
        return out

    def _postprocess(self, cls_logits, mask_logits, padded, resized, original, floor: float) -> list[Detections]:
        """mmdet's instance post-processing of a batch of images of one size (class logits B x Q x C+1, mask logits
        B x Q x h x w), keeping detections scoring above `floor`."""
        import torch
        import torch.nn.functional as F

        probs = cls_logits.float().softmax(-1)[..., :-1]
        n_img, _, n_cls = probs.shape
        scores, top = probs.flatten(1).topk(min(self.max_per_image, probs[0].numel()), dim=1)
        # a detection's score is its class probability times a mask score <= 1: below the floor nothing can pass
        image, rank = torch.nonzero(scores > floor, as_tuple=True)
        scores, top = scores[image, rank], top[image, rank]
        labels, queries = top % n_cls, top // n_cls
        h, w = original
        mask_score, binary = [], []
        # 32 masks at a time: each step's tensors stay in the CPU caches (about 3x faster than the whole batch at
        # once), and every mask gets exactly the arithmetic it would get alone
        for c in range(0, len(top), MASK_CHUNK):
            m = mask_logits[image[c:c + MASK_CHUNK], queries[c:c + MASK_CHUNK]].float()[None]
            m = F.interpolate(m, size=padded, mode="bilinear", align_corners=False)[:, :, :resized[0], :resized[1]]
            if tuple(resized) != (h, w):  # bilinear to the same size is the identity: skipped
                m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
            m = m[0]
            # mmdet's arithmetic, in float as mmdet does it (sums over bool tensors are several times slower on CPU)
            binary_f = (m > 0).float()
            mask_score.append((m.sigmoid() * binary_f).flatten(1).sum(1) / (binary_f.flatten(1).sum(1) + 1e-6))
            binary.append(binary_f.bool())
        det = scores * torch.cat(mask_score) if binary else scores
        binary = torch.cat(binary) if binary else torch.zeros((0, h, w), dtype=torch.bool, device=scores.device)
        ok = det > floor
        image, det, labels, binary = image[ok], det[ok], labels[ok], binary[ok]
        boxes, det = mask_boxes(binary).cpu().numpy(), det.cpu().numpy()
        labels, binary, image = labels.cpu().numpy().astype(np.int64), binary.cpu().numpy(), image.cpu().numpy()
        return [Detections(boxes[image == b], det[image == b], labels[image == b], binary[image == b])
                for b in range(n_img)]


class MmdetDetector:
    """The official GenEval detector through mmdet (`init_detector` / `inference_detector`): only where mmdet is
    installed. `config` and `checkpoint` are the mmdet files GenEval's `download_models.sh` fetches."""

    def __init__(self, config: str | None, checkpoint: str | None, device: str = "cpu"):
        try:
            import mmdet  # noqa: F401
        except ImportError:
            raise UserError("--set geneval.detector_backend=mmdet: mmdet is not installed (GenEval's own setup: "
                            "mmdet 2.x with mmcv-full); the default backend 'transformers' needs nothing more") \
                from None
        if not config or not checkpoint or not Path(checkpoint).is_file():
            raise UserError("--set geneval.detector_backend=mmdet needs --set geneval.mmdet_config=CONFIG.py and "
                            "--set geneval.mmdet_checkpoint=FILE.pth (mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco), "
                            f"got {config!r} and {checkpoint!r}")
        self.config, self.checkpoint, self.device = config, checkpoint, device
        self._model = None
        self._fp = {"detector": "mmdet", "mmdet": metadata.version("mmdet"), "config": Path(config).name,
                    "weights": Path(checkpoint).name, "sha256": sha256_file(checkpoint), "synthetic_weights": False}

    @property
    def fingerprint(self) -> dict[str, Any]:
        return self._fp

    def model(self):
        if self._model is None:
            from mmdet.apis import init_detector

            self._model = init_detector(self.config, self.checkpoint, device=self.device)
        return self._model

    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.model().CLASSES))

    @staticmethod
    def prepare(image: np.ndarray):
        return np.ascontiguousarray(image[:, :, ::-1])  # mmdet reads images as BGR

    def detect(self, prepared: list, floor: float) -> list[Detections]:
        from mmdet.apis import inference_detector

        out = []
        for img in prepared:
            result = inference_detector(self.model(), img)
            bbox, segm = (result[0], result[1]) if isinstance(result, tuple) else (result, None)
            rows, labels, masks = [], [], []
            for c, arr in enumerate(bbox):
                for k, r in enumerate(np.asarray(arr).reshape(-1, 5)):
                    if r[4] > floor:
                        rows.append(r)
                        labels.append(c)
                        masks.append(None if segm is None else np.asarray(segm[c][k], bool))
            r = np.asarray(rows, np.float32).reshape(-1, 5)
            m = np.stack(masks) if masks and masks[0] is not None else None
            out.append(Detections(r[:, :4], r[:, 4], np.asarray(labels, np.int64), m))
        return out


# ---- T2I-CompBench's models -----------------------------------------------------------------------------------------
def phrase_input(tokenizer, phrases: list[str]) -> tuple[list[int], list[tuple[int, int]]]:
    """Grounding DINO's text "phrase1 . phrase2 ." as token ids, and the token span of each phrase."""
    ids = [tokenizer.cls_token_id]
    spans = []
    dot = tokenizer.convert_tokens_to_ids(".")
    for p in phrases:
        toks = tokenizer(p.lower(), add_special_tokens=False)["input_ids"]
        spans.append((len(ids), len(ids) + len(toks)))
        ids += toks + [dot]
    return ids + [tokenizer.sep_token_id], spans


class GroundingDetector:
    """Grounding DINO asked for a list of phrases per image. A box's label is the phrase whose tokens it matches
    best (the largest token probability over the phrase's tokens), its score that probability; boxes scoring at or
    below `box_threshold` are dropped. Boxes are in original pixels, sorted by decreasing score."""

    def __init__(self, ref: ModelRef, setting: str, device: str = "cpu", box_threshold: float = 0.35):
        self.ref, self.setting, self.device, self.box_threshold = ref, setting, device, box_threshold
        self._model = self._processor = None

    @property
    def fingerprint(self) -> dict[str, Any]:
        return {**self.ref.fingerprint, "detector": "transformers GroundingDinoForObjectDetection",
                "box_threshold": self.box_threshold, "labels": "phrase with the highest token probability",
                "preprocess": "the checkpoint's GroundingDinoImageProcessor"}

    def processor(self):
        if self._processor is None:
            from transformers import AutoProcessor

            self._processor = load_processor(AutoProcessor, self.ref, self.setting)
        return self._processor

    def model(self):
        if self._model is None:
            from transformers import GroundingDinoForObjectDetection

            self._model = load_pretrained(GroundingDinoForObjectDetection, self.ref, self.setting, self.device)
        return self._model

    def prepare(self, image: np.ndarray, phrases: list[str]):
        from PIL import Image

        proc = self.processor()
        px = proc.image_processor(images=Image.fromarray(image), return_tensors="pt")["pixel_values"][0]
        ids, spans = phrase_input(proc.tokenizer, phrases)
        return px, ids, spans, image.shape[:2]

    def detect(self, prepared: list) -> list[np.ndarray]:
        """k x 6 arrays: x1, y1, x2, y2 (original pixels), score, phrase index."""
        import torch

        if not prepared:
            return []
        h = max(p[0].shape[1] for p in prepared)
        w = max(p[0].shape[2] for p in prepared)
        n = max(len(p[1]) for p in prepared)
        px = torch.zeros((len(prepared), 3, h, w))
        pmask = torch.zeros((len(prepared), h, w), dtype=torch.long)
        ids = torch.zeros((len(prepared), n), dtype=torch.long)
        att = torch.zeros((len(prepared), n), dtype=torch.long)
        for i, (x, tok, _, _) in enumerate(prepared):
            px[i, :, :x.shape[1], :x.shape[2]] = x
            pmask[i, :x.shape[1], :x.shape[2]] = 1
            ids[i, :len(tok)] = torch.tensor(tok)
            att[i, :len(tok)] = 1
        with torch.inference_mode():
            out = self.model()(pixel_values=px.to(self.device), pixel_mask=pmask.to(self.device),
                               input_ids=ids.to(self.device), attention_mask=att.to(self.device),
                               token_type_ids=torch.zeros_like(ids).to(self.device))
        probs = out.logits.float().sigmoid().cpu().numpy()
        boxes = out.pred_boxes.float().cpu().numpy()
        res = []
        for i, (_, _, spans, (ih, iw)) in enumerate(prepared):
            per_phrase = np.stack([probs[i, :, a:b].max(1) for a, b in spans], 1)  # queries x phrases
            label = per_phrase.argmax(1)
            score = per_phrase.max(1)
            keep = np.flatnonzero(score > self.box_threshold)
            keep = keep[np.argsort(-score[keep], kind="stable")]
            cx, cy, bw, bh = boxes[i, keep].T
            xyxy = np.stack([(cx - bw / 2) * iw, (cy - bh / 2) * ih, (cx + bw / 2) * iw, (cy + bh / 2) * ih], 1)
            res.append(np.concatenate([xyxy, score[keep, None], label[keep, None]], 1).astype(np.float32))
        return res


class DepthModel:
    """Depth Anything (or any transformers depth-estimation model): relative inverse depth, larger = nearer, at the
    resolution of its input (the checkpoint's image processor)."""

    def __init__(self, ref: ModelRef, setting: str, device: str = "cpu"):
        self.ref, self.setting, self.device = ref, setting, device
        self._model = self._processor = None

    @property
    def fingerprint(self) -> dict[str, Any]:
        return {**self.ref.fingerprint, "depth": "transformers AutoModelForDepthEstimation",
                "preprocess": "the checkpoint's image processor"}

    def processor(self):
        if self._processor is None:
            from transformers import AutoImageProcessor

            self._processor = load_processor(AutoImageProcessor, self.ref, self.setting)
        return self._processor

    def model(self):
        if self._model is None:
            from transformers import AutoModelForDepthEstimation

            self._model = load_pretrained(AutoModelForDepthEstimation, self.ref, self.setting, self.device)
        return self._model

    def prepare(self, image: np.ndarray):
        from PIL import Image

        return self.processor()(images=Image.fromarray(image), return_tensors="pt")["pixel_values"][0]

    def predict(self, prepared: list) -> list[np.ndarray]:
        """One depth map per prepared input (inputs of the same size are batched together)."""
        import torch

        out: list[np.ndarray | None] = [None] * len(prepared)
        groups: dict[tuple, list[int]] = {}
        for i, x in enumerate(prepared):
            groups.setdefault(tuple(x.shape), []).append(i)
        for idx in groups.values():
            with torch.inference_mode():
                pred = self.model()(pixel_values=torch.stack([prepared[i] for i in idx]).to(self.device))
            for j, i in enumerate(idx):
                out[i] = pred.predicted_depth[j].float().cpu().numpy()
        return out


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class BlipVqa:
    """BLIP VQA (`BlipForQuestionAnswering`) scored as T2I-CompBench's `vqa_prob`: the image resized to
    `image_size` x `image_size` (bicubic, PIL) and normalised with CLIP's mean and std (`transform_test` of its BLIP
    data code), the question encoded with BLIP's [ENC] token first (`blip_vqa.py`; [CLS] when the tokenizer has no
    [ENC]), the decoder's first step from its start token, P(yes) = p(yes) / (p(yes) + p(no)) of the softmax."""

    def __init__(self, ref: ModelRef, setting: str, device: str = "cpu", image_size: int = 480):
        self.ref, self.setting, self.device, self.image_size = ref, setting, device, image_size
        self._model = self._tokenizer = None

    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = load_processor(AutoTokenizer, self.ref, self.setting)
        return self._tokenizer

    def start_token(self) -> str:
        tok = self.tokenizer()
        enc = tok.convert_tokens_to_ids("[ENC]")
        return "[ENC]" if enc is not None and enc != tok.unk_token_id else "[CLS]"

    @property
    def fingerprint(self) -> dict[str, Any]:
        return {**self.ref.fingerprint, "vqa": "transformers BlipForQuestionAnswering", "image_size": self.image_size,
                "resize": "PIL bicubic to a square, CLIP mean/std",
                "question_start": "[ENC] (BLIP's), [CLS] when the tokenizer has no [ENC]",
                "answer": "p(yes) / (p(yes) + p(no)) at the first decoder step", "max_question_tokens": 35}

    def model(self):
        if self._model is None:
            from transformers import BlipForQuestionAnswering

            self._model = load_pretrained(BlipForQuestionAnswering, self.ref, self.setting, self.device)
        return self._model

    def prepare(self, image: np.ndarray):
        import torch
        from PIL import Image

        im = Image.fromarray(image).resize((self.image_size, self.image_size), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(im, np.float32) / 255.0).permute(2, 0, 1)
        return (x - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)

    def yes_probability(self, images: list, questions: list[list[str]]) -> list[np.ndarray]:
        """P(yes) of each question of each image (one array per image; an image without questions gets none)."""
        import torch

        out = [np.zeros(0, np.float32) for _ in images]
        pairs = [(i, q) for i, qs in enumerate(questions) for q in qs]
        if not pairs:
            return out
        tok, model = self.tokenizer(), self.model()
        cfg = model.config.text_config
        yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
        start = tok.convert_tokens_to_ids(self.start_token())
        need = sorted({i for i, _ in pairs})
        row = {i: k for k, i in enumerate(need)}
        ids = tok([q for _, q in pairs], truncation=True, max_length=35)["input_ids"]
        # Questions of one length at a time: transformers' BLIP text decoder ignores `encoder_attention_mask` (tested
        # with 5.24), so padded positions would leak into its cross-attention; BLIP's own code masks them.
        by_length: dict[int, list[int]] = {}
        for k, seq in enumerate(ids):
            by_length.setdefault(len(seq), []).append(k)
        p = np.zeros(len(pairs), np.float32)
        with torch.inference_mode():
            emb = model.vision_model(pixel_values=torch.stack([images[i] for i in need]).to(self.device),
                                     interpolate_pos_encoding=True)[0]
            for group in by_length.values():
                x = torch.tensor([ids[k] for k in group], device=self.device)
                x[:, 0] = start
                img = emb[[row[pairs[k][0]] for k in group]]
                q = model.text_encoder(input_ids=x, attention_mask=torch.ones_like(x), encoder_hidden_states=img,
                                       encoder_attention_mask=torch.ones(img.shape[:2], dtype=torch.long,
                                                                         device=self.device), return_dict=False)[0]
                bos = torch.full((len(group), 1), cfg.bos_token_id, dtype=torch.long, device=self.device)
                logits = model.text_decoder(input_ids=bos, encoder_hidden_states=q).logits[:, 0]
                prob = logits.float().softmax(-1)
                p[group] = (prob[:, yes] / (prob[:, yes] + prob[:, no])).cpu().numpy()
        for k, (i, _) in enumerate(pairs):
            out[i] = np.append(out[i], np.float32(p[k]))
        return out


# ---- synthetic (seeded) models --------------------------------------------------------------------------------------
KINDS = ("mask2former", "grounding_dino", "depth", "blip_vqa")


def _vocab() -> list[str]:
    """A WordPiece vocabulary laid out like bert-base-uncased where models hard-code ids ([PAD] 0, [UNK] 100, [CLS] 101,
    [SEP] 102, [MASK] 103, '.' 1012, '?' 1029), with every letter and digit alone and as a continuation, so any
    lower-case prompt tokenizes."""
    vocab = [f"[unused{i}]" for i in range(1030)]
    vocab[0], vocab[100], vocab[101], vocab[102], vocab[103], vocab[1012], vocab[1029] = \
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "?"
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    return vocab + ["yes", "no", ",", "-", "'"] + list(chars) + [f"##{c}" for c in chars]


def _write_tokenizer(folder: Path, blip: bool = False):
    from transformers import BertTokenizer

    (folder / "vocab.txt").write_text("\n".join(_vocab()) + "\n", encoding="utf-8")
    tok = BertTokenizer(str(folder / "vocab.txt"))
    if blip:  # BLIP's init_tokenizer: [DEC] as the decoder's start token, [ENC] for the question encoder
        tok.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    return tok


def _tiny_swin(out: list[str] | None = None, out_indices: list[int] | None = None):
    from transformers import SwinConfig

    kw = {"out_features": out} if out else {"out_indices": out_indices}
    return SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                      window_size=4, **kw)


#: classes the synthetic Mask2Former favours (tests pick GenEval prompts about them)
FAVOURED = ("person", "bench", "cup", "cat")


def _build_mask2former(folder: Path) -> None:
    """80 COCO classes named as detectron2 names them; the class head is rigged so that seeded random weights still give
    confident detections of a few classes (`FAVOURED`), which ones depending on the image."""
    import torch
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor

    cfg = Mask2FormerConfig(backbone_config=_tiny_swin(out=["stage1", "stage2", "stage3", "stage4"]),
                            num_labels=80, id2label=dict(enumerate(COCO_NAMES)), num_queries=24, hidden_dim=32,
                            mask_feature_size=32, feature_size=32, encoder_layers=1, decoder_layers=2,
                            encoder_feedforward_dim=64, dim_feedforward=64, num_attention_heads=2,
                            use_pretrained_backbone=False)
    model = Mask2FormerForUniversalSegmentation(cfg)
    with torch.no_grad():
        head = model.class_predictor
        head.weight.mul_(20.0)
        head.bias.fill_(-2.0)
        head.bias[-1] = 0.0  # "no object"
        base = head.weight[0].clone()
        gen = torch.Generator().manual_seed(1)
        for name in FAVOURED:  # near-copies of one row: which favoured class wins depends on the query and image
            i = COCO_NAMES.index(name)
            head.weight[i] = base + torch.randn(base.shape, generator=gen) * 2 * base.std()
            head.bias[i] = 4.0
    model.save_pretrained(folder)
    Mask2FormerImageProcessor(image_mean=[m / 255 for m in IMAGENET_MEAN],
                              image_std=[s / 255 for s in IMAGENET_STD]).save_pretrained(folder)


def _build_grounding_dino(folder: Path) -> None:
    import torch
    from transformers import (
        BertConfig,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
    )

    tok = _write_tokenizer(folder)
    text = BertConfig(vocab_size=len(_vocab()), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64)
    cfg = GroundingDinoConfig(backbone_config=_tiny_swin(out_indices=[2, 3, 4]), text_config=text,
                              use_timm_backbone=False, use_pretrained_backbone=False, d_model=32, encoder_layers=1,
                              decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_attention_heads=2,
                              decoder_attention_heads=2, num_queries=20, num_feature_levels=4, encoder_n_points=2,
                              decoder_n_points=2, max_text_len=48)
    model = GroundingDinoForObjectDetection(cfg)
    with torch.no_grad():  # smaller decoder outputs: token probabilities spread over (0, 1) instead of saturating
        model.model.decoder.layer_norm.weight.mul_(0.15)
        model.model.decoder.layer_norm.bias.mul_(0.15)
    model.save_pretrained(folder)
    # 128 px: the stride-64 feature level stays above 1 x 1 (its group norm needs more than one value per group)
    images = GroundingDinoImageProcessor(size={"shortest_edge": 128, "longest_edge": 192})
    GroundingDinoProcessor(image_processor=images, tokenizer=tok).save_pretrained(folder)


def _build_depth(folder: Path) -> None:
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    backbone = Dinov2Config(image_size=56, patch_size=14, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                            intermediate_size=64, out_features=["stage1", "stage2", "stage3", "stage4"],
                            reshape_hidden_states=False)
    cfg = DepthAnythingConfig(backbone_config=backbone, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16,
                              head_hidden_size=8, reassemble_hidden_size=32, patch_size=14,
                              depth_estimation_type="metric", max_depth=1)  # sigmoid head: no ReLU-dead output
    model = DepthAnythingForDepthEstimation(cfg)
    with torch.no_grad():  # unit-gain convolutions: with the default small init the output is flat
        for mod in [*model.neck.modules(), *model.head.modules()]:
            if isinstance(mod, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                torch.nn.init.kaiming_normal_(mod.weight)
    model.save_pretrained(folder)
    DPTImageProcessor(size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14,
                      do_pad=False, resample=3).save_pretrained(folder)


def _build_blip(folder: Path) -> None:
    from transformers import BlipConfig, BlipForQuestionAnswering

    tok = _write_tokenizer(folder, blip=True)
    n = len(tok)
    cfg = BlipConfig(text_config={"vocab_size": n, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                  "intermediate_size": 64, "encoder_hidden_size": 32, "max_position_embeddings": 64,
                                  "bos_token_id": tok.convert_tokens_to_ids("[DEC]"), "sep_token_id": 102,
                                  "pad_token_id": 0},
                     vision_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                    "intermediate_size": 64, "image_size": 64, "patch_size": 16})
    BlipForQuestionAnswering(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)


_BUILDERS = {"mask2former": _build_mask2former, "grounding_dino": _build_grounding_dino, "depth": _build_depth,
             "blip_vqa": _build_blip}


def build_synthetic(kind: str, seed: int = 0) -> Path:
    """The seeded test model of `kind`, built once into `$K3EVAL_CACHE/weights/` (save_pretrained) and reused."""
    import torch

    folder = weights_dir() / f"synthetic-{kind}-{SYNTHETIC_VISION_VERSION}-seed{seed}"

    def build(tmp: Path) -> None:
        with torch.random.fork_rng(), quiet_transformers():
            torch.manual_seed(seed)
            _BUILDERS[kind](tmp)

    return build_once(folder, weights_dir() / f".{kind}.lock", build, json.dumps({"kind": kind, "seed": seed}) + "\n")
