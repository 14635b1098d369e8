"""A fake Hugging Face cache for the generator tests: real hub ids resolve, offline, to tiny local folders, so the
loading code of the real catalog entries (revision, commit recording, error messages) runs without a download."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


class FakeHub:
    """Repositories laid out as huggingface_hub's cache does: `models--ORG--NAME/snapshots/<commit>/...` plus
    `refs/<branch>` holding the commit a branch points to."""

    def __init__(self, root: Path):
        self.root = root

    def add(self, repo: str, files: dict[str, Path], commit: str, branch: str = "main",
            missing: tuple[str, ...] = ()) -> None:
        """Put `files` (path in the repo -> local file or folder) into `repo` at `commit`, which `branch` names.
        `missing` lists files the repository does not have, marked as huggingface_hub marks a 404 seen online (so an
        offline load knows they are absent, not merely uncached)."""
        folder = self.root / f"models--{repo.replace('/', '--')}"
        for name in missing:
            marker = folder / ".no_exist" / commit / name
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        snapshot = folder / "snapshots" / commit
        for name, src in files.items():
            dst = snapshot / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".complete"), dirs_exist_ok=True)
            else:
                shutil.copy2(src, dst)
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / branch).write_text(commit)


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """huggingface_hub reads its cache folder and offline switch from `constants` at call time; point both here."""
    import huggingface_hub.constants as constants

    root = tmp_path / "hf-cache"
    root.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return FakeHub(root)
