"""CLIP score (per image, image vs prompt) and CMMD (set metric against the reference's CLIP embeddings).

Both read CLIP image embeddings through `ctx.shared(ClipImageExtractor, ...)`: when CMMD's model is CLIP score's
(or any other metric asks for the same model), the embeddings are extracted once. torch is imported inside the
methods: checking metric names and settings stays fast.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from k3eval.errors import UserError
from k3eval.metrics.api import (
    MetricResult,
    Need,
    PerImageMetric,
    ScoreContext,
    ScoreData,
    SetMetric,
    weights_warning,
)
from k3eval.metrics.inception_metrics import reference_info


def clip_image_need(ctx: ScoreContext, backend: str, model: str, pretrained: str, desc: str) -> Need:
    """CLIP image embeddings of one model, shared with every metric that asks for the same one."""
    from k3eval.metrics.extract import ClipImageExtractor

    o = ctx.opts
    return Need(ctx.shared(ClipImageExtractor, backend, model, pretrained, o.device, o.batch_size), desc=desc)


class ClipScore(PerImageMetric):
    name = "clip_score"
    display_name = "CLIP score"
    higher_is_better = True
    default = True

    def needs(self, ctx: ScoreContext) -> dict[str, Need]:
        from k3eval.metrics.extract import ClipTextExtractor

        o = ctx.opts
        image = clip_image_need(ctx, o.clip_backend, o.clip_model, o.clip_pretrained, "CLIP features")
        return {"image": image, "text": Need(ctx.shared(ClipTextExtractor, image.extractor), text="prompt")}

    def per_image_scores(self, data: ScoreData) -> tuple[np.ndarray, MetricResult]:
        from k3eval.metrics import functional as F

        clip = data.extractors["image"]
        cos = F.clip_cosine(data["image"], data["text"])
        scores = 100.0 * np.maximum(cos, 0.0)
        trunc = clip.truncated(data.rows["prompt"].astype(str).tolist())
        n_trunc = int(np.sum(trunc))
        warn = weights_warning(clip.fingerprint, "CLIP score")
        if n_trunc:
            warn.append(f"{n_trunc} prompt(s) longer than the text encoder's context were truncated "
                        "(end-of-text token kept)")
        proto = {**clip.fingerprint, "scale": 100.0, "formula": "100 * max(cos, 0) per image, then the mean",
                 "truncation": "end-of-text token kept", "n_truncated": n_trunc, "n": data.n, "seed": data.opts.seed}
        return scores, MetricResult(proto, warnings=warn, per_image={"clip_cosine": cos, "clip_truncated": trunc},
                                    extra={"n_truncated": n_trunc, "mean_cosine_unclamped": float(cos.mean())})


class Cmmd(SetMetric):
    name = "cmmd"
    display_name = "CMMD"
    higher_is_better = False
    default = True
    reference = "clip"

    def needs(self, ctx: ScoreContext) -> dict[str, Need]:
        o = ctx.opts
        return {"clip": clip_image_need(ctx, "open_clip", o.cmmd_model, o.cmmd_pretrained, "CMMD CLIP features")}

    @staticmethod
    def _mismatch(data: ScoreData) -> list[str]:
        ref = data.reference
        if ref.clip_features is None:
            raise UserError(f"--reference {ref.source} holds no CLIP embeddings: CMMD needs them; build it with "
                            "`k3eval reference build --metrics cmmd` (or pass a folder of reference images)")
        if ref.clip_protocol == data.extractors["clip"].fingerprint:
            return []
        msg = (f"reference {ref.source} CLIP embeddings come from another model "
               f"({(ref.clip_protocol or {}).get('model')}/{(ref.clip_protocol or {}).get('pretrained')})")
        if not data.opts.allow_protocol_mismatch:
            raise UserError(msg + "; rebuild it with the same --cmmd-model/--cmmd-pretrained, or pass "
                            "--allow-protocol-mismatch (recorded)")
        return [msg + " (--allow-protocol-mismatch)"]

    def statistic(self, data: ScoreData):
        from k3eval.metrics import functional as F

        self._mismatch(data)
        emb = data["clip"]
        rc = np.asarray(data.reference.clip_features, np.float64)
        return lambda idx: F.cmmd(rc, emb[idx])

    def describe(self, data: ScoreData, full: Any) -> MetricResult:
        fp = data.extractors["clip"].fingerprint
        proto = {**fp, "n": data.n, "reference": reference_info(data.reference), "kernel": "Gaussian RBF, sigma 10",
                 "scale": 1000.0, "estimator": "unbiased", "embeddings": "L2-normalised", "seed": data.opts.seed}
        return MetricResult(proto, warnings=weights_warning(fp, "CMMD") + self._mismatch(data)
                            + data.reference_warnings)
