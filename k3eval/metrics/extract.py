"""The extractors of the built-in metrics (Inception, CLIP image and text) and the driver that runs extractors.

An extractor (interface: `k3eval.metrics.api`) turns images or prompts into one float32 array each and has a
fingerprint: everything its output depends on (network, weights and their sha256, resize protocol and library,
dtype). `run_jobs` drives any number of image and image-text extractors over one list of images through the feature
cache, streaming: only what is not cached is decoded, each image once for all extractors that need it, in worker
processes while the networks run in the main process; each value goes to the job's sink (an array in item order, or
running statistics) and to the cache, a shard at a time. Memory is bounded by the batch size and the number of
workers (plus the values the sinks keep), not by the number of images; a network is loaded only when something is
missing, so rescoring an unchanged run loads no model.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import pickle
import sys
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from k3eval.metrics.api import ImageExtractor, ImageTextExtractor, TextExtractor
from k3eval.metrics.cache import SHARD_ROWS, FeatureCache, Located, Sink
from k3eval.metrics.inception import LOGITS_DIM, POOL_DIM
from k3eval.metrics.options import PROTOCOLS, check_dtype, check_protocol
from k3eval.metrics.preprocess import BadImageError, bad_images_error, inception_input_hwc, load_rgb8
from k3eval.metrics.weights import WeightsInfo, load_inception_state

#: fewer images to decode than this: decoding threads (starting worker processes would cost more than it saves)
PROCESS_MIN_IMAGES = 64


def default_workers() -> int:
    """Decoding workers when none are asked for: one per CPU core, at most 4 (beyond that the network, not decoding,
    bounds the speed on a CPU, and each worker costs memory)."""
    return max(1, min(4, os.cpu_count() or 1))


@dataclass
class ImageItem:
    """One image to featurise: its cache key (sha256 of the file) and where it is."""

    key: str
    path: Path


@dataclass
class Extracted:
    """Features of the items that could be read, in item order, and the items that could not."""

    keys: list[str]
    feats: np.ndarray
    bad: list[BadImageError] = field(default_factory=list)


@dataclass
class Job:
    """One extractor over a list of images: the cache key of each image (its sha256, or `pair_key` for image-text
    extractors), for image-text extractors the text of each image, and where the values go (`sink`; None: only make
    sure they are in the cache, as the torchrun ranks do)."""

    extractor: ImageExtractor | ImageTextExtractor
    cache: FeatureCache
    keys: list[str]
    texts: list[str] | None = None
    sink: Sink | None = None


class ArraySink:
    """Collects one value per item, in item order: an N x ... float32 array while every value has the same shape,
    else a list of arrays (ragged values such as detections)."""

    def __init__(self, n: int):
        self.n = n
        self.array: np.ndarray | None = None
        self.items: list[np.ndarray | None] | None = None

    def add(self, idx: np.ndarray, values: np.ndarray | list[np.ndarray]) -> None:
        if self.items is None and isinstance(values, np.ndarray):
            if self.array is None:
                self.array = np.empty((self.n, *values.shape[1:]), np.float32)
            if self.array.shape[1:] == values.shape[1:]:
                self.array[idx] = values
                return
        if self.items is None:
            self.items = [None] * self.n if self.array is None else list(self.array)
            self.array = None
        for i, v in zip(np.asarray(idx).tolist(), values):
            self.items[i] = np.asarray(v, np.float32)

    def result(self, keep: np.ndarray | None = None) -> np.ndarray | list[np.ndarray]:
        """The values of the items marked in `keep` (all by default), in item order: one array when every value has
        the same shape, else the list."""
        if self.items is None:
            if self.array is None:
                return np.zeros((0, 0), np.float32)
            return self.array if keep is None or keep.all() else self.array[keep]
        vals = [v for v, k in zip(self.items, np.ones(self.n, bool) if keep is None else keep) if k]
        return stack(vals)


class StatsSink:
    """Running mean and covariance (float64) of the first `dim` columns of each value, without keeping the values:
    statistics-only references of any size."""

    def __init__(self, dim: int = POOL_DIM):
        from k3eval.metrics.functional import RunningGaussian

        self.dim = dim
        self.stats = RunningGaussian()

    def add(self, idx: np.ndarray, values: np.ndarray | list[np.ndarray]) -> None:
        self.stats.update(np.asarray(values)[:, :self.dim])


def _pil_version() -> str:
    import PIL

    return PIL.__version__


class InceptionExtractor(ImageExtractor):
    """TF-ported Inception-v3: pool3 (2048) and unbiased logits (1008) per image, concatenated."""

    dim = POOL_DIM + LOGITS_DIM
    def __init__(self, weights: WeightsInfo, protocol: str = "clean", device: str = "cpu", batch_size: int = 32,
                 dtype: str = "float32"):
        self.weights = weights
        self.protocol = check_protocol(protocol)
        self.dtype = check_dtype(dtype)
        self.device = device
        self.batch_size = batch_size
        self._net = None

    @property
    def fingerprint(self) -> dict[str, Any]:
        resize_lib = f"Pillow {_pil_version()}" if self.protocol == "clean" else f"numpy {np.__version__}"
        return {"extractor": "inception-v3-compat", "features": "pool3 (2048) + logits_unbiased (1008)",
                **self.weights.fingerprint(), "protocol": self.protocol, "resize": PROTOCOLS[self.protocol],
                "resize_library": resize_lib, "input": "8-bit RGB", "dtype": self.dtype}

    def _load(self):
        if self._net is None:
            import torch

            from k3eval.metrics.inception import InceptionV3Compat

            net = InceptionV3Compat()
            net.load_state_dict(load_inception_state(self.weights))
            dt = torch.float64 if self.dtype == "float64" else torch.float32
            # channels_last halves CPU time of the convolutions; the results agree to float32 rounding.
            self._net = net.to(self.device, dt).eval().to(memory_format=torch.channels_last)
        return self._net

    def prepare(self, image: np.ndarray) -> np.ndarray:
        return inception_input_hwc(image, self.protocol)

    def run(self, batch: list) -> np.ndarray:
        import torch

        net = self._load()
        # N x 299 x 299 x 3 seen as N x 3 x 299 x 299: the channels-last layout, without a copy
        x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).to(self.device, next(net.parameters()).dtype)
        with torch.inference_mode():
            pool, logits = net(x)
        return torch.cat([pool, logits], 1).float().cpu().numpy()


class ClipImageExtractor(ImageExtractor):
    """CLIP image embeddings (raw, not normalised) of one model; the model is loaded on first need. Its image
    preprocessing (resize, crop, normalise, as the model was loaded with) runs in the decoding workers."""

    def __init__(self, backend: str, model: str, pretrained: str, device: str = "cpu", batch_size: int = 32):
        from k3eval.metrics.clip import resolve_clip

        self.backend = backend
        self.model, self.source, fp = resolve_clip(backend, model, pretrained)
        self._fp = {**fp, "features": "image embedding"}
        self.device = device
        self.batch_size = batch_size
        self._enc = None
        self._tok = None
        self._preprocess = None

    @property
    def fingerprint(self) -> dict[str, Any]:
        return self._fp

    def encoder(self):
        if self._enc is None:
            from k3eval.metrics.clip import load_clip

            self._enc = load_clip(self.backend, self.model, self.source, self.device)
        return self._enc

    def setup(self) -> None:
        # The transform comes with the model (open_clip builds both together); the workers inherit it.
        self._preprocess = self.encoder().preprocess

    def prepare(self, image: np.ndarray):
        from k3eval.metrics.clip import clip_pixels

        return clip_pixels(self.backend, self._preprocess, image)

    def run(self, batch: list) -> np.ndarray:
        return self.encoder().encode_pixels(batch)

    def text_extractor(self) -> ClipTextExtractor:
        return ClipTextExtractor(self)

    def truncated(self, texts: list[str]) -> list[bool]:
        from k3eval.metrics.clip import load_tokenizer, truncated_flags

        if self._tok is None:
            self._tok = load_tokenizer(self.backend, self.model, self.source)
        tok, ctx = self._tok
        return truncated_flags(self.backend, tok, ctx, texts)


class ClipTextExtractor(TextExtractor):
    """Text embeddings of the same CLIP, keyed by the sha256 of the prompt text."""

    def __init__(self, images: ClipImageExtractor):
        self.images = images
        self.batch_size = images.batch_size

    @property
    def fingerprint(self) -> dict[str, Any]:
        return {**self.images.fingerprint, "features": "text embedding, truncated keeping end-of-text"}

    def run(self, batch: list[str]) -> np.ndarray:
        return self.images.encoder().encode_texts(batch)


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def pair_key(image_key: str, text: str) -> str:
    """Cache key of an (image, text) input: both digests hashed together."""
    return hashlib.sha256(f"{image_key}\n{text_key(text)}".encode()).hexdigest()


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled or total == 0, leave=False)


def _check_outputs(extractor, out, n: int) -> None:
    if len(out) != n:
        raise RuntimeError(f"{type(extractor).__name__}.run returned {len(out)} outputs for a batch of {n}")


def stack(values: list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    """One N x ... array when every value has the same shape, else the list itself."""
    if values and len({v.shape for v in values}) == 1:
        return np.stack(values)
    return values


# ---- decoding workers ----------------------------------------------------------------------------------------------
_WORKER_EXTRACTORS: list = []


def _prepare(extractors: list, path: Path, wanted: list[tuple[int, str | None]]):
    """Decode one image and prepare it for each (extractor index, text) in `wanted` (text None: an image extractor).
    Returns (prepared inputs, None), or (None, the reason it cannot be decoded)."""
    try:
        image = load_rgb8(path)
    except BadImageError as e:
        return None, e.reason
    prepared = [(s, extractors[s].prepare(image) if t is None else extractors[s].prepare(image, t)) for s, t in wanted]
    return prepared, None


def _init_worker(extractors: list) -> None:
    global _WORKER_EXTRACTORS
    _WORKER_EXTRACTORS = extractors
    torch = sys.modules.get("torch")
    if torch is not None:
        # One core per worker, and no OpenMP pool inherited from the parent (using it after fork can hang).
        torch.set_num_threads(1)


def _prepare_in_worker(path: Path, wanted: list[tuple[int, str | None]]) -> bytes:
    # Plain pickle (not multiprocessing's, which moves torch tensors through shared-memory file descriptors).
    return pickle.dumps(_prepare(_WORKER_EXTRACTORS, path, wanted), protocol=pickle.HIGHEST_PROTOCOL)


class _Decoder:
    """Runs `_prepare` for one image at a time: in `workers` processes forked from this one (as torch's DataLoader
    does: they inherit the extractors, nothing is pickled but what `prepare` returns, and no script is imported
    again), in threads where forking is not available or there are too few images to pay for the processes, or in
    the calling thread with `workers=0`."""

    def __init__(self, extractors: list, workers: int, n_images: int):
        self.extractors = extractors
        self.pool = None
        self.processes = False
        if workers <= 0:
            return
        if n_images >= PROCESS_MIN_IMAGES and sys.platform.startswith("linux") \
                and not multiprocessing.current_process().daemon:
            self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                            initializer=_init_worker, initargs=(extractors,))
            self.processes = True
        else:
            self.pool = ThreadPoolExecutor(max_workers=workers)  # PIL, numpy and torch release the GIL

    def submit(self, path: Path, wanted: list[tuple[int, str | None]]) -> Future:
        if self.processes:
            return self.pool.submit(_prepare_in_worker, path, wanted)
        if self.pool is not None:
            return self.pool.submit(_prepare, self.extractors, path, wanted)
        done: Future = Future()
        done.set_result(_prepare(self.extractors, path, wanted))
        return done

    def result(self, future: Future):
        out = future.result()
        return pickle.loads(out) if self.processes else out

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


# ---- the driver ----------------------------------------------------------------------------------------------------
def _shared_items(loc: Located, distinct: np.ndarray) -> dict[int, np.ndarray]:
    """For the distinct keys in `distinct` that several items share: key index -> all those items."""
    counts = np.bincount(loc.inverse, minlength=len(loc.unique))
    multi = distinct[counts[distinct] > 1]
    if not len(multi):
        return {}
    order = np.argsort(loc.inverse, kind="stable")
    sorted_inv = loc.inverse[order]
    lo, hi = np.searchsorted(sorted_inv, multi), np.searchsorted(sorted_inv, multi, side="right")
    return {int(u): order[a:b] for u, a, b in zip(multi, lo, hi)}


def _expand(items: np.ndarray, loc: Located, shared: dict[int, np.ndarray], out):
    """Values computed for representative `items` -> (every item with the same key, their values)."""
    if not shared:
        return items, out
    groups = [shared.get(int(u), np.array([i])) for i, u in zip(items, loc.inverse[items])]
    take = np.repeat(np.arange(len(items)), [len(g) for g in groups])
    idx = np.concatenate(groups)
    return idx, (out[take] if isinstance(out, np.ndarray) else [out[t] for t in take])


class _CacheWriter:
    """Buffers computed values of one cache and writes a shard every SHARD_ROWS of them."""

    def __init__(self, cache: FeatureCache):
        self.cache = cache
        self.keys: list[str] = []
        self.values: list = []

    def add(self, keys: list[str], out) -> None:
        if not self.cache.enabled:
            return
        self.keys += keys
        self.values.append(out)
        if len(self.keys) >= SHARD_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.keys:
            return
        if all(isinstance(v, np.ndarray) for v in self.values) and len({v.shape[1:] for v in self.values}) == 1:
            values = np.concatenate(self.values)
        else:
            values = [row for v in self.values for row in v]
        self.cache.put(self.keys, values)
        self.keys, self.values = [], []


def run_jobs(jobs: Sequence[Job], paths: Sequence[Path], skip_bad: bool = False, progress: bool = False,
             workers: int | None = None, desc: str = "features") -> tuple[np.ndarray, list[BadImageError]]:
    """Values of every job for every image in `paths`, from the cache where present, else computed and cached;
    each job's values go to its sink (positions in `paths` and values).

    Each image that some job lacks is decoded once, in `workers` processes (default `default_workers()`), and
    prepared there for every job that lacks it, while the main process runs each job's network on batches of its
    `batch_size`; at most about two batches of prepared inputs are in flight. New values are written to the cache
    every SHARD_ROWS (also when the run stops early); cached ones are then read shard by shard straight into the
    sinks. Returns which images every job has a value for, and the images that could not be decoded; those raise a
    UserError naming them unless `skip_bad` (what was computed is cached first). Images identical to an
    undecodable one (same key) are reported with it.
    """
    n = len(paths)
    workers = default_workers() if workers is None else workers
    locs = [job.cache.locate(job.keys) for job in jobs]
    delivered = [np.zeros(n, dtype=bool) for _ in jobs]
    wanted: dict[int, list[int]] = {}
    shared: list[dict[int, np.ndarray]] = []
    for j, loc in enumerate(locs):
        missing = np.flatnonzero(loc.shard < 0)
        for i in loc.first[missing].tolist():
            wanted.setdefault(i, []).append(j)
        shared.append(_shared_items(loc, missing))
    bad: list[BadImageError] = []
    failed = np.zeros(n, dtype=bool)
    if wanted:
        _compute(jobs, paths, locs, wanted, shared, delivered, bad, failed, workers, progress, desc)
    if bad and not skip_bad:
        raise bad_images_error(bad)
    for job, loc, got in zip(jobs, locs, delivered):
        cached = loc.found & ~failed
        if job.sink is not None and cached.any():
            job.cache.read(loc, cached, job.sink)
        got |= cached
    return np.logical_and.reduce(delivered) if jobs else np.ones(n, dtype=bool), bad


def _compute(jobs, paths, locs, wanted, shared, delivered, bad, failed, workers, progress, desc) -> None:
    """Decode the images of `wanted` (image -> jobs that lack it) and run the jobs on them; see `run_jobs`."""
    active = sorted({j for js in wanted.values() for j in js})
    for j in active:
        jobs[j].extractor.setup()
    writers = [_CacheWriter(job.cache) for job in jobs]
    batches: list[list[tuple[int, Any]]] = [[] for _ in jobs]
    bar = _progress(len(wanted), desc, progress)
    decoder = _Decoder([job.extractor if j in active else None for j, job in enumerate(jobs)], workers, len(wanted))

    def flush(j: int) -> None:
        if not batches[j]:
            return
        job = jobs[j]
        items = np.array([i for i, _ in batches[j]])
        out = job.extractor.run([x for _, x in batches[j]])
        batches[j].clear()
        _check_outputs(job.extractor, out, len(items))
        if not isinstance(out, np.ndarray):
            out = [np.asarray(v, np.float32) for v in out]
        writers[j].add([job.keys[i] for i in items], out)
        idx, values = _expand(items, locs[j], shared[j], out)
        delivered[j][idx] = True
        if job.sink is not None:
            job.sink.add(idx, values)

    def take(i: int, result) -> None:
        prepared, reason = result
        bar.update(1)
        if prepared is None:
            same = {i}
            for j in wanted[i]:
                same.update(shared[j].get(int(locs[j].inverse[i]), np.array([], int)).tolist())
            bad.extend(BadImageError(paths[k], reason) for k in sorted(same) if not failed[k])
            failed[sorted(same)] = True
            return
        for j, x in prepared:
            batches[j].append((i, x))
            if len(batches[j]) >= jobs[j].extractor.batch_size:
                flush(j)

    window = 2 * max(jobs[j].extractor.batch_size for j in active)
    try:
        in_flight: deque = deque()
        for i in sorted(wanted):
            js = wanted[i]
            in_flight.append((i, decoder.submit(paths[i], [(j, None if jobs[j].texts is None else jobs[j].texts[i])
                                                           for j in js])))
            if len(in_flight) >= window:
                k, fut = in_flight.popleft()
                take(k, decoder.result(fut))
        while in_flight:
            k, fut = in_flight.popleft()
            take(k, decoder.result(fut))
        for j in active:
            flush(j)
    finally:
        decoder.close()
        bar.close()
        for w in writers:
            w.flush()  # what was computed stays cached, also when the run stops early


def extract_images(extractor: ImageExtractor, items: Sequence[ImageItem], cache: FeatureCache, skip_bad: bool = False,
                   progress: bool = False, workers: int | None = None, desc: str = "features") -> Extracted:
    """Features of `items` in order for one image extractor (`run_jobs` with one job); unreadable images raise a
    UserError naming them unless `skip_bad` (then they are left out and listed in `bad`)."""
    keys = [it.key for it in items]
    sink = ArraySink(len(items))
    readable, bad = run_jobs([Job(extractor, cache, keys, sink=sink)], [it.path for it in items], skip_bad, progress,
                             workers, desc)
    return Extracted([k for k, ok in zip(keys, readable) if ok], sink.result(readable), bad)


def extract_texts(extractor: TextExtractor, texts: Sequence[str], cache: FeatureCache) -> np.ndarray | list:
    """Text features of `texts` in order, cached by the sha256 of each text; each distinct text is computed once."""
    keys = [text_key(t) for t in texts]
    loc = cache.locate(keys)
    sink = ArraySink(len(texts))
    missing = np.flatnonzero(loc.shard < 0)
    shared = _shared_items(loc, missing)
    writer = _CacheWriter(cache)
    try:
        todo = loc.first[missing]
        for s in range(0, len(todo), extractor.batch_size):
            items = todo[s:s + extractor.batch_size]
            out = extractor.run([texts[i] for i in items])
            _check_outputs(extractor, out, len(items))
            if not isinstance(out, np.ndarray):
                out = [np.asarray(v, np.float32) for v in out]
            writer.add([keys[i] for i in items], out)
            sink.add(*_expand(items, loc, shared, out))
    finally:
        writer.flush()
    if loc.found.any():
        cache.read(loc, loc.found, sink)
    return sink.result()
