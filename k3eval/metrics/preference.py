"""What the learned preference and alignment metrics share (PickScore, HPS v2.1, ImageReward, LAION aesthetic,
VQAScore: one module each): their `weights` setting, the rule that every image must have its prompt, the count of
prompts cut to the text encoder's limit, and the protocol they store.

Weights: a hub id or a local path (`--set NAME.weights=PATH`), found through the Hugging Face cache
(`k3eval.metrics.hub`); `synthetic` builds the same architecture, small, with seeded random weights in the real
file format and loads it through the same code (tests and the demo; every number then says so).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from k3eval.errors import UserError
from k3eval.metrics.api import TextExtractor
from k3eval.metrics.weights import SYNTHETIC

if TYPE_CHECKING:
    import pandas as pd


class WeightsSettings(BaseModel):
    """`weights`: a hub id, a local file or folder, or `synthetic`; None means the authors' published weights."""

    model_config = ConfigDict(extra="forbid")
    weights: str | None = None

    @property
    def synthetic(self) -> bool:
        return self.weights == SYNTHETIC


def required_prompt(row: dict[str, Any]) -> str:
    """The prompt of a manifest row; a UserError when it has none, because these metrics score an image *against*
    its prompt (the Need text of every metric that reads prompts)."""
    text = row.get("prompt")
    if text is None or (isinstance(text, float) and text != text) or not str(text).strip():
        raise UserError(f"image {row.get('path', '')} (prompt_id {row.get('prompt_id')!r}) has no prompt text: "
                        "pickscore, hpsv21, imagereward and vqascore score an image against its prompt, so every image "
                        "needs one (import the images with their prompts, see `k3eval import --mapping`); aesthetic, "
                        "fid, kid, is and cmmd need none")
    return str(text)


def truncation_note(n_truncated: int, limit: int, kept: str) -> list[str]:
    """The warning stored when prompts were longer than the text encoder takes."""
    if not n_truncated:
        return []
    return [f"{n_truncated} prompt(s) longer than the text encoder's {limit} tokens were truncated ({kept})"]


class TokenCounts(TextExtractor):
    """How many tokens each prompt has under a metric's tokenizer (`owner.token_counts(texts)`), cached by the
    prompt's sha256 like any text feature, so that rescoring counts truncated prompts without loading a tokenizer."""

    def __init__(self, owner: Any):
        self.owner = owner
        self.batch_size = 256

    @property
    def fingerprint(self) -> dict[str, Any]:
        return {**self.owner.fingerprint, "extractor": f"token count ({self.owner.fingerprint['extractor']})"}

    def run(self, batch: list[str]) -> np.ndarray:
        return np.asarray(self.owner.token_counts(batch), np.float32)[:, None]


def count_long(rows: pd.DataFrame, counts: np.ndarray, limit: int) -> int:
    """How many distinct prompts of the scored rows have more than `limit` tokens (`counts`: one row per image)."""
    long = np.asarray(counts).reshape(len(rows), -1)[:, 0] > limit
    return int(rows.loc[long, "prompt"].astype(str).nunique())


def weights_label(spec: str | None, default: str) -> str:
    """How the weights are named in a fingerprint: the hub id, `synthetic`, or a local path's file name."""
    from pathlib import Path

    if spec is None:
        return default
    if spec == SYNTHETIC:
        return SYNTHETIC
    p = Path(spec).expanduser()
    return p.name if p.exists() else spec


def package_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"
