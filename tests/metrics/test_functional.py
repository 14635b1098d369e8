"""The pure metric functions against independent references (scipy, numpy, torch-fidelity's own functions)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from k3eval.metrics import functional as F


def _scipy_fid(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    d = mu1 - mu2
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _eigvals_fid(mu1, s1, mu2, s2):
    # torch-fidelity's route, in numpy: eigenvalues of the (non-symmetric) product.
    ev = np.linalg.eigvals(s1 @ s2)
    d = mu1 - mu2
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(ev.astype(complex)).real.sum())


def _gaussian(rng, n, d, scale=1.0):
    a = rng.normal(size=(d, d)) * scale / np.sqrt(d)
    x = rng.normal(size=(n, d)) @ a + rng.normal(size=d)
    return x


def test_gaussian_stats_match_numpy():
    x = np.random.default_rng(0).normal(size=(50, 7))
    mu, sigma = F.gaussian_stats(x)
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False), rtol=1e-10)
    mu2, sigma2 = F.stats_from_sums(x.sum(0), x.T @ x, len(x))
    np.testing.assert_allclose(sigma2, sigma, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("d", [16, 64])
def test_frechet_matches_scipy_full_rank(d):
    rng = np.random.default_rng(d)
    x, y = _gaussian(rng, 500, d), _gaussian(rng, 400, d, 1.5)
    m1, s1 = F.gaussian_stats(x)
    m2, s2 = F.gaussian_stats(y)
    ours = F.frechet_distance(m1, s1, m2, s2)
    ref = _scipy_fid(m1, s1, m2, s2)
    assert abs(ours - ref) / abs(ref) < 1e-6
    assert abs(F.frechet_distance(m2, s2, m1, s1) - ref) / abs(ref) < 1e-6  # symmetric


def test_frechet_rank_deficient_matches_reference():
    # n < d: both covariances singular. scipy's sqrtm is unreliable there; the eigvals route is the reference.
    rng = np.random.default_rng(3)
    d = 96
    x, y = _gaussian(rng, 40, d), _gaussian(rng, 30, d, 2.0)
    m1, s1 = F.gaussian_stats(x)
    m2, s2 = F.gaussian_stats(y)
    ours = F.frechet_distance(m1, s1, m2, s2)
    ref = _eigvals_fid(m1, s1, m2, s2)
    assert abs(ours - ref) / abs(ref) < 1e-6
    # the N x N Gram route gives the same number
    gram = F.frechet_distance_to_features(m1, s1, y)
    assert abs(gram - ref) / abs(ref) < 1e-6


def test_frechet_of_identical_sets_is_zero_and_shapes_checked():
    x = np.random.default_rng(1).normal(size=(200, 10))
    m, s = F.gaussian_stats(x)
    assert abs(F.frechet_distance(m, s, m, s)) < 1e-8
    with pytest.raises(ValueError, match="shape mismatch"):
        F.frechet_distance(m, s, m[:5], s[:5, :5])


def test_frechet_to_features_large_n_uses_full_route():
    rng = np.random.default_rng(5)
    x, y = _gaussian(rng, 300, 8), _gaussian(rng, 100, 8)
    m1, s1 = F.gaussian_stats(x)
    m2, s2 = F.gaussian_stats(y)
    assert F.frechet_distance_to_features(m1, s1, y) == pytest.approx(_scipy_fid(m1, s1, m2, s2), rel=1e-6)


def _numpy_mmd2_unbiased(x, y):
    d = x.shape[1]
    k = lambda a, b: (a @ b.T / d + 1) ** 3  # noqa: E731
    m, n = len(x), len(y)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
            - 2 * kxy.sum() / (m * n))


def test_kid_core_equals_numpy_on_the_same_subsets():
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(60, 20)), rng.normal(0.3, 1.0, size=(50, 20))
    r = F.kernel_inception_distance(x, y, subsets=20, subset_size=25, seed=11)
    ref = [_numpy_mmd2_unbiased(x[ix], y[iy]) for ix, iy in F.kid_subsets(60, 50, 20, 25, 11)]
    assert r.mean == pytest.approx(np.mean(ref), rel=1e-10)
    assert r.std == pytest.approx(np.std(ref), rel=1e-8)
    assert r.subset_size == 25
    # seeded: the same seed gives the same subsets, another seed others
    assert F.kernel_inception_distance(x, y, 20, 25, 11).mean == r.mean
    assert F.kernel_inception_distance(x, y, 20, 25, 12).mean != r.mean


def test_kid_matches_torch_fidelity_with_the_same_seed():
    import torch
    from torch_fidelity.metric_kid import kid_features_to_metric

    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(40, 16)), rng.normal(0.2, 1.0, size=(40, 16))
    theirs = kid_features_to_metric(torch.from_numpy(x), torch.from_numpy(y), kid_subsets=10, kid_subset_size=20,
                                    rng_seed=123, verbose=False, kid_degree=3, kid_gamma=None, kid_coef0=1)
    ours = F.kernel_inception_distance(x, y, subsets=10, subset_size=20, seed=123)
    assert ours.mean == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-6)


def test_inception_score_matches_torch_fidelity():
    import torch
    from torch_fidelity.metric_isc import isc_features_to_metric

    logits = np.random.default_rng(9).normal(size=(100, 30)) * 3
    theirs = isc_features_to_metric(torch.from_numpy(logits).float(), splits=10, shuffle=True, rng_seed=2020)
    ours = F.inception_score(logits, splits=10, seed=2020)
    assert ours.mean == pytest.approx(theirs["inception_score_mean"], rel=1e-5)
    assert ours.std == pytest.approx(theirs["inception_score_std"], rel=1e-4)
    with pytest.raises(ValueError, match="splits"):
        F.inception_score(logits[:5], splits=10)


def test_cmmd_equals_numpy_unbiased_rbf():
    rng = np.random.default_rng(10)
    x, y = rng.normal(size=(30, 8)), rng.normal(0.5, 1.0, size=(25, 8))
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    yn = y / np.linalg.norm(y, axis=1, keepdims=True)

    def k(a, b):
        d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return np.exp(-d2 / (2 * 10.0 ** 2))

    kxx, kyy, kxy = k(xn, xn), k(yn, yn), k(xn, yn)
    ref = ((kxx.sum() - np.trace(kxx)) / (30 * 29) + (kyy.sum() - np.trace(kyy)) / (25 * 24) - 2 * kxy.mean())
    assert F.cmmd(x, y) == pytest.approx(1000 * ref, rel=1e-8)
    assert abs(F.cmmd(x, x)) < 1e-9 * 1000 + abs(F.cmmd(x, y))  # same set: about zero


def test_clip_score_clamps_each_pair():
    img = np.array([[1.0, 0.0], [1.0, 0.0]])
    txt = np.array([[1.0, 1.0], [-1.0, 0.2]])
    cos = F.clip_cosine(img, txt)
    assert cos[0] == pytest.approx(np.sqrt(0.5)) and cos[1] < 0
    np.testing.assert_allclose(F.clip_score(img, txt), [100 * np.sqrt(0.5), 0.0])
