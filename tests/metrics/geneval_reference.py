"""GenEval scored the way the official `evaluate_images.py` runs (djghosh13/geneval @ af4902f2): one image at a time
through the detector, post-processed as mmdet 2.x does it (`mmdet_detect`: every query's mask upsampled to the padded
input, cropped, upsampled to the original size, then the top 100 (query, class) pairs each with its full-size mask,
mask score and box, thresholds applied afterwards by the evaluation script), and for every include clause with a
colour a fresh `torch.utils.data.DataLoader` (batch 16, `num_workers` workers, 4 in the official script) over the
crops of that clause's objects, each crop classified by CLIP against that class's zero-shot weights computed on first
use. The rules are `geneval_rules`' (tested on their own); this loop is the reference the batched extractor is
compared with (tests) and timed against (benchmarks/perf).
"""

from __future__ import annotations

import numpy as np

from k3eval.metrics import geneval_rules as R


class _Crops:
    """The official `ImageCrops` dataset: one masked crop per object."""

    def __init__(self, image, objects):
        self.image, self.objects = image, objects

    def __len__(self):
        return len(self.objects)

    def __getitem__(self, i):
        box, mask = self.objects[i]
        return R.masked_crop(self.image, mask, box)


def mmdet_detect(detector, image: np.ndarray):
    """One image through a `Mask2FormerDetector`'s model and mmdet's own instance post-processing, written out as
    mmdet 2.x runs it (`Mask2FormerHead.simple_test`, `MaskFormerFusionHead.simple_test` / `instance_postprocess`,
    `mask2bbox`): nothing is pruned before the masks are made, so all `max_per_image` detections come back."""
    import torch
    import torch.nn.functional as F

    from k3eval.metrics.vision_models import Detections, mask_boxes

    x, (h, w) = detector.prepare(image)
    padded = (-(-x.shape[1] // 32) * 32, -(-x.shape[2] // 32) * 32)
    batch = torch.zeros((1, 3, *padded))
    batch[0, :, :x.shape[1], :x.shape[2]] = x
    with torch.inference_mode():
        res = detector.model()(pixel_values=batch)
        # the head: every query's mask logits to the padded input size; the fusion head: crop, then original size
        masks = F.interpolate(res.masks_queries_logits.float(), size=padded, mode="bilinear", align_corners=False)[0]
        masks = masks[:, :x.shape[1], :x.shape[2]]
        masks = F.interpolate(masks[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        probs = F.softmax(res.class_queries_logits[0].float(), dim=-1)[:, :-1]
        n_cls = probs.shape[1]
        scores, top = probs.flatten().topk(min(detector.max_per_image, probs.numel()), sorted=False)
        labels, masks = top % n_cls, masks[top // n_cls]
        binary = (masks > 0).float()
        mask_scores = (masks.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
        binary = binary.bool()
    return Detections(mask_boxes(binary).numpy(), (scores * mask_scores).numpy(), labels.numpy().astype(np.int64),
                      binary.numpy())


def official_loop(paths, metas, detector, clip_encoder, rules: R.Rules = R.Rules(), workers: int = 4,
                  stats: dict | None = None, mmdet_postprocess: bool = True):
    """(correct, reason) per image; `stats["loaders"]` counts the DataLoaders built (one per decided colour clause).
    `mmdet_postprocess=False` detects each image with the detector's own `detect` (k3eval's post-processing, which
    makes masks only for pairs above the lowest threshold) instead of `mmdet_detect`."""
    import torch

    from k3eval.metrics.preprocess import load_rgb8

    mapping, _ = R.label_mapping(detector.id2label())
    classifiers: dict[str, np.ndarray] = {}
    out = []
    for path, meta in zip(paths, metas):
        image = load_rgb8(path)
        if mmdet_postprocess:
            det = mmdet_detect(detector, image)
        else:
            det = detector.detect([detector.prepare(image)], rules.floor)[0]
        rows, masks = [], []
        for i, lab in enumerate(det.labels):
            if int(lab) in mapping:
                row = np.full(R.N_COLS, np.nan)
                row[R.BOX], row[R.SCORE], row[R.LABEL] = det.boxes[i], det.scores[i], mapping[int(lab)]
                rows.append(row)
                masks.append(None if det.masks is None else det.masks[i])
        dets = np.stack(rows) if rows else np.zeros((0, R.N_COLS))
        objects = R.select_objects(dets, meta["tag"], rules)
        for req in meta.get("include", []):
            found = objects.get(req["class"], [])[:req["count"]]
            if "color" not in req or len(found) < req["count"]:
                continue
            name = req["class"]
            if name not in classifiers:
                texts = [t.format(c=c, obj=name) for c in R.COLORS for t in R.COLOR_TEMPLATES]
                emb = clip_encoder.encode_texts(texts).reshape(len(R.COLORS), len(R.COLOR_TEMPLATES), -1)
                classifiers[name] = R.zero_shot_weights(emb)
            if stats is not None:
                stats["loaders"] = stats.get("loaders", 0) + 1
            loader = torch.utils.data.DataLoader(_Crops(image, [(dets[i, R.BOX], masks[i]) for i in found]),
                                                 batch_size=16, num_workers=workers, collate_fn=list)
            logits = [R.zero_shot_logits(clip_encoder.encode_images(batch), classifiers[name]) for batch in loader]
            dets[found, R.COLOR0:] = np.concatenate(logits)
        out.append(R.evaluate(meta, dets, rules))
    return out
