"""Feature cache: one float32 array per (extractor fingerprint, key): the key is an image's sha256, a prompt's, or
both hashed together for image-text extractors.

Layout: `<root>/<fingerprint key>/fingerprint.json` and shard files `<uuid>.npz` (keys: an array of sha256 strings,
and either feats: N x D float32 when every value has the same shape, or flat float32 values with `offsets` (N + 1)
and `shapes` (N x ndim) when they differ, e.g. a variable number of detections per image). Each scoring call that
computed something writes one new shard atomically, so concurrent writers (torchrun ranks, two runs scored at once)
never touch the same file; many shards are merged on the next write. A changed image has a new sha256 and a changed
protocol a new fingerprint key, so only what changed is recomputed.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from k3eval.utils import atomic_write_bytes, atomic_write_json, cache_dir

MAX_SHARDS = 32


def fingerprint_key(fingerprint: dict[str, Any]) -> str:
    """A short stable key of a fingerprint (sha256 of its canonical JSON, 24 hex digits)."""
    blob = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


def default_root() -> Path:
    return cache_dir() / "features"


class FeatureCache:
    """Features of one extractor fingerprint. `root=None` disables caching (every lookup misses, nothing written)."""

    def __init__(self, fingerprint: dict[str, Any], root: str | Path | None):
        self.fingerprint = fingerprint
        self.key = fingerprint_key(fingerprint)
        self.folder = Path(root) / self.key if root is not None else None
        self._mem: dict[str, np.ndarray] | None = None

    def _load(self) -> dict[str, np.ndarray]:
        if self._mem is not None:
            return self._mem
        mem: dict[str, np.ndarray] = {}
        if self.folder is not None and self.folder.exists():
            for shard in sorted(self.folder.glob("*.npz")):
                try:
                    with np.load(shard, allow_pickle=False) as z:
                        mem.update(zip(map(str, z["keys"]), _shard_values(z)))
                except (OSError, ValueError, KeyError):
                    continue  # a shard from a crashed writer is never visible (atomic rename), but be safe
        self._mem = mem
        return mem

    def get(self, keys: list[str]) -> dict[str, np.ndarray]:
        """The cached features of those keys that are present."""
        mem = self._load()
        return {k: mem[k] for k in keys if k in mem}

    def put(self, feats: dict[str, np.ndarray]) -> None:
        """Store new features (one shard); merge shards when there are many."""
        if not feats:
            return
        mem = self._load()
        mem.update(feats)
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        if not (self.folder / "fingerprint.json").exists():
            atomic_write_json(self.folder / "fingerprint.json", self.fingerprint)
        shards = sorted(self.folder.glob("*.npz"))
        if len(shards) + 1 > MAX_SHARDS:
            self._write_shard(mem)
            for s in shards:
                s.unlink(missing_ok=True)
        else:
            self._write_shard(feats)

    def _write_shard(self, feats: dict[str, np.ndarray]) -> None:
        keys = list(feats)
        values = [np.asarray(feats[k], np.float32) for k in keys]
        buf = io.BytesIO()
        if len({v.shape for v in values}) == 1:
            np.savez(buf, keys=np.array(keys), feats=np.stack(values))
        else:
            if len({v.ndim for v in values}) != 1:
                raise ValueError(f"{self.fingerprint.get('extractor')}: cached values must have the same number of "
                                 "dimensions")
            offsets = np.cumsum([0] + [v.size for v in values]).astype(np.int64)
            np.savez(buf, keys=np.array(keys), flat=np.concatenate([v.ravel() for v in values]), offsets=offsets,
                     shapes=np.array([v.shape for v in values], dtype=np.int64))
        atomic_write_bytes(self.folder / f"{uuid.uuid4().hex}.npz", buf.getvalue())


def _shard_values(z) -> list[np.ndarray]:
    """The values of one shard, in key order (see the module docstring for the two layouts)."""
    if "feats" in z:
        return list(z["feats"])
    flat, offsets, shapes = z["flat"], z["offsets"], z["shapes"]
    return [flat[offsets[i]:offsets[i + 1]].reshape(shapes[i]) for i in range(len(shapes))]
