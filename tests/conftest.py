"""Shared test set-up: an isolated k3eval cache per test session (tiny models are built once per session)."""

from __future__ import annotations

import os

# Before any test module imports torch: see the note on OMP_WAIT_POLICY in k3eval/__init__.py.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def k3eval_cache(tmp_path_factory):
    """Point $K3EVAL_CACHE at a per-session folder so tests never touch ~/.cache and never download."""
    old = os.environ.get("K3EVAL_CACHE")
    path = tmp_path_factory.mktemp("k3eval-cache")
    os.environ["K3EVAL_CACHE"] = str(path)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    yield path
    if old is None:
        os.environ.pop("K3EVAL_CACHE", None)
    else:
        os.environ["K3EVAL_CACHE"] = old


def in_ci() -> bool:
    """With CI=true a missing browser or database is a failure, not a skip."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")
