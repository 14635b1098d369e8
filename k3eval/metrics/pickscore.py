"""PickScore v1 (Kirstain et al., 2023): a CLIP-H fine-tuned on Pick-a-Pic preferences.

Scoring rule of the authors (`yuvalkirstain/PickScore`, README "Inference"): the model `yuvalkirstain/PickScore_v1`
(transformers `AutoModel`, a `CLIPModel`), the processor of `laion/CLIP-ViT-H-14-laion2B-s32B-b79K`; text tokenized
with `padding=True, truncation=True, max_length=77` (truncation keeps the end-of-text token CLIP reads the text
embedding at); image and text embeddings from `get_image_features` / `get_text_features`, each divided by its L2
norm; score = `logit_scale.exp()` x their dot product (about 18-23 for real images with the released weights).

The images go through the processor's PIL backend (`CLIPImageProcessorPil`: PIL bicubic resize of the short side to
224, centre crop, OpenAI mean/std), which is what the processor did in the transformers 4.x the authors used;
transformers 5 defaults to a torchvision backend whose resize differs in the last digits.

Image and text embeddings are separate extractors (raw, unnormalised embeddings), so each prompt is embedded once
and both are cached; the logit scale is read from the weights file when the score is computed.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from k3eval.metrics.api import (
    ImageExtractor,
    MetricResult,
    Need,
    PerImageMetric,
    ScoreContext,
    ScoreData,
    TextExtractor,
    weights_warning,
)
from k3eval.metrics.preference import (
    TokenCounts,
    WeightsSettings,
    count_long,
    package_version,
    required_prompt,
    truncation_note,
    weights_label,
)
from k3eval.metrics.weights import SYNTHETIC

MODEL_ID = "yuvalkirstain/PickScore_v1"
PROCESSOR_ID = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
MAX_TOKENS = 77


class PickScoreSettings(WeightsSettings):
    """`weights`: the model (hub id or save_pretrained folder; default PickScore_v1); `processor`: the processor
    (default the LAION CLIP-H one the authors use); both `synthetic` for the seeded test model."""

    processor: str | None = None


def logit_scale_of(folder: Path) -> float:
    """exp(logit_scale) of a CLIPModel folder, read from its weights file without loading the model."""
    from k3eval.metrics.hub import weight_files

    for f in weight_files(folder):
        if f.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(f), framework="pt") as st:
                if "logit_scale" in st.keys():
                    return float(st.get_tensor("logit_scale").float().exp())
        else:
            import torch

            state = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
            if "logit_scale" in state:
                return float(state["logit_scale"].float().exp())
    raise ValueError(f"{folder}: no logit_scale in the weights (not a CLIPModel?)")


class PickScoreImages(ImageExtractor):
    """PickScore image embeddings (raw)."""

    def __init__(self, weights: str | None, processor: str | None, device: str = "cpu", batch_size: int = 32):
        from k3eval.metrics.hub import folder_sha256, hub_folder

        synthetic = weights == SYNTHETIC or processor == SYNTHETIC
        if synthetic:
            from k3eval.metrics.clip import synthetic_transformers_clip

            self.model_dir = self.processor_dir = synthetic_transformers_clip()
        else:
            self.model_dir = hub_folder(weights or MODEL_ID, "--set pickscore.weights")
            self.processor_dir = hub_folder(processor or PROCESSOR_ID, "--set pickscore.processor", weights=False)
        self.device = device
        self.batch_size = batch_size
        self._fp = {"extractor": "PickScore image embedding", "model": weights_label(weights, MODEL_ID),
                    "sha256": folder_sha256(self.model_dir),
                    "processor": SYNTHETIC if synthetic else weights_label(processor, PROCESSOR_ID),
                    "processor_sha256": folder_sha256(self.processor_dir, weights=False),
                    "resize": "CLIPImageProcessorPil (PIL bicubic short side, centre crop)", "dtype": "float32",
                    "synthetic_weights": synthetic, "transformers": package_version("transformers")}
        self._model = self._images = self._tokenizer = None
        self._lock = threading.Lock()

    @property
    def fingerprint(self) -> dict[str, Any]:
        return self._fp

    def setup(self) -> None:
        # loaded once here, in the main process: the forked decoding workers inherit it instead of each loading it
        self.image_processor()

    def image_processor(self):
        # prepare() can run in several decoding threads: they must not race through transformers' lazy imports
        with self._lock:
            if self._images is None:
                from transformers import AutoImageProcessor

                self._images = AutoImageProcessor.from_pretrained(self.processor_dir, backend="pil")
        return self._images

    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.processor_dir)
        return self._tokenizer

    def model(self):
        if self._model is None:
            from transformers import AutoModel

            self._model = AutoModel.from_pretrained(self.model_dir).to(self.device).eval()
        return self._model

    def prepare(self, image: np.ndarray):
        from PIL import Image

        return self.image_processor()(images=Image.fromarray(image), return_tensors="np")["pixel_values"][0]

    def run(self, batch: list) -> np.ndarray:
        import torch

        from k3eval.metrics.clip import _features

        model = self.model()
        with torch.inference_mode():
            x = torch.from_numpy(np.stack(batch)).to(self.device)
            return _features(model.get_image_features(pixel_values=x)).float().cpu().numpy()

    def token_counts(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer()(texts)["input_ids"]]

    def logit_scale(self) -> float:
        return logit_scale_of(self.model_dir)


class PickScoreTexts(TextExtractor):
    """PickScore text embeddings (raw), tokenized as the authors do (truncated to 77 tokens, end-of-text kept)."""

    def __init__(self, images: PickScoreImages):
        self.images = images
        self.batch_size = images.batch_size

    @property
    def fingerprint(self) -> dict[str, Any]:
        return {**self.images.fingerprint, "extractor": "PickScore text embedding",
                "tokenize": f"padding=True, truncation=True, max_length={MAX_TOKENS}"}

    def run(self, batch: list[str]) -> np.ndarray:
        import torch

        from k3eval.metrics.clip import _features

        tok = self.images.tokenizer()(batch, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        model = self.images.model()
        with torch.inference_mode():
            out = model.get_text_features(input_ids=tok["input_ids"].to(self.images.device),
                                          attention_mask=tok["attention_mask"].to(self.images.device))
        return _features(out).float().cpu().numpy()


class PickScore(PerImageMetric):
    name = "pickscore"
    display_name = "PickScore"
    higher_is_better = True
    Settings = PickScoreSettings

    def needs(self, ctx: ScoreContext) -> dict[str, Need]:
        s, o = self.settings, ctx.opts
        images = ctx.shared(PickScoreImages, s.weights, s.processor, o.device, o.batch_size)
        return {"image": Need(images, desc="PickScore"),
                "text": Need(ctx.shared(PickScoreTexts, images), text=required_prompt),
                "tokens": Need(ctx.shared(TokenCounts, images), text=required_prompt)}

    def per_image_scores(self, data: ScoreData) -> tuple[np.ndarray, MetricResult]:
        from k3eval.metrics import functional as F

        ext: PickScoreImages = data.extractors["image"]
        scale = ext.logit_scale()
        cos = F.clip_cosine(data["image"], data["text"])
        scores = scale * cos
        n_trunc = count_long(data.rows, data["tokens"], MAX_TOKENS)
        proto = {**ext.fingerprint, "formula": "logit_scale.exp() * cos(image embedding, text embedding)",
                 "logit_scale_exp": scale, "truncation": "77 tokens, end-of-text kept", "n_truncated": n_trunc,
                 "n": data.n, "seed": data.opts.seed}
        warn = weights_warning(ext.fingerprint, "PickScore") + truncation_note(n_trunc, MAX_TOKENS,
                                                                               "end-of-text token kept")
        return scores, MetricResult(proto, warnings=warn, extra={"n_truncated": n_trunc})
