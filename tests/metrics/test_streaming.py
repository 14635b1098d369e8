"""Scoring at scale: running statistics equal to the two-pass ones, decoding in worker processes, shards written as
the extraction goes, statistics-only references, and the edge cases of streaming (duplicates, unreadable images)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from metrics_helpers import smooth_images, write_pngs

from k3eval.cli import main
from k3eval.errors import UserError
from k3eval.metrics import extract
from k3eval.metrics import functional as F
from k3eval.metrics.api import ImageExtractor
from k3eval.metrics.cache import FeatureCache
from k3eval.metrics.extract import ArraySink, Job, StatsSink, run_jobs


def _rel(a, b) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


# ---- running statistics --------------------------------------------------------------------------------------------
def test_running_statistics_equal_the_two_pass_ones():
    """Features far from zero (offset 1e4, unit spread) in batches of uneven sizes, empty and single rows included:
    the running mean and covariance equal the two-pass ones to 1e-10. Raw sums of x and x x^T cannot (the test is
    able to fail): they lose about eight digits to cancellation here."""
    rng = np.random.default_rng(0)
    feats = (1e4 + rng.standard_normal((700, 48)) @ rng.standard_normal((48, 48)) * 0.1).astype(np.float32)
    run = F.RunningGaussian()
    start = 0
    for size in [0, 1, 5, 300, 0, 1, 393]:
        run.update(feats[start:start + size])
        start += size
    assert start == len(feats) and run.n == len(feats)
    mu, sigma = run.stats()
    mu2, sigma2 = F.gaussian_stats(feats)
    assert _rel(mu, mu2) < 1e-10 and _rel(sigma, sigma2) < 1e-10
    np.testing.assert_allclose(sigma2, np.cov(feats.astype(np.float64), rowvar=False), rtol=1e-9, atol=1e-12)
    f64 = feats.astype(np.float64)
    _, naive = F.stats_from_sums(f64.sum(0), f64.T @ f64, len(f64))
    assert _rel(naive, sigma2) > 1e-10


def test_gaussian_stats_in_chunks_equal_numpy(monkeypatch):
    monkeypatch.setattr(F, "STATS_CHUNK", 7)
    feats = np.random.default_rng(1).standard_normal((50, 6)).astype(np.float32) + 3
    mu, sigma = F.gaussian_stats(feats)
    np.testing.assert_allclose(mu, feats.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(feats.astype(np.float64), rowvar=False), rtol=1e-10, atol=1e-13)
    with pytest.raises(ValueError, match="N >= 2"):
        F.gaussian_stats(feats[:1])


# ---- statistics-only references --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def refs(tmp_path_factory, inception_weights):
    """One folder of images, its full reference and its statistics-only reference."""
    root = tmp_path_factory.mktemp("refs")
    folder = root / "images"
    write_pngs(folder, smooth_images(12, 40, seed=4))
    full, only = root / "full.npz", root / "stats.npz"
    common = ["--inception-weights", str(inception_weights), "--cache", str(root / "cache"), "--quiet"]
    assert main(["reference", "build", str(folder), "--out", str(full), *common]) == 0
    assert main(["reference", "build", str(folder), "--out", str(only), "--stats-only", *common]) == 0
    return {"folder": folder, "full": full, "stats": only, "root": root, "w": str(inception_weights)}


def test_statistics_only_reference_equals_the_full_one(refs):
    full, only = np.load(refs["full"]), np.load(refs["stats"])
    assert _rel(only["mu"], full["mu"]) < 1e-10 and _rel(only["sigma"], full["sigma"]) < 1e-10
    assert "features" in full and "features" not in only
    meta = json.loads(str(only["k3eval_reference"]))
    assert meta["stats_only"] is True and meta["n"] == 12


def test_statistics_only_reference_refuses_kid(refs, tmp_path, capsys):
    from metrics_helpers import make_run

    run = make_run(tmp_path / "run", n_prompts=3, samples=1)
    assert main(["score", str(run), "--reference", str(refs["stats"]), "--metrics", "fid", "--inception-weights",
                 refs["w"], "--quiet"]) == 0
    capsys.readouterr()
    assert main(["score", str(run), "--reference", str(refs["stats"]), "--metrics", "kid", "--inception-weights",
                 refs["w"], "--quiet"]) == 2
    assert "statistics only" in capsys.readouterr().err
    assert main(["reference", "build", str(refs["folder"]), "--out", str(tmp_path / "x.npz"), "--stats-only",
                 "--metrics", "fid,kid", "--inception-weights", refs["w"], "--quiet"]) == 2
    assert "--stats-only" in capsys.readouterr().err and not (tmp_path / "x.npz").exists()


def test_a_folder_reference_for_fid_gives_the_npz_reference_value(refs, tmp_path):
    """With a folder as the reference and FID alone, only running statistics of the reference are kept; the FID is
    the one computed against the reference file built from the same folder."""
    from metrics_helpers import make_run

    from k3eval.metrics.score import ScoreOptions, score_run

    run = make_run(tmp_path / "run", n_prompts=4, samples=1, seed=3)
    opts = dict(metrics=["fid"], inception_weights=refs["w"], cache=str(refs["root"] / "cache"))
    by_folder = score_run(run, ScoreOptions(reference=str(refs["folder"]), **opts))["metrics"]["fid"]["value"]
    by_file = score_run(run, ScoreOptions(reference=str(refs["full"]), **opts))["metrics"]["fid"]["value"]
    assert by_folder == pytest.approx(by_file, rel=1e-10)


# ---- worker processes ----------------------------------------------------------------------------------------------
class PidMean(ImageExtractor):
    """Mean colour and the id of the process that prepared the image (module level: it can be pickled)."""

    batch_size = 3

    @property
    def fingerprint(self):
        return {"extractor": "test pid mean"}

    def prepare(self, image):
        return np.array([*image.reshape(-1, 3).mean(0), os.getpid()], np.float64)

    def run(self, batch):
        return np.stack(batch)


def _values(jobs_of, paths, workers):
    jobs = jobs_of()
    readable, bad = run_jobs(jobs, paths, workers=workers)
    assert readable.all() and not bad
    return [job.sink.result() for job in jobs]


def test_images_are_prepared_in_worker_processes_with_the_same_values(tmp_path, monkeypatch, inception_weights,
                                                                      open_clip_checkpoint):
    """Decoding and preparing in worker processes gives the values of decoding in the main thread, to the last bit,
    for the Inception and the CLIP extractor (whose preprocessing comes from the loaded model through `setup`)."""
    from k3eval.metrics.extract import ClipImageExtractor, InceptionExtractor
    from k3eval.metrics.weights import resolve_inception_weights

    monkeypatch.setattr(extract, "PROCESS_MIN_IMAGES", 0)
    paths = write_pngs(tmp_path / "imgs", smooth_images(5, (70, 50), seed=6))
    keys = [str(i) for i in range(5)]

    def jobs_of():
        exts = [PidMean(), InceptionExtractor(resolve_inception_weights(str(inception_weights)), "tf", batch_size=2),
                ClipImageExtractor("open_clip", "synthetic", "synthetic", batch_size=2)]
        return [Job(e, FeatureCache(e.fingerprint, None), keys, sink=ArraySink(5)) for e in exts]

    inline = _values(jobs_of, paths, workers=0)
    spawned = _values(jobs_of, paths, workers=2)
    assert (inline[0][:, 3] == os.getpid()).all()
    assert not (spawned[0][:, 3] == os.getpid()).any()  # prepared elsewhere
    np.testing.assert_array_equal(spawned[0][:, :3], inline[0][:, :3])
    np.testing.assert_array_equal(spawned[1], inline[1])
    np.testing.assert_array_equal(spawned[2], inline[2])


def test_worker_processes_are_forked_and_need_nothing_pickled_but_the_inputs(tmp_path, monkeypatch):
    """A class defined inside a function (which pickle cannot find by name) is prepared in worker processes too:
    they are forked, so they inherit the extractor, and the script that started them is not imported again."""
    monkeypatch.setattr(extract, "PROCESS_MIN_IMAGES", 0)
    paths = write_pngs(tmp_path / "imgs", smooth_images(4, 16, seed=2))

    class Local(PidMean):
        pass

    (vals,) = _values(lambda: [Job(Local(), FeatureCache({"e": 1}, None), list("abcd"), sink=ArraySink(4))], paths, 2)
    assert not (vals[:, 3] == os.getpid()).any()
    monkeypatch.setattr(extract, "PROCESS_MIN_IMAGES", 64)  # few images: threads, no processes to start
    (few,) = _values(lambda: [Job(Local(), FeatureCache({"e": 1}, None), list("abcd"), sink=ArraySink(4))], paths, 2)
    assert (few[:, 3] == os.getpid()).all()


UNGUARDED_SCRIPT = """
import os, sys
from pathlib import Path
import numpy as np
from k3eval.metrics import extract
from k3eval.metrics.api import ImageExtractor
from k3eval.metrics.cache import FeatureCache
from k3eval.metrics.extract import ArraySink, Job, run_jobs

extract.PROCESS_MIN_IMAGES = 0


class Pid(ImageExtractor):
    fingerprint = {"extractor": "pid"}

    def prepare(self, image):
        return np.array([os.getpid()], np.float64)

    def run(self, batch):
        return np.stack(batch)


paths = sorted(Path(sys.argv[1]).glob("*.png"))
sink = ArraySink(len(paths))
run_jobs([Job(Pid(), FeatureCache({"e": 1}, None), [str(i) for i in range(len(paths))], sink=sink)], paths, workers=2)
print("workers", len(set(sink.result()[:, 0].tolist()) - {os.getpid()}))
"""


def test_a_script_without_a_main_guard_can_use_worker_processes(tmp_path):
    """Worker processes started by spawn or forkserver import the main script again, which re-runs a script that
    has no `if __name__ == "__main__"` guard and breaks the pool; forked workers do not."""
    import subprocess
    import sys

    write_pngs(tmp_path / "imgs", smooth_images(6, 16, seed=9))
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED_SCRIPT)
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "imgs")], capture_output=True, text=True,
                         timeout=600, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("workers")]
    assert len(lines) == 1 and int(lines[0].split()[1]) >= 1


# ---- shards, duplicates, unreadable images ---------------------------------------------------------------------------
class Failing(PidMean):
    """Mean colour; raises on the batch that contains image `fail_at` (module level, picklable)."""

    batch_size = 2
    fail_at = -1
    ran: list[int] = []

    def prepare(self, image):
        return image.reshape(-1, 3).mean(0)

    def run(self, batch):
        Failing.ran.append(len(batch))
        if any(int(x[0]) == self.fail_at for x in batch):
            raise RuntimeError("stopped")
        return np.stack(batch)


def test_shards_are_written_as_the_run_goes_and_kept_when_it_stops(tmp_path, monkeypatch):
    monkeypatch.setattr(extract, "SHARD_ROWS", 4)
    flat = [np.full((8, 8, 3), 10 * i, np.uint8) for i in range(9)]
    paths = write_pngs(tmp_path / "imgs", flat)
    keys = [f"k{i}" for i in range(9)]
    cache = FeatureCache({"extractor": "failing"}, tmp_path / "cache")
    ext = Failing()
    ext.fail_at = 60  # the 4th batch (images 6 and 7)
    with pytest.raises(RuntimeError, match="stopped"):
        run_jobs([Job(ext, cache, keys, sink=ArraySink(9))], paths, workers=0)
    assert cache.locate(keys).found.tolist() == [True] * 6 + [False] * 3  # a full shard, then the rest on the way out
    Failing.ran.clear()
    sink = ArraySink(9)
    readable, _ = run_jobs([Job(Failing(), cache, keys, sink=sink)], paths, workers=0)
    assert readable.all() and sum(Failing.ran) == 3
    np.testing.assert_array_equal(sink.result()[:, 0], np.arange(9) * 10)


def test_identical_images_are_computed_once_and_reported_together(tmp_path):
    imgs = smooth_images(3, 16, seed=5)
    paths = write_pngs(tmp_path / "imgs", [imgs[0], imgs[1], imgs[0], imgs[2]])
    keys = ["a", "b", "a", "c"]  # the same file content has the same key
    Failing.ran.clear()
    sink = ArraySink(4)
    readable, bad = run_jobs([Job(Failing(), FeatureCache({"e": 1}, None), keys, sink=sink)], paths, workers=0)
    assert readable.all() and not bad and sum(Failing.ran) == 3
    np.testing.assert_array_equal(sink.result()[0], sink.result()[2])
    for i in (0, 2):
        paths[i].write_bytes(b"broken")
    readable, bad = run_jobs([Job(Failing(), FeatureCache({"e": 1}, None), keys, sink=ArraySink(4))], paths,
                             skip_bad=True, workers=0)
    assert readable.tolist() == [False, True, False, True]
    assert sorted(str(e.path) for e in bad) == [str(paths[0]), str(paths[2])]


def test_an_unreadable_image_stays_out_of_every_sink(tmp_path):
    """An image whose features one job has cached but another must compute, and which no longer decodes, reaches no
    sink: running statistics cannot take a value back, so cached values are read only after decoding."""
    paths = write_pngs(tmp_path / "imgs", smooth_images(4, 16, seed=7))
    keys = [f"k{i}" for i in range(4)]
    cached = FeatureCache({"extractor": "cached"}, tmp_path / "cache")
    cached.put(keys, np.random.default_rng(0).standard_normal((4, 3)))
    paths[1].write_bytes(b"broken")
    stats = StatsSink(3)
    jobs = [Job(Failing(), cached, keys, sink=stats), Job(Failing(), FeatureCache({"e": 2}, None), keys,
                                                           sink=ArraySink(4))]
    readable, bad = run_jobs(jobs, paths, skip_bad=True, workers=0)
    assert readable.tolist() == [True, False, True, True] and [str(e.path) for e in bad] == [str(paths[1])]
    assert stats.stats.n == 3
    with pytest.raises(UserError, match="1 missing or unreadable"):
        run_jobs(jobs[1:], paths, workers=0)


def test_set_metrics_hold_a_block_of_their_kernels_at_a_time(monkeypatch):
    """CMMD's kernel matrices are summed a block of rows at a time (three N x N float64 matrices would be 21 GB at
    30,000 images); IS and KID convert one split or subset at a time. The values are those of the whole matrices."""
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((37, 8)), rng.standard_normal((29, 8)) + 0.3
    whole = F.cmmd(x, y)
    monkeypatch.setattr(F, "KERNEL_BLOCK", 5)
    assert F.cmmd(x, y) == pytest.approx(whole, rel=1e-12) and abs(whole) > 1e-3
    logits = rng.standard_normal((23, 11)).astype(np.float32)
    import torch

    def reference_is(lg, splits, seed):  # the whole-matrix computation, split with torch.chunk
        lg = torch.from_numpy(lg.astype(np.float64))[torch.from_numpy(np.random.RandomState(seed).permutation(23))]
        p, logp = torch.softmax(lg, 1), torch.log_softmax(lg, 1)
        return [float(torch.exp((a * (b - torch.log(a.mean(0, keepdim=True)))).sum(1).mean()))
                for a, b in zip(p.chunk(splits), logp.chunk(splits))]

    for splits in (4, 5, 6):
        scores = reference_is(logits, splits, 7)
        got = F.inception_score(logits, splits, 7)
        assert got.mean == pytest.approx(np.mean(scores), rel=1e-12) and got.std == pytest.approx(np.std(scores))
