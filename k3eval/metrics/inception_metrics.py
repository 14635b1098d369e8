"""FID, KID and IS: set metrics of the TF-ported Inception-v3 (pool3 features and unbiased logits).

All three read the same extractor (built once through `ctx.shared`, so the features are extracted once); FID and
KID compare with the reference's "inception" slot. Formulas and their tests: `k3eval.metrics.functional`. torch is
imported inside the methods: checking metric names and settings stays fast.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from k3eval.errors import UserError
from k3eval.metrics.api import MetricResult, Need, ScoreContext, ScoreData, SetMetric, weights_warning


def _inception(weights: str | None, protocol: str, device: str, batch_size: int, dtype: str):
    from k3eval.metrics.extract import InceptionExtractor
    from k3eval.metrics.weights import resolve_inception_weights

    return InceptionExtractor(resolve_inception_weights(weights), protocol, device, batch_size, dtype)


def inception_need(ctx: ScoreContext) -> Need:
    """The Inception features of every image, under the options' protocol, weights and dtype."""
    o = ctx.opts
    return Need(ctx.shared(_inception, o.inception_weights, o.protocol, o.device, o.batch_size, o.dtype),
                desc="Inception features")


def reference_info(ref) -> dict[str, Any]:
    """How the reference is described in a metric's protocol."""
    return {"source": str(ref.source), "n": ref.n, "external": ref.external, "protocol": ref.protocol.get("protocol"),
            "sha256": ref.protocol.get("sha256")}


def _protocol_warnings(data: ScoreData) -> list[str]:
    """A reference of another Inception protocol is refused, or recorded with --allow-protocol-mismatch."""
    from k3eval.metrics.reference import protocol_mismatch

    ref = data.reference
    diffs = protocol_mismatch(data.extractors["inception"].fingerprint, ref.protocol)
    if not diffs:
        return []
    msg = f"reference {ref.source} was computed under another protocol ({'; '.join(diffs)})"
    if not data.opts.allow_protocol_mismatch:
        raise UserError(msg + "; FID/KID against it would not be comparable. Rebuild the reference with the same "
                        "--protocol and weights, or pass --allow-protocol-mismatch (recorded)")
    return [msg + " (--allow-protocol-mismatch)"]


class _InceptionMetric(SetMetric):
    default = True

    def needs(self, ctx: ScoreContext) -> dict[str, Need]:
        return {"inception": inception_need(ctx)}

    @staticmethod
    def _fingerprint(data: ScoreData) -> dict[str, Any]:
        return data.extractors["inception"].fingerprint


class Fid(_InceptionMetric):
    name = "fid"
    display_name = "FID"
    higher_is_better = False
    reference = "inception"
    reference_features = False

    def statistic(self, data: ScoreData):
        from k3eval.metrics import functional as F
        from k3eval.metrics.inception import POOL_DIM

        _protocol_warnings(data)
        ref = data.reference
        pool = data["inception"][:, :POOL_DIM]
        r1 = F.sqrtm_psd(ref.sigma) if data.n > POOL_DIM else None  # reused by every resample of the large-n route

        def fid_of(idx: np.ndarray) -> float:
            if len(idx) <= POOL_DIM:
                return F.frechet_distance_to_features(ref.mu, ref.sigma, pool[idx])
            mu, sigma = F.gaussian_stats(pool[idx])
            return F.frechet_distance(ref.mu, ref.sigma, mu, sigma, sqrt_sigma1=r1)

        return fid_of

    def describe(self, data: ScoreData, full: Any) -> MetricResult:
        from k3eval.metrics.inception import POOL_DIM

        fp, n = self._fingerprint(data), data.n
        small = [f"n = {n} < {POOL_DIM} (the feature dimension): the covariance is rank-deficient and FID is biased "
                 "upward at small n; compare FID only at equal n"] if n < POOL_DIM else []
        proto = {**fp, "n": n, "reference": reference_info(data.reference),
                 "sqrtm": "float64 symmetric eigendecomposition (N x N Gram route when N <= 2048)",
                 "seed": data.opts.seed, "min_category": data.opts.min_category}
        return MetricResult(proto, warnings=weights_warning(fp, "Inception metrics") + small + data.reference.warnings
                            + _protocol_warnings(data) + data.reference_warnings)


class Kid(_InceptionMetric):
    name = "kid"
    display_name = "KID"
    higher_is_better = False
    reference = "inception"

    def statistic(self, data: ScoreData):
        from k3eval.metrics import functional as F
        from k3eval.metrics.inception import POOL_DIM

        _protocol_warnings(data)
        ref = data.reference
        if ref.features is None:
            raise UserError(f"--reference {ref.source} holds statistics only (mu, sigma), not features: KID needs "
                            "reference features; build it with `k3eval reference build`")
        rf = ref.features  # float32; each subset is converted to float64 on its own
        pool = data["inception"][:, :POOL_DIM]
        o = data.opts
        return lambda idx: F.kernel_inception_distance(rf, pool[idx], o.kid_subsets, o.kid_subset_size, o.seed)

    def describe(self, data: ScoreData, full: Any) -> MetricResult:
        fp = self._fingerprint(data)
        proto = {**fp, "n": data.n, "reference": reference_info(data.reference), "kernel": "(x.y/d + 1)^3",
                 "estimator": "unbiased", "subsets": data.opts.kid_subsets, "subset_size": full.subset_size,
                 "seed": data.opts.seed}
        return MetricResult(proto, warnings=weights_warning(fp, "Inception metrics") + data.reference.warnings
                            + _protocol_warnings(data) + data.reference_warnings)


class InceptionScore(_InceptionMetric):
    name = "is"
    display_name = "Inception score"
    higher_is_better = True

    def statistic(self, data: ScoreData):
        from k3eval.metrics import functional as F
        from k3eval.metrics.inception import POOL_DIM

        logits = data["inception"][:, POOL_DIM:]
        splits = min(data.opts.is_splits, data.n)
        return lambda idx: F.inception_score(logits[idx], min(splits, len(idx)), data.opts.seed)

    def describe(self, data: ScoreData, full: Any) -> MetricResult:
        fp, n, o = self._fingerprint(data), data.n, data.opts
        splits = min(o.is_splits, n)
        warnings = weights_warning(fp, "Inception metrics")
        if splits < o.is_splits:
            warnings.append(f"only {n} images: {splits} splits instead of {o.is_splits}")
        proto = {**fp, "n": n, "splits": splits, "logits": "unbiased (no classifier bias)", "seed": o.seed}
        return MetricResult(proto, warnings=warnings)
