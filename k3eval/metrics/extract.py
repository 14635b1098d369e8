"""Feature extractors with their fingerprints, and cached extraction over many images or prompts.

An extractor turns images (or prompts) into one float32 vector each and has a fingerprint: everything its output
depends on (network, weights and their sha256, resize protocol and library, dtype). Extraction goes through the
feature cache: only images whose (sha256, fingerprint) is not cached are decoded and run through the network, and
the network is loaded only when something is missing, so rescoring an unchanged run loads no model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from k3eval.errors import UserError
from k3eval.metrics.cache import FeatureCache
from k3eval.metrics.inception import LOGITS_DIM, POOL_DIM
from k3eval.metrics.preprocess import PROTOCOLS, BadImageError, check_protocol, inception_input, load_rgb8
from k3eval.metrics.weights import WeightsInfo, load_inception_state

DTYPES = ("float32", "float64")


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
    computed: int = 0
    cached: int = 0


def _pil_version() -> str:
    import PIL

    return PIL.__version__


class InceptionExtractor:
    """TF-ported Inception-v3: pool3 (2048) and unbiased logits (1008) per image, concatenated."""

    dim = POOL_DIM + LOGITS_DIM

    def __init__(self, weights: WeightsInfo, protocol: str = "clean", device: str = "cpu", batch_size: int = 32,
                 dtype: str = "float32"):
        self.weights = weights
        self.protocol = check_protocol(protocol)
        if dtype not in DTYPES:
            raise UserError(f"--dtype: unknown value {dtype!r}; accepted: {', '.join(DTYPES)}")
        self.dtype = dtype
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


class ClipImageExtractor:
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

    def prepare(self, image: np.ndarray):
        return image

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


class ClipTextExtractor:
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


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled or total == 0, leave=False)


def extract_images(extractor, items: Sequence[ImageItem], cache: FeatureCache, skip_bad: bool = False,
                   progress: bool = False, workers: int = 2, desc: str = "features") -> Extracted:
    """Features of `items` in order, from the cache where present, else decoded and computed (then cached).

    Unreadable images raise a UserError naming them, unless `skip_bad` (then they are left out and listed in
    `bad`). Decoding and resizing run in `workers` threads (PIL releases the GIL) while the network runs.
    """
    keys = [it.key for it in items]
    have = cache.get(keys)
    todo: dict[str, ImageItem] = {}
    for it in items:
        if it.key not in have and it.key not in todo:
            todo[it.key] = it
    bad: list[BadImageError] = []
    new: dict[str, np.ndarray] = {}
    if todo:
        pending = list(todo.values())

        def prep(it: ImageItem):
            try:
                return it.key, extractor.prepare(load_rgb8(it.path)), None
            except BadImageError as e:
                return it.key, None, e

        bar = _progress(len(pending), desc, progress)
        batch_keys: list[str] = []
        batch: list = []

        def flush():
            if batch:
                out = extractor.run(batch)
                new.update(zip(batch_keys, out))
                bar.update(len(batch))
                batch_keys.clear()
                batch.clear()

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for key, x, err in pool.map(prep, pending):
                if err is not None:
                    bad.append(err)
                    continue
                batch_keys.append(key)
                batch.append(x)
                if len(batch) >= extractor.batch_size:
                    flush()
            flush()
        bar.close()
        if bad and not skip_bad:
            names = "; ".join(f"{e.path} ({e.reason})" for e in bad[:5])
            more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
            raise UserError(f"{len(bad)} unreadable image(s): {names}{more}. Fix or regenerate them, or pass "
                            "--skip-bad to leave them out (they are then listed in the summary)")
        cache.put(new)
    bad_keys = {todo_key for todo_key, it in todo.items() if any(e.path == it.path for e in bad)}
    out_keys = [k for k in keys if k not in bad_keys]
    allf = {**have, **new}
    feats = np.stack([allf[k] for k in out_keys]) if out_keys else np.zeros((0, 0), np.float32)
    return Extracted(out_keys, feats, bad, computed=len(new), cached=len(set(keys) & set(have)))


def extract_texts(extractor: ClipTextExtractor, texts: Sequence[str], cache: FeatureCache) -> np.ndarray:
    """Text embeddings of `texts` in order, cached by the sha256 of each text."""
    keys = [text_key(t) for t in texts]
    have = cache.get(keys)
    todo = list(dict.fromkeys(t for t, k in zip(texts, keys) if k not in have))
    new: dict[str, np.ndarray] = {}
    for i in range(0, len(todo), extractor.batch_size):
        chunk = todo[i:i + extractor.batch_size]
        new.update(zip((text_key(t) for t in chunk), extractor.run(chunk)))
    cache.put(new)
    allf = {**have, **new}
    return np.stack([allf[k] for k in keys]) if keys else np.zeros((0, 0), np.float32)
