"""LAION aesthetic predictor v2 ("improved aesthetic predictor", C. Schuhmann): a head on CLIP ViT-L/14 image
embeddings trained to predict the 1-10 aesthetic rating of SAC, LAION-Logos and AVA.

Scoring rule of the authors (`christophschuhmann/improved-aesthetic-predictor`, `simple_inference.py`): the image
embedding of OpenAI CLIP ViT-L/14 (`clip.load("ViT-L/14")` and its preprocessing: bicubic resize of the short side
to 224, centre crop, CLIP mean/std), divided by its L2 norm (a zero norm left as is), then the head `MLP(768)` of
`sac+logos+ava1-l14-linearMSE.pth`: Linear 768-1024, Dropout, Linear 1024-128, Dropout, Linear 128-64, Dropout,
Linear 64-16, Linear 16-1, with no activations (the ReLUs are commented out) and dropouts inactive at inference.
The output is the predicted rating on the 1-10 scale, not clipped (most images land between 4 and 7).

The embeddings are the open_clip `ViT-L-14` / `openai` image embeddings CLIP score uses by default (same weights and
preprocessing as OpenAI's `clip` package), so when both are scored they are extracted once. The authors ran CLIP in
float16 on a GPU (`clip.load` on CUDA); here it runs in float32, which moves scores in about the fourth digit.
The head file's sha256 is compared with the published file's (from the authors' repository).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from k3eval.errors import UserError
from k3eval.metrics.api import MetricResult, Need, PerImageMetric, ScoreContext, ScoreData, weights_warning
from k3eval.metrics.clip_metrics import clip_image_need
from k3eval.metrics.preference import WeightsSettings
from k3eval.metrics.weights import SYNTHETIC, SYNTHETIC_VERSION, weights_dir

HEAD_FILE = "sac+logos+ava1-l14-linearMSE.pth"
HEAD_URL = ("https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/"
            "sac%2Blogos%2Bava1-l14-linearMSE.pth")
# sha256 of the file as committed in the authors' repository (git blob 7c0d8aa2, 3,714,759 bytes)
OFFICIAL_SHA256 = "21dd590f3ccdc646f0d53120778b296013b096a035a2718c9cb0d511bff0f1e0"
LAYERS = (0, 2, 4, 6, 7)  # the Linear layers of the head's nn.Sequential (dropouts in between)
WIDTHS = (1024, 128, 64, 16, 1)


class AestheticSettings(WeightsSettings):
    """`weights`: the head file (default: the authors' sac+logos+ava1-l14-linearMSE.pth) or `synthetic`;
    `clip_model` / `clip_pretrained`: the open_clip CLIP whose image embeddings it reads (default ViT-L-14 / openai;
    with `weights: synthetic`, the synthetic CLIP)."""

    clip_model: str = "ViT-L-14"
    clip_pretrained: str | None = None


def synthetic_head(dim: int, seed: int = 0) -> Path:
    """A seeded head of the authors' layout (`layers.{0,2,4,6,7}`) for `dim`-dimensional embeddings, its output
    centred near 5.5 so that demo numbers look like ratings."""
    import io

    import torch

    from k3eval.utils import atomic_write_bytes, file_lock

    path = weights_dir() / f"synthetic-aesthetic-{SYNTHETIC_VERSION}-d{dim}-seed{seed}.pth"
    if path.exists():
        return path
    with file_lock(weights_dir() / ".aesthetic.lock"):
        if not path.exists():
            gen = torch.Generator().manual_seed(seed)
            state, fan_in = {}, dim
            for i, width in zip(LAYERS, WIDTHS):
                # unit gain per layer on unit-norm inputs (x sqrt(dim)), so outputs spread by about 1
                gain = dim ** 0.5 if i == 0 else 1.0
                state[f"layers.{i}.weight"] = torch.randn(width, fan_in, generator=gen) * gain / fan_in ** 0.5
                state[f"layers.{i}.bias"] = torch.full((width,), 5.5 if width == 1 else 0.0)
                fan_in = width
            buf = io.BytesIO()
            torch.save(state, buf)
            atomic_write_bytes(path, buf.getvalue())
    return path


def load_head(path: Path, dim: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight, bias) of each Linear layer, checked against the layout and the embedding size."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and runtime errors all mean "not a checkpoint"
        raise UserError(f"--set aesthetic.weights: {path} is not a readable torch checkpoint ({e})") from None
    want = {f"layers.{i}.{p}" for i in LAYERS for p in ("weight", "bias")}
    if not isinstance(state, dict) or set(state) != want:
        got = sorted(state)[:4] if isinstance(state, dict) else type(state).__name__
        raise UserError(f"--set aesthetic.weights: {path} is not an aesthetic predictor head (keys "
                        f"layers.{{0,2,4,6,7}}.weight/bias expected, got {got})")
    layers = [(state[f"layers.{i}.weight"].double().numpy(), state[f"layers.{i}.bias"].double().numpy())
              for i in LAYERS]
    if layers[0][0].shape[1] != dim:
        raise UserError(f"--set aesthetic.weights: {path} takes {layers[0][0].shape[1]}-dimensional CLIP embeddings, "
                        f"but the CLIP it reads gives {dim} (the head belongs to another CLIP: set "
                        "aesthetic.clip_model / clip_pretrained to the one it was trained on)")
    return layers


def predict(embeddings: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """The head on L2-normalised embeddings (a zero norm left as is, as the authors' `normalized` does)."""
    x = np.asarray(embeddings, np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norm == 0, 1.0, norm)
    for w, b in layers:
        x = x @ w.T + b
    return x[:, 0]


class Aesthetic(PerImageMetric):
    name = "aesthetic"
    display_name = "LAION aesthetic"
    higher_is_better = True
    unit = "1-10"
    Settings = AestheticSettings

    def _clip(self) -> tuple[str, str]:
        s = self.settings
        return s.clip_model, s.clip_pretrained or (SYNTHETIC if s.synthetic else "openai")

    def needs(self, ctx: ScoreContext) -> dict[str, Need]:
        model, pretrained = self._clip()
        return {"image": clip_image_need(ctx, "open_clip", model, pretrained, "CLIP features")}

    def _head_file(self, dim: int) -> Path:
        from k3eval.metrics.hub import local_file, url_file

        w = self.settings.weights
        if w == SYNTHETIC:
            return synthetic_head(dim)
        if w is None:
            return url_file(HEAD_URL, HEAD_FILE, "--set aesthetic.weights")
        return local_file(w, "--set aesthetic.weights", f"{HEAD_FILE} (from {HEAD_URL})")

    def per_image_scores(self, data: ScoreData) -> tuple[np.ndarray, MetricResult]:
        from k3eval.metrics.hub import file_sha256

        emb = np.asarray(data["image"])
        path = self._head_file(emb.shape[1])
        layers = load_head(path, emb.shape[1])
        scores = predict(emb, layers)
        sha = file_sha256(path)
        clip = data.extractors["image"].fingerprint
        head = {"head": path.name if self.settings.weights != SYNTHETIC else SYNTHETIC, "head_sha256": sha,
                "standard_head": sha == OFFICIAL_SHA256, "synthetic_head": self.settings.synthetic}
        proto = {**clip, **head, "synthetic_weights": bool(clip.get("synthetic_weights") or self.settings.synthetic),
                 "formula": "MLP head (no activations) on the L2-normalised CLIP image embedding",
                 "scale": "predicted 1-10 rating, not clipped", "n": data.n, "seed": data.opts.seed}
        warn = weights_warning(clip, "LAION aesthetic (its CLIP)")
        if self.settings.synthetic:
            warn += weights_warning({"synthetic_weights": True}, "LAION aesthetic (its head)")
        elif sha != OFFICIAL_SHA256:
            warn.append(f"LAION aesthetic computed with a head file other than the published {HEAD_FILE} (sha256 "
                        f"{sha[:12]}...): not comparable with numbers from the official head")
        return scores, MetricResult(proto, warnings=warn)
