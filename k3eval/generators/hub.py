"""Where weights come from: a revision on every hub load, the commit it resolved to, and how to fetch what is missing.

Every catalog entry names a revision for each hub repository it loads (`main` where the authors publish no commit to
pin); `--set revision=...` (and `<part>_revision=...` for a second repository) overrides it. After loading, each
generator records every repository it actually read with the commit the revision resolved to in the local Hugging
Face cache, so `run.json` traces a result to the exact weights even when a branch moves later.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

DEFAULT_REVISION = "main"
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def is_local(source: str) -> bool:
    """A path on this machine (not a hub id)."""
    return Path(str(source)).expanduser().exists()


def download_hint(repo: str, files: tuple[str, ...] = (), revision: str | None = None,
                  include: str | None = None) -> str:
    """The command that puts `files` (or `include`) of `repo` into the Hugging Face cache.

    `hf` is huggingface_hub's command since 0.34; 1.0 removed the older `huggingface-cli`, which older releases still
    need (same arguments)."""
    parts = ["hf download", repo, *files]
    if revision and revision != DEFAULT_REVISION:
        parts += ["--revision", revision]
    if include:
        parts += ["--include", f"'{include}'"]
    return f"`{' '.join(parts)}` (`huggingface-cli download` before huggingface_hub 0.34)"


def resolved_commit(repo: str, filename: str, revision: str | None) -> str | None:
    """The commit `revision` of `repo` resolved to, read from the cache entry of `filename` (a file the load read):
    the cache keeps each file under `snapshots/<commit>/`. None when the file is not in the cache."""
    from huggingface_hub import try_to_load_from_cache

    try:
        path = try_to_load_from_cache(repo, filename, revision=revision or DEFAULT_REVISION)
    except ValueError:  # a malformed repo id or revision: nothing cached under it
        return None
    if not isinstance(path, str):
        return None
    parts = Path(path).parts
    if "snapshots" in parts:
        commit = parts[parts.index("snapshots") + 1]
        return commit if _COMMIT.match(commit) else None
    return None


def source_record(role: str, source: str, revision: str | None, probe: str) -> dict[str, Any]:
    """What run.json records for one loaded component: a local path as it is, a hub repository with the revision asked
    for and the commit it resolved to (`probe` is a file of the repository that the load read)."""
    if is_local(source):
        return {"role": role, "source": str(Path(source).expanduser().resolve()), "local": True}
    return {"role": role, "source": source, "revision": revision or DEFAULT_REVISION,
            "commit": resolved_commit(source, probe, revision)}
