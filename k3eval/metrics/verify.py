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

    def lookup(self, path: Path) -> tuple[str | None, tuple[int, int] | None]:
        """(the recorded sha256 when size and mtime are unchanged, else None; (size, mtime_ns) to record after
        hashing). BadImageError when the file is missing or cannot be read."""
        try:
            st = path.stat()
        except FileNotFoundError:
            raise BadImageError(path, "file not found") from None
        except OSError as e:
            raise BadImageError(path, f"cannot read ({e.strerror})") from None
        rec = self._records.get(os.path.relpath(path, self.folder))
        if rec is not None and rec[0] == st.st_size and rec[1] == st.st_mtime_ns:
            return rec[2], None
        return None, (st.st_size, st.st_mtime_ns)

    def hash(self, path: Path, stat: tuple[int, int]) -> str:
        """Hash the file and record it with the size and mtime it had before hashing."""
        try:
            sha = sha256_file(path)
        except OSError as e:
            raise BadImageError(path, f"cannot read ({e.strerror})") from None
        self._records[os.path.relpath(path, self.folder)] = [*stat, sha]
        self._changed = True
        return sha

    def digest(self, path: Path) -> str:
        """The file's sha256: the recorded one when its size and mtime are unchanged, else hashed now."""
        sha, stat = self.lookup(path)
        return sha if sha is not None else self.hash(path, stat)

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
    """Hash (or look up, when size and mtime are unchanged) every file of `paths`, which lie under `folder`. Files
    are only stat'ed here; the ones to hash are hashed in `workers` threads."""
    hashes = FileHashes(folder, cache_root)
    keys: list[str | None] = [None] * len(paths)
    errors: list[BadImageError | None] = [None] * len(paths)
    todo: list[tuple[int, tuple[int, int]]] = []
    for i, p in enumerate(paths):
        try:
            keys[i], stat = hashes.lookup(Path(p))
        except BadImageError as e:
            errors[i] = e
            continue
        if keys[i] is None:
            todo.append((i, stat))

    def one(item):
        i, stat = item
        try:
            keys[i] = hashes.hash(Path(paths[i]), stat)
        except BadImageError as e:
            errors[i] = e

    if todo:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # hashlib releases the GIL on large buffers
            list(pool.map(one, todo))
    hashes.save()
    out = Verified(keys, [e for e in errors if e is not None])
    if recorded is not None:
        out.changed = [p for p, k, r in zip(paths, keys, recorded)
                       if k is not None and isinstance(r, str) and len(r) == 64 and r != k]
    return out
