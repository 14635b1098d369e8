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


def _worker(rank: int, world: int, port: int, run_dir: str, weights: str, cache: str, out: str) -> None:
    """One rank: the Metric classes on its half of the features, then `score_run` under torchrun-style variables."""
    import os

    import torch.distributed as dist

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ref, gen, img, txt = _data()
        ms = _metrics(ref)
        # contiguous halves keep the gathered order equal to the one-process order (IS shuffles by position)
        half = len(gen) // world
        _update(ms, gen, img, txt, np.arange(rank * half, (rank + 1) * half))
        vals = _values(ms)

        from k3eval.metrics.score import ScoreOptions, score_run

        summary = score_run(run_dir, ScoreOptions(metrics=["is"], inception_weights=weights, cache=cache,
                                                  is_splits=2))
        if rank == 0:
            vals["score_is"] = summary["metrics"]["is"]["value"]
            with open(out, "w") as f:
                json.dump(vals, f)
        else:
            assert summary == {}
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one(tmp_path, inception_weights):
    """Metric classes gather across two gloo processes; `k3eval score` under torchrun shares the work by rank."""
    import socket

    import torch.multiprocessing as mp
    from metrics_helpers import make_run

    from k3eval.metrics.score import ScoreOptions, score_run

    run = make_run(tmp_path / "run", n_prompts=4, samples=1, seed=31)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "dist.json"
    cache = tmp_path / "cache2"
    mp.spawn(_worker, args=(2, port, str(run), str(inception_weights), str(cache), str(out)), nprocs=2, join=True)
    got = json.loads(out.read_text())
    want = _expected(*_data())
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-9, abs=1e-12), k
    assert len(list(cache.rglob("*.npz"))) == 2  # each rank featurised its own share of the images
    single = score_run(run, ScoreOptions(metrics=["is"], inception_weights=str(inception_weights),
                                         cache=str(tmp_path / "cache1"), is_splits=2))
    assert got["score_is"] == pytest.approx(single["metrics"]["is"]["value"], rel=1e-6)
