"""Fixtures of the metrics tests: synthetic weights built once per session, small image folders and run folders."""

from __future__ import annotations

from pathlib import Path

import pytest
from metrics_helpers import smooth_images, write_pngs


@pytest.fixture(scope="session")
def inception_weights(k3eval_cache) -> Path:
    from k3eval.metrics.weights import synthetic_inception_path

    return synthetic_inception_path()


@pytest.fixture(scope="session")
def open_clip_checkpoint(k3eval_cache) -> Path:
    from k3eval.metrics.clip import synthetic_open_clip_checkpoint

    return synthetic_open_clip_checkpoint()


@pytest.fixture(scope="session")
def hf_clip_folder(k3eval_cache) -> Path:
    from k3eval.metrics.clip import synthetic_transformers_clip

    return synthetic_transformers_clip()


@pytest.fixture(scope="session")
def image_sets(tmp_path_factory) -> tuple[Path, Path]:
    """Two folders of 6 PNGs (64x64 and 80x56, different seeds) for the agreement tests."""
    root = tmp_path_factory.mktemp("images")
    a, b = root / "a", root / "b"
    write_pngs(a, smooth_images(6, 64, seed=1))
    write_pngs(b, smooth_images(6, (80, 56), seed=2))
    return a, b
