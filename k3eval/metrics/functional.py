"""Pure metric functions on features: FID, KID, IS, CLIP score, CMMD.

Everything here takes feature arrays (numpy or torch) and returns numbers; no images, no networks, no state. The
classes in `k3eval.metrics.classes` accumulate features across batches and processes and call these functions.
Statistics are computed in float64: covariances of 2048-d features lose digits in float32, and FID is a small
difference of large traces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

Array = np.ndarray | torch.Tensor


def _f64(x: Array) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
    return x.detach().to(torch.float64)


# Rows converted to float64 at a time by the statistics below: bounds their memory (4096 x 2048 x 8 B = 64 MiB)
# whatever the number of features.
STATS_CHUNK = 4096


def gaussian_stats(features: Array) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (ddof=1, as numpy.cov and every FID tool) of N x D features, in float64.

    Two passes (the mean, then the centred products), each over at most `STATS_CHUNK` rows at a time, so a float32
    N x D input is never copied whole to float64."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features must be N x D with N >= 2, got shape {tuple(features.shape)}")
    n, d = features.shape
    if n <= STATS_CHUNK:
        f = _f64(features)
        mu = f.mean(0)
        c = f - mu
        return mu.numpy(), (c.T @ c / (n - 1)).numpy()
    total = torch.zeros(d, dtype=torch.float64)
    for i in range(0, n, STATS_CHUNK):
        total += _f64(features[i:i + STATS_CHUNK]).sum(0)
    mu = total / n
    sigma = torch.zeros(d, d, dtype=torch.float64)
    for i in range(0, n, STATS_CHUNK):
        c = _f64(features[i:i + STATS_CHUNK]) - mu
        sigma += c.T @ c
    return mu.numpy(), (sigma / (n - 1)).numpy()


class RunningGaussian:
    """Mean and unbiased covariance of rows that arrive batch by batch, without keeping them (statistics-only
    references of any size).

    float64, with the pairwise update of Chan, Golub and LeVeque: each batch's own mean and centred scatter are
    merged into the running ones, M2 += M2_b + d d^T n n_b / (n + n_b) with d the difference of the means. Unlike
    raw sums of x and x x^T this never subtracts two large numbers, so the result equals the two-pass
    `gaussian_stats` to rounding (tested to 1e-10 relative) even for features far from zero.
    """

    def __init__(self) -> None:
        self.n = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def update(self, features: Array) -> None:
        """Add the rows of an N x D batch (any float dtype; N may be 0)."""
        for i in range(0, features.shape[0], STATS_CHUNK):
            x = _f64(features[i:i + STATS_CHUNK])
            nb = x.shape[0]
            mb = x.mean(0)
            c = x - mb
            m2b = c.T @ c
            if self.n == 0:
                self.n, self.mean, self.m2 = nb, mb, m2b
                continue
            total = self.n + nb
            d = mb - self.mean
            self.mean = self.mean + d * (nb / total)
            self.m2 = self.m2 + m2b + torch.outer(d, d) * (self.n * nb / total)
            self.n = total

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, unbiased covariance) as float64 numpy arrays."""
        if self.n < 2:
            raise ValueError(f"need at least 2 samples for a covariance, got {self.n}")
        return self.mean.numpy(), (self.m2 / (self.n - 1)).numpy()


def stats_from_sums(total: Array, outer: Array, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance from running sums (sum x, sum x x^T, count), as the accumulating class keeps."""
    if n < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got {n}")
    s = _f64(total)
    o = _f64(outer)
    mu = s / n
    sigma = (o - n * torch.outer(mu, mu)) / (n - 1)
    return mu.numpy(), sigma.numpy()


def sqrtm_psd(sigma: Array) -> torch.Tensor:
    """Symmetric square root of a positive semi-definite matrix by eigendecomposition (eigenvalues clipped at 0)."""
    s = _f64(sigma)
    s = (s + s.T) / 2
    w, v = torch.linalg.eigh(s)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def trace_sqrt_product(sigma1: Array, sigma2: Array, sqrt_sigma1: torch.Tensor | None = None) -> float:
    """tr(sqrt(S1 S2)) for PSD S1, S2, computed as sum(sqrt(eig(sqrt(S1) S2 sqrt(S1)))).

    sqrt(S1) S2 sqrt(S1) is symmetric PSD and similar to S1 S2, so its eigenvalues are the same, real and
    non-negative; the symmetric eigensolver is faster and stabler than scipy's sqrtm or a general eig, and it
    handles rank-deficient covariances (n < D) without complex parts. Pass `sqrt_sigma1` to reuse it (bootstrap).
    """
    r1 = sqrt_sigma1 if sqrt_sigma1 is not None else sqrtm_psd(sigma1)
    m = r1 @ _f64(sigma2) @ r1
    m = (m + m.T) / 2
    ev = torch.linalg.eigvalsh(m)
    return float(ev.clamp_min(0).sqrt().sum())


def frechet_distance(mu1: Array, sigma1: Array, mu2: Array, sigma2: Array,
                     sqrt_sigma1: torch.Tensor | None = None) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2): |mu1-mu2|^2 + tr(S1 + S2 - 2 sqrt(S1 S2)).

    float64 throughout. Values a few 1e-10 below zero (identical sets) are rounding and are returned as computed.
    """
    m1, m2 = _f64(mu1), _f64(mu2)
    s1, s2 = _f64(sigma1), _f64(sigma2)
    if m1.shape != m2.shape or s1.shape != s2.shape or s1.shape != (m1.shape[0], m1.shape[0]):
        raise ValueError(f"shape mismatch: mu {tuple(m1.shape)} / {tuple(m2.shape)}, "
                         f"sigma {tuple(s1.shape)} / {tuple(s2.shape)}")
    diff = m1 - m2
    tr = trace_sqrt_product(s1, s2, sqrt_sigma1)
    return float(diff @ diff + torch.trace(s1) + torch.trace(s2) - 2.0 * tr)


def frechet_distance_to_features(ref_mu: Array, ref_sigma: Array, features: Array) -> float:
    """FID of a feature set (N x D) against reference statistics, exact, choosing the cheaper route.

    With N <= D the sample covariance is S2 = C^T C / (N-1) for the centred features C, and the non-zero
    eigenvalues of S1 S2 are those of the N x N symmetric PSD matrix C S1 C^T / (N-1) (cyclic property of the
    trace and of eigenvalues), so tr sqrt(S1 S2) needs an N x N eigendecomposition instead of two D x D ones.
    Above N = D the symmetric D x D route of `trace_sqrt_product` is used.
    """
    n, d = features.shape
    if n < 2:
        raise ValueError(f"need at least 2 feature rows, got {n}")
    if n > d:
        mu, sigma = gaussian_stats(features)
        return frechet_distance(ref_mu, ref_sigma, mu, sigma)
    f = _f64(features)
    m1, s1 = _f64(ref_mu), _f64(ref_sigma)
    mu = f.mean(0)
    c = f - mu
    g = c @ s1 @ c.T / (n - 1)
    tr = float(torch.linalg.eigvalsh((g + g.T) / 2).clamp_min(0).sqrt().sum())
    tr2 = float((c * c).sum() / (n - 1))
    diff = m1 - mu
    return float(diff @ diff + torch.trace(s1) + tr2 - 2.0 * tr)


# ---- KID ---------------------------------------------------------------------------------------------------------
def polynomial_mmd2_unbiased(x: Array, y: Array, degree: int = 3, gamma: float | None = None,
                             coef0: float = 1.0) -> float:
    """Unbiased MMD^2 with the polynomial kernel (gamma x.y + coef0)^degree, gamma = 1/D by default (KID's kernel).

    The diagonal terms k(x_i, x_i) are left out of the within-set means, which makes the estimator unbiased.
    """
    a, b = _f64(x), _f64(y)
    g = 1.0 / a.shape[1] if gamma is None else gamma
    kxx = (a @ a.T * g + coef0) ** degree
    kyy = (b @ b.T * g + coef0) ** degree
    kxy = (a @ b.T * g + coef0) ** degree
    m, n = a.shape[0], b.shape[0]
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(sxx + syy - 2.0 * kxy.mean())


def kid_subsets(n_x: int, n_y: int, subsets: int, subset_size: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The index pairs KID averages over: `subsets` draws of `subset_size` rows of each set without replacement.

    Drawn with numpy's legacy RandomState(seed) in the order torch-fidelity uses, so the same seed selects the same
    subsets there and here (torchmetrics and clean-fid draw unseeded subsets).
    """
    if subset_size < 2 or subset_size > min(n_x, n_y):
        raise ValueError(f"subset_size must be in [2, min(n_x, n_y) = {min(n_x, n_y)}], got {subset_size}")
    rng = np.random.RandomState(seed)
    out = []
    for _ in range(subsets):
        ix = rng.choice(n_x, subset_size, replace=False)
        iy = rng.choice(n_y, subset_size, replace=False)
        out.append((ix, iy))
    return out


@dataclass(frozen=True)
class KidResult:
    mean: float
    std: float
    subsets: int
    subset_size: int


def kernel_inception_distance(x: Array, y: Array, subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> KidResult:
    """KID: mean and std over seeded subsets of the unbiased polynomial-kernel MMD^2. `subset_size` is capped at the
    smaller set size. x are the reference features, y the generated ones (the order matters only for the seed).
    Only the rows of a subset are converted to float64 at a time, so float32 inputs of any size are not copied."""
    size = min(subset_size, x.shape[0], y.shape[0])
    values = np.array([polynomial_mmd2_unbiased(_f64(x[ix]), _f64(y[iy]))
                       for ix, iy in kid_subsets(x.shape[0], y.shape[0], subsets, size, seed)])
    return KidResult(float(values.mean()), float(values.std()), subsets, size)


# ---- IS ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IsResult:
    mean: float
    std: float
    splits: int


def inception_score(logits: Array, splits: int = 10, seed: int = 0, shuffle: bool = True) -> IsResult:
    """Inception score from unbiased logits: exp(E_x KL(p(y|x) || p(y))) per split, mean and std over splits.

    Rows are shuffled with RandomState(seed) first (torch-fidelity's default seed is 2020), then cut into `splits`
    nearly equal parts.
    """
    n = logits.shape[0]
    if n < splits:
        raise ValueError(f"need at least as many images ({n}) as splits ({splits})")
    order = np.random.RandomState(seed).permutation(n) if shuffle else np.arange(n)
    scores = []
    size = -(-n // splits)  # the splits torch.chunk makes: ceil(n / splits) rows each, the last one shorter
    for start in range(0, n, size):
        lg = _f64(logits[order[start:start + size]])  # one split at a time in float64
        part_p, part_logp = torch.softmax(lg, dim=1), torch.log_softmax(lg, dim=1)
        py = part_p.mean(0, keepdim=True)
        kl = (part_p * (part_logp - torch.log(py))).sum(1).mean()
        scores.append(math.exp(float(kl)))
    arr = np.array(scores)
    return IsResult(float(arr.mean()), float(arr.std()), splits)


# ---- CLIP score and CMMD -----------------------------------------------------------------------------------------
def clip_cosine(image_emb: Array, text_emb: Array) -> np.ndarray:
    """Cosine similarity of paired image and text embeddings (rows), computed in float64."""
    a, b = _f64(image_emb), _f64(text_emb)
    a = a / a.norm(dim=1, keepdim=True)
    b = b / b.norm(dim=1, keepdim=True)
    return (a * b).sum(1).numpy()


def clip_score(image_emb: Array, text_emb: Array, scale: float = 100.0) -> np.ndarray:
    """Per-pair CLIP score: scale * max(cos, 0) (Hessel et al. clamp each pair; torchmetrics clamps the mean)."""
    return scale * np.maximum(clip_cosine(image_emb, text_emb), 0.0)


# Rows of a kernel matrix computed at a time: its memory stays 2048 x N float64 (CMMD of 30,000 images would need
# three 7 GB matrices at once).
KERNEL_BLOCK = 2048


def rbf_mmd2_unbiased(x: Array, y: Array, sigma: float = 10.0) -> float:
    """Unbiased MMD^2 with the Gaussian kernel exp(-|x-y|^2 / (2 sigma^2)); diagonal terms left out. The kernel
    matrices are summed `KERNEL_BLOCK` rows at a time."""
    a, b = _f64(x), _f64(y)
    g = 1.0 / (2.0 * sigma * sigma)

    def ksum(u, v, diagonal: bool) -> torch.Tensor:
        """Sum of k(u_i, v_j) over all pairs, without the i == j terms when `diagonal` (u is v)."""
        vv = (v * v).sum(1)[None, :]
        total = torch.zeros((), dtype=torch.float64)
        for s in range(0, u.shape[0], KERNEL_BLOCK):
            ub = u[s:s + KERNEL_BLOCK]
            kb = torch.exp(-g * ((ub * ub).sum(1)[:, None] + vv - 2.0 * ub @ v.T).clamp_min(0))
            total += kb.sum() - (kb[:, s:s + KERNEL_BLOCK].diagonal().sum() if diagonal else 0.0)
        return total

    m, n = a.shape[0], b.shape[0]
    sxx = ksum(a, a, True) / (m * (m - 1))
    syy = ksum(b, b, True) / (n * (n - 1))
    return float(sxx + syy - 2.0 * ksum(a, b, False) / (m * n))


def cmmd(x: Array, y: Array, sigma: float = 10.0, scale: float = 1000.0) -> float:
    """CMMD (Jayasumana et al. 2024): scale * unbiased RBF MMD^2 between L2-normalised CLIP image embeddings."""
    a, b = _f64(x), _f64(y)
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError(f"CMMD needs at least 2 embeddings per set, got {a.shape[0]} and {b.shape[0]}")
    a = a / a.norm(dim=1, keepdim=True)
    b = b / b.norm(dim=1, keepdim=True)
    return scale * rbf_mmd2_unbiased(a, b, sigma)
