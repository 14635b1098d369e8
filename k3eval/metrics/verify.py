"""Every image a score counts is checked first: it exists, and its cache key is the sha256 of the file as it is now.

The feature cache is keyed by that sha256, so a replaced or truncated image gets new features (or fails to decode)
instead of its old ones. Hashing every file of a large run on every rescoring would dominate it, so the sha256 of
each file is recorded with its size and modification time (`<cache root>/files/<folder key>.json`) and a file is
hashed again only when one of those has changed. Without a cache (`--cache none`) every file is hashed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from k3eval.metrics.cache import fingerprint_key
from k3eval.metrics.preprocess import BadImageError
from k3eval.utils import atomic_write_json, sha256_file


class FileHashes:
    """sha256 of the files under one folder, recomputed only when a file's size or mtime changed."""

    def __init__(self, folder: str | Path, cache_root: str | Path | None):
        self.folder = Path(folder).resolve()
        key = fingerprint_key({"folder": str(self.folder)})
        self.store = Path(cache_root) / "files" / f"{key}.json" if cache_root is not None else None
        self._records: dict[str, list] = {}
        self._changed = False
        if self.store is not None and self.store.exists():
            try:
                self._records = json.loads(self.store.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                self._records = {}  # rebuilt by hashing again

    def digest(self, path: str | Path) -> str:
        """The file's sha256; BadImageError when it is missing or cannot be read."""
        p = Path(path)
        rel = os.path.relpath(p, self.folder)
        try:
            st = p.stat()
        except FileNotFoundError:
            raise BadImageError(p, "file not found") from None
        except OSError as e:
            raise BadImageError(p, f"cannot read ({e.strerror})") from None
        rec = self._records.get(rel)
        if rec is not None and rec[0] == st.st_size and rec[1] == st.st_mtime_ns:
            return rec[2]
        try:
            sha = sha256_file(p)
        except OSError as e:
            raise BadImageError(p, f"cannot read ({e.strerror})") from None
        self._records[rel] = [st.st_size, st.st_mtime_ns, sha]
        self._changed = True
        return sha

    def save(self) -> None:
        if self.store is not None and self._changed:
            atomic_write_json(self.store, self._records)
            self._changed = False


@dataclass
class Verified:
    """Per image: its sha256 now (None when missing or unreadable); the failures; the images whose sha256 differs
    from the one recorded when they were made."""

    keys: list[str | None]
    bad: list[BadImageError] = field(default_factory=list)
    changed: list[Path] = field(default_factory=list)


def verify_images(folder: str | Path, paths: Sequence[Path], recorded: Sequence[str | None] | None = None,
                  cache_root: str | Path | None = None, workers: int = 4) -> Verified:
    """Hash (or look up, when size and mtime are unchanged) every file of `paths`, which lie under `folder`."""
    hashes = FileHashes(folder, cache_root)

    def one(p: Path):
        try:
            return hashes.digest(p), None
        except BadImageError as e:
            return None, e

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # hashlib releases the GIL on large buffers
        results = list(pool.map(one, paths))
    hashes.save()
    out = Verified([k for k, _ in results], [e for _, e in results if e is not None])
    if recorded is not None:
        out.changed = [p for p, (k, _), r in zip(paths, results, recorded)
                       if k is not None and isinstance(r, str) and len(r) == 64 and r != k]
    return out
