"""Feature cache: one float32 array per (extractor fingerprint, key): the key is an image's sha256, a prompt's, or
both hashed together for image-text extractors.

Layout: `<root>/<fingerprint key>/fingerprint.json` and shard files `<uuid>.npz` (uncompressed; keys: an array of
key strings, and either `feats`: N x ... float32 when every value has the same shape, or flat float32 values with
`offsets` (N + 1) and `shapes` (N x ndim) when they differ, e.g. a variable number of detections per image).

Memory does not grow with the size of the cache or of the run: a lookup reads only the key arrays of the shards
(`locate`), values are read one shard at a time straight into the caller's output (`read`), and an extraction writes
a shard every `SHARD_ROWS` new values (`put`), so a long first run keeps what it computed if it is stopped. Every
shard is written atomically under a new name, so concurrent writers (torchrun ranks, two runs scored at once) never
touch the same file. Small shards (one per scoring call that computed a few values) are merged, a shard's worth at a
time, once there are more than `MAX_SHARDS` of them. A changed image has a new sha256 and a changed protocol a new
fingerprint key, so only what changed is recomputed.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from k3eval.errors import UserError
from k3eval.utils import atomic_write_bytes, atomic_write_json, cache_dir

#: values per shard written by an extraction (2048 Inception values: 25 MB), also the unit of merging
SHARD_ROWS = 2048
#: shards of fewer than SHARD_ROWS // 2 values tolerated in one fingerprint folder before they are merged
MAX_SHARDS = 32
# A shard removed by a concurrent merge is looked for again (in the merged shard) this many times.
_READ_ATTEMPTS = 3


def fingerprint_key(fingerprint: dict[str, Any]) -> str:
    """A short stable key of a fingerprint (sha256 of its canonical JSON, 24 hex digits)."""
    blob = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


def default_root() -> Path:
    return cache_dir() / "features"


class Sink(Protocol):
    """Where values go: `add(idx, values)` receives the values of the items at positions `idx` (an N x ... array or
    a list of N arrays)."""

    def add(self, idx: np.ndarray, values: np.ndarray | list[np.ndarray]) -> None: ...


@dataclass
class Located:
    """Where the values of a list of keys are stored. Per distinct key (`unique`, sorted): the index of its shard in
    `shards` and its row there, -1 when not cached; `inverse` maps each item of the list to its distinct key."""

    unique: np.ndarray
    inverse: np.ndarray
    first: np.ndarray  # per distinct key, the first item that has it
    shard: np.ndarray
    row: np.ndarray
    shards: list[Path]

    @property
    def found(self) -> np.ndarray:
        """Per item: whether its value is cached."""
        return self.shard[self.inverse] >= 0


def _corrupt(path: Path, err: Exception) -> UserError:
    return UserError(f"feature cache file {path} is unreadable ({type(err).__name__}: {err}); delete it (its values "
                     "are then recomputed)")


class FeatureCache:
    """Features of one extractor fingerprint. `root=None` disables caching (nothing is found, nothing written)."""

    def __init__(self, fingerprint: dict[str, Any], root: str | Path | None):
        self.fingerprint = fingerprint
        self.key = fingerprint_key(fingerprint)
        self.folder = Path(root) / self.key if root is not None else None

    @property
    def enabled(self) -> bool:
        return self.folder is not None

    def _listing(self) -> list[Path]:
        if self.folder is None or not self.folder.exists():
            return []
        return sorted(self.folder.glob("*.npz"))

    def locate(self, keys: Sequence[str]) -> Located:
        """Where the value of each key is (reads the key arrays of the shards only, never their values)."""
        arr = np.asarray(keys, dtype=str) if len(keys) else np.zeros(0, dtype="<U1")
        unique, first, inverse = np.unique(arr, return_index=True, return_inverse=True)
        loc = Located(unique, inverse.reshape(-1), first, np.full(len(unique), -1, np.int64),
                      np.full(len(unique), -1, np.int64), [])
        self._scan(loc, np.ones(len(unique), dtype=bool))
        return loc

    def _scan(self, loc: Located, todo: np.ndarray) -> None:
        """Fill `loc.shard`/`loc.row` for the distinct keys marked in `todo` from every shard not yet seen; shards
        that appear meanwhile (a concurrent merge) are scanned too."""
        seen = set(loc.shards)
        while len(loc.unique):
            new = [p for p in self._listing() if p not in seen]
            if not new:
                return
            for path in new:
                seen.add(path)
                try:
                    with np.load(path, allow_pickle=False) as z:
                        skeys = z["keys"]
                except FileNotFoundError:
                    continue  # merged away since the listing: its values are in a newer shard
                except (OSError, ValueError, KeyError) as e:
                    raise _corrupt(path, e) from None
                pos = np.searchsorted(loc.unique, skeys)
                hit = pos < len(loc.unique)
                hit[hit] = loc.unique[pos[hit]] == skeys[hit]
                rows = np.flatnonzero(hit)
                u = pos[rows]
                take = todo[u] & (loc.shard[u] < 0)
                loc.shards.append(path)
                loc.shard[u[take]] = len(loc.shards) - 1
                loc.row[u[take]] = rows[take]

    def read(self, loc: Located, items: np.ndarray, sink: Sink) -> None:
        """Hand `sink` the cached values of the items marked in `items` (all cached), one shard at a time."""
        pending = items.copy()
        for _ in range(_READ_ATTEMPTS):
            shard_of_item = np.where(pending, loc.shard[loc.inverse], -1)
            if np.any(pending & (shard_of_item < 0)):
                break
            missing: list[int] = []
            for si in np.unique(shard_of_item[shard_of_item >= 0]):
                idx = np.flatnonzero(shard_of_item == si)
                rows = loc.row[loc.inverse[idx]]
                try:
                    values = _read_rows(loc.shards[si], rows)
                except FileNotFoundError:
                    missing.append(int(si))
                    continue
                sink.add(idx, values)
                pending[idx] = False
            if not missing:
                return
            gone = np.isin(loc.shard, missing)  # merged away after `locate`: look for those keys again
            loc.shard[gone] = -1
            loc.row[gone] = -1
            self._scan(loc, gone)
        raise UserError(f"the feature cache {self.folder} changed while it was read (shards removed); run again")

    def put(self, keys: Sequence[str], values: np.ndarray | Sequence[np.ndarray]) -> None:
        """Store values (an N x ... array, or N arrays of any shapes) as one new shard; merge small shards when there
        are many."""
        if self.folder is None or not len(keys):
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        if not (self.folder / "fingerprint.json").exists():
            atomic_write_json(self.folder / "fingerprint.json", self.fingerprint)
        self._write_shard(list(keys), values)
        self._merge_small()

    def _write_shard(self, keys: list[str], values: np.ndarray | Sequence[np.ndarray]) -> None:
        arrays: dict[str, np.ndarray] = {"keys": np.asarray(keys, dtype=str)}
        if isinstance(values, np.ndarray):
            arrays["feats"] = np.asarray(values, np.float32)
        else:
            vals = [np.asarray(v, np.float32) for v in values]
            if len({v.shape for v in vals}) == 1:
                arrays["feats"] = np.stack(vals)
            else:
                if len({v.ndim for v in vals}) != 1:
                    raise ValueError(f"{self.fingerprint.get('extractor')}: cached values must have the same number "
                                     "of dimensions")
                arrays.update(flat=np.concatenate([v.ravel() for v in vals]),
                              offsets=np.cumsum([0] + [v.size for v in vals]).astype(np.int64),
                              shapes=np.array([v.shape for v in vals], dtype=np.int64).reshape(len(vals), -1))
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(self.folder / f"{uuid.uuid4().hex}.npz", buf.getbuffer())

    def _merge_small(self) -> None:
        """Merge the shards of fewer than SHARD_ROWS // 2 values into full ones once there are more than MAX_SHARDS
        of them, holding at most about two shards of values at a time. One process merges at a time (others skip);
        the merged shard is written before its sources are removed, so a reader always finds every value."""
        small: list[Path] = []
        for path in self._listing():
            try:
                with np.load(path, allow_pickle=False) as z:
                    if len(z["keys"]) < SHARD_ROWS // 2:
                        small.append(path)
            except (OSError, ValueError, KeyError):
                continue  # removed meanwhile (or unreadable: reported by the next lookup)
        if len(small) <= MAX_SHARDS:
            return
        with open(self.folder / ".merge.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            keys: list[np.ndarray] = []
            values: list[np.ndarray] = []
            done: list[Path] = []
            for path in small:
                try:
                    with np.load(path, allow_pickle=False) as z:
                        k = z["keys"]
                        v = _shard_values(z, np.arange(len(k)))
                except (OSError, ValueError, KeyError):
                    continue
                keys.append(k)
                values.extend(v)
                done.append(path)
                if sum(map(len, keys)) >= SHARD_ROWS:
                    self._write_shard(list(np.concatenate(keys)), values)
                    keys, values = [], []
            if keys:
                self._write_shard(list(np.concatenate(keys)), values)
            for path in done:
                path.unlink(missing_ok=True)


def _read_rows(path: Path, rows: np.ndarray) -> np.ndarray | list[np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return _shard_values(z, rows)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError) as e:
        raise _corrupt(path, e) from None


def _shard_values(z, rows: np.ndarray) -> np.ndarray | list[np.ndarray]:
    """The values of `rows` of one shard: an array when the shard has one shape, else a list (see the module
    docstring for the two layouts)."""
    if "feats" in z:
        return z["feats"][rows]
    flat, offsets, shapes = z["flat"], z["offsets"], z["shapes"]
    return [flat[offsets[r]:offsets[r + 1]].reshape(shapes[r]) for r in rows]
