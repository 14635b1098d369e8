"""GenEval scored the way the official `evaluate_images.py` runs (djghosh13/geneval @ af4902f2): one image at a time
through the detector, and for every include clause with a colour a fresh `torch.utils.data.DataLoader` (batch 16,
`num_workers` workers, 4 in the official script) over the crops of that clause's objects, each crop classified by
CLIP against that class's zero-shot weights computed on first use. The rules are `geneval_rules`' (tested on their
own); this loop is the reference the batched extractor is compared with (tests) and timed against (benchmarks/perf).
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


def official_loop(paths, metas, detector, clip_encoder, rules: R.Rules = R.Rules(), workers: int = 4,
                  stats: dict | None = None):
    """(correct, reason) per image; `stats["loaders"]` counts the DataLoaders built (one per decided colour clause)."""
    import torch

    from k3eval.metrics.preprocess import load_rgb8

    mapping, _ = R.label_mapping(detector.id2label())
    classifiers: dict[str, np.ndarray] = {}
    out = []
    for path, meta in zip(paths, metas):
        image = load_rgb8(path)
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
