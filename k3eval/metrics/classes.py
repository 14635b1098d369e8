"""torchmetrics `Metric` classes: accumulate features batch by batch and across processes, then call the pure
functions of `k3eval.metrics.functional`.

States are registered with `add_state(..., dist_reduce_fx=...)`, so under torchrun (any backend) `compute()`
gathers every rank's share first: running sums are summed, feature lists concatenated. Sums are kept in float64.
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from k3eval.metrics import functional as F


class FrechetDistance(Metric):
    """FID of accumulated features against fixed reference statistics (mu, sigma). `update(features)` takes
    N x D float features (Inception pool3); `compute()` returns the distance as a float64 scalar tensor."""

    full_state_update = False
    higher_is_better = False

    def __init__(self, ref_mu: np.ndarray, ref_sigma: np.ndarray, **kwargs):
        super().__init__(**kwargs)
        d = int(np.asarray(ref_mu).shape[0])
        self.ref_mu = np.asarray(ref_mu, np.float64)
        self.ref_sigma = np.asarray(ref_sigma, np.float64)
        self.add_state("total", torch.zeros(d, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("outer", torch.zeros(d, d, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, features: torch.Tensor) -> None:
        f = torch.as_tensor(features).to(self.total.device, torch.float64)
        self.total += f.sum(0)
        self.outer += f.T @ f
        self.n += f.shape[0]

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        return F.stats_from_sums(self.total.cpu(), self.outer.cpu(), int(self.n))

    def compute(self) -> torch.Tensor:
        mu, sigma = self.stats()
        return torch.tensor(F.frechet_distance(self.ref_mu, self.ref_sigma, mu, sigma), dtype=torch.float64)


class _FeatureList(Metric):
    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("feats", [], dist_reduce_fx="cat")

    def update(self, features: torch.Tensor) -> None:
        self.feats.append(torch.as_tensor(features).to(torch.float64))

    def all_features(self) -> torch.Tensor:
        return dim_zero_cat(self.feats)


class KernelDistance(_FeatureList):
    """KID against fixed reference features: seeded subsets, unbiased polynomial MMD^2. compute() -> (mean, std)."""

    higher_is_better = False

    def __init__(self, ref_features: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0,
                 **kwargs):
        super().__init__(**kwargs)
        self.ref = np.asarray(ref_features, np.float64)
        self.subsets, self.subset_size, self.seed = subsets, subset_size, seed

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        r = F.kernel_inception_distance(self.ref, self.all_features(), self.subsets, self.subset_size, self.seed)
        return torch.tensor(r.mean, dtype=torch.float64), torch.tensor(r.std, dtype=torch.float64)


class InceptionScore(_FeatureList):
    """IS from accumulated unbiased logits. compute() -> (mean, std) over splits."""

    higher_is_better = True

    def __init__(self, splits: int = 10, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.splits, self.seed = splits, seed

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        r = F.inception_score(self.all_features(), self.splits, self.seed)
        return torch.tensor(r.mean, dtype=torch.float64), torch.tensor(r.std, dtype=torch.float64)


class ClipScore(Metric):
    """Mean per-pair CLIP score, scale * max(cos, 0), from paired image and text embeddings."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, scale: float = 100.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> None:
        s = F.clip_score(torch.as_tensor(image_emb), torch.as_tensor(text_emb), self.scale)
        self.total += float(s.sum())
        self.n += len(s)

    def compute(self) -> torch.Tensor:
        return self.total / self.n


class Cmmd(_FeatureList):
    """CMMD of accumulated CLIP image embeddings against fixed reference embeddings."""

    higher_is_better = False

    def __init__(self, ref_embeddings: np.ndarray, sigma: float = 10.0, scale: float = 1000.0, **kwargs):
        super().__init__(**kwargs)
        self.ref = np.asarray(ref_embeddings, np.float64)
        self.sigma, self.scale = sigma, scale

    def compute(self) -> torch.Tensor:
        return torch.tensor(F.cmmd(self.ref, self.all_features(), self.sigma, self.scale), dtype=torch.float64)
