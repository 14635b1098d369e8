"""The torchmetrics classes: batches equal the one-shot function; two processes (gloo, CPU) equal one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from k3eval.metrics import classes as C
from k3eval.metrics import functional as F

D = 24


def _data():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(40, D))
    gen = rng.normal(0.3, 1.2, size=(36, D))
    img, txt = rng.normal(size=(36, 8)), rng.normal(size=(36, 8)) + 0.5
    return ref, gen, img, txt


def _metrics(ref):
    mu, sigma = F.gaussian_stats(ref)
    return {"fid": C.FrechetDistance(mu, sigma), "kid": C.KernelDistance(ref, subsets=10, subset_size=15, seed=3),
            "is": C.InceptionScore(splits=4, seed=1), "cmmd": C.Cmmd(ref), "clip": C.ClipScore()}


def _update(ms, gen, img, txt, rows):
    for m in ("fid", "kid", "is", "cmmd"):
        ms[m].update(torch.from_numpy(gen[rows]))
    ms["clip"].update(torch.from_numpy(img[rows]), torch.from_numpy(txt[rows]))


def _values(ms) -> dict[str, float]:
    out = {}
    for k, m in ms.items():
        v = m.compute()
        out[k] = float(v[0] if isinstance(v, tuple) else v)
    return out


def _expected(ref, gen, img, txt) -> dict[str, float]:
    mu, sigma = F.gaussian_stats(ref)
    mu2, sigma2 = F.gaussian_stats(gen)
    return {"fid": F.frechet_distance(mu, sigma, mu2, sigma2),
            "kid": F.kernel_inception_distance(ref, gen, 10, 15, 3).mean,
            "is": F.inception_score(gen, 4, 1).mean, "cmmd": F.cmmd(ref, gen),
            "clip": float(F.clip_score(img, txt).mean())}


def test_batches_equal_one_shot():
    ref, gen, img, txt = _data()
    ms = _metrics(ref)
    for start in range(0, 36, 7):
        _update(ms, gen, img, txt, np.arange(start, min(start + 7, 36)))
    got, want = _values(ms), _expected(ref, gen, img, txt)
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-9, abs=1e-12), k
    mu, sigma = ms["fid"].stats()
    np.testing.assert_allclose(sigma, np.cov(gen, rowvar=False), rtol=1e-9)


def _worker(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        ref, gen, img, txt = _data()
        ms = _metrics(ref)
        # contiguous halves keep the gathered order equal to the one-process order (IS shuffles by position)
        half = len(gen) // world
        _update(ms, gen, img, txt, np.arange(rank * half, (rank + 1) * half))
        vals = _values(ms)
        if rank == 0:
            with open(out, "w") as f:
                json.dump(vals, f)
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one(tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "dist.json"
    mp.spawn(_worker, args=(2, f"file://{tmp_path / 'rendezvous'}", str(out)), nprocs=2, join=True)
    got = json.loads(out.read_text())
    want = _expected(*_data())
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-9, abs=1e-12), k
