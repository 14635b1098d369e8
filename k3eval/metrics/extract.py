"""The extractors of the built-in metrics (Inception, CLIP image and text) and the driver that runs extractors.

An extractor (interface: `k3eval.metrics.api`) turns images or prompts into one float32 array each and has a
fingerprint: everything its output depends on (network, weights and their sha256, resize protocol and library,
dtype). `run_jobs` drives any number of image and image-text extractors over one list of images through the feature
cache: only what is not cached is decoded, each image once for all extractors that need it, in bounded batches,
and a network is loaded only when something is missing, so rescoring an unchanged run loads no model.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from k3eval.metrics.api import ImageExtractor, ImageTextExtractor, TextExtractor
from k3eval.metrics.cache import FeatureCache
from k3eval.metrics.inception import LOGITS_DIM, POOL_DIM
from k3eval.metrics.options import PROTOCOLS, check_dtype, check_protocol
from k3eval.metrics.preprocess import BadImageError, bad_images_error, inception_input, load_rgb8
from k3eval.metrics.weights import WeightsInfo, load_inception_state


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
    extractors) and, for image-text extractors, the text of each image."""

    extractor: ImageExtractor | ImageTextExtractor
    cache: FeatureCache
    keys: list[str]
    texts: list[str] | None = None


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
        import torch

        resize_lib = f"Pillow {_pil_version()}" if self.protocol == "clean" else f"torch {torch.__version__}"
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

    def prepare(self, image: np.ndarray):
        return inception_input(image, self.protocol)

    def run(self, batch: list) -> np.ndarray:
        import torch

        net = self._load()
        x = torch.stack(batch).to(self.device, next(net.parameters()).dtype)
        with torch.inference_mode():
            pool, logits = net(x.contiguous(memory_format=torch.channels_last))
        return torch.cat([pool, logits], 1).float().cpu().numpy()


class ClipImageExtractor(ImageExtractor):
    """CLIP image embeddings (raw, not normalised) of one model; the model is loaded on first need."""

    def __init__(self, backend: str, model: str, pretrained: str, device: str = "cpu", batch_size: int = 32):
        from k3eval.metrics.clip import resolve_clip

        self.backend = backend
        self.model, self.source, fp = resolve_clip(backend, model, pretrained)
        self._fp = {**fp, "features": "image embedding"}
        self.device = device
        self.batch_size = batch_size
        self._enc = None
        self._tok = None

    @property
    def fingerprint(self) -> dict[str, Any]:
        return self._fp

    def encoder(self):
        if self._enc is None:
            from k3eval.metrics.clip import load_clip

            self._enc = load_clip(self.backend, self.model, self.source, self.device)
        return self._enc

    def run(self, batch: list) -> np.ndarray:
        return self.encoder().encode_images(batch)

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


def run_jobs(jobs: Sequence[Job], paths: Sequence[Path], skip_bad: bool = False, progress: bool = False,
             workers: int = 2, desc: str = "features") -> tuple[list[dict[str, np.ndarray]], list[BadImageError]]:
    """Values of every job for every image in `paths`, from the cache where present, else computed and cached.

    Each image that some job lacks is decoded once, in `workers` threads (PIL releases the GIL) while the networks
    run, and prepared for every job that lacks it; each job runs on batches of its own `batch_size`. At most about
    two batches of prepared inputs are in flight, so memory does not grow with the number of images. Returns, per
    job, key -> value for every readable image, and the images that could not be decoded; those raise a UserError
    naming them unless `skip_bad` (the values computed so far are cached first).
    """
    have = [job.cache.get(job.keys) for job in jobs]
    wanted: dict[int, list[int]] = {}
    for j, job in enumerate(jobs):
        seen: set[str] = set()
        for i, key in enumerate(job.keys):
            if key not in have[j] and key not in seen:
                seen.add(key)
                wanted.setdefault(i, []).append(j)
    new: list[dict[str, np.ndarray]] = [{} for _ in jobs]
    bad: list[BadImageError] = []
    if wanted:
        batches: list[list[tuple[str, object]]] = [[] for _ in jobs]
        bar = _progress(len(wanted), desc, progress)

        def prep(i: int):
            try:
                image = load_rgb8(paths[i])
            except BadImageError as e:
                return i, None, e
            out = []
            for j in wanted[i]:
                job = jobs[j]
                x = job.extractor.prepare(image, job.texts[i]) if job.texts is not None \
                    else job.extractor.prepare(image)
                out.append((j, x))
            return i, out, None

        def flush(j: int) -> None:
            if batches[j]:
                keys = [k for k, _ in batches[j]]
                out = jobs[j].extractor.run([x for _, x in batches[j]])
                _check_outputs(jobs[j].extractor, out, len(keys))
                new[j].update(zip(keys, out))
                batches[j].clear()

        def take(result) -> None:
            i, prepared, err = result
            bar.update(1)
            if err is not None:
                bad.append(err)
                return
            for j, x in prepared:
                batches[j].append((jobs[j].keys[i], x))
                if len(batches[j]) >= jobs[j].extractor.batch_size:
                    flush(j)

        window = 2 * max(job.extractor.batch_size for job in jobs)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            in_flight: deque = deque()
            for i in wanted:
                in_flight.append(pool.submit(prep, i))
                if len(in_flight) >= window:
                    take(in_flight.popleft().result())
            while in_flight:
                take(in_flight.popleft().result())
        for j in range(len(jobs)):
            flush(j)
        bar.close()
        for job, values in zip(jobs, new):
            job.cache.put(values)
        if bad and not skip_bad:
            raise bad_images_error(bad)
    return [{**h, **n} for h, n in zip(have, new)], bad


def stack(values: list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    """One N x ... array when every value has the same shape, else the list itself."""
    if values and len({v.shape for v in values}) == 1:
        return np.stack(values)
    return values


def extract_images(extractor: ImageExtractor, items: Sequence[ImageItem], cache: FeatureCache, skip_bad: bool = False,
                   progress: bool = False, workers: int = 2, desc: str = "features") -> Extracted:
    """Features of `items` in order for one image extractor (`run_jobs` with one job); unreadable images raise a
    UserError naming them unless `skip_bad` (then they are left out and listed in `bad`)."""
    keys = [it.key for it in items]
    (values,), bad = run_jobs([Job(extractor, cache, keys)], [it.path for it in items], skip_bad, progress, workers,
                              desc)
    out_keys = [k for k in keys if k in values]
    feats = np.stack([values[k] for k in out_keys]) if out_keys else np.zeros((0, 0), np.float32)
    return Extracted(out_keys, feats, bad)


def extract_texts(extractor: TextExtractor, texts: Sequence[str], cache: FeatureCache) -> np.ndarray:
    """Text features of `texts` in order, cached by the sha256 of each text."""
    keys = [text_key(t) for t in texts]
    have = cache.get(keys)
    todo = list(dict.fromkeys(t for t, k in zip(texts, keys) if k not in have))
    new: dict[str, np.ndarray] = {}
    for i in range(0, len(todo), extractor.batch_size):
        chunk = todo[i:i + extractor.batch_size]
        out = extractor.run(chunk)
        _check_outputs(extractor, out, len(chunk))
        new.update(zip((text_key(t) for t in chunk), out))
    cache.put(new)
    allf = {**have, **new}
    return stack([np.asarray(allf[k]) for k in keys]) if keys else np.zeros((0, 0), np.float32)
