"""HPS v2.1, Human Preference Score v2.1 (Wu et al., 2023): an open_clip ViT-H-14 fine-tuned on HPD v2.

Scoring rule of the authors (`tgxs002/HPSv2`, `hpsv2/img_score.py` with `hpsv2/src/open_clip/factory.py` and
`transform.py`; PyPI `hpsv2`): the model `ViT-H-14` with the state dict `checkpoint["state_dict"]` of
`HPS_v2.1_compressed.pt` from the Hugging Face repo `xswu/HPSv2`; the prompt tokenized by open_clip's ViT-H-14
tokenizer (77 tokens, cut with end-of-text kept last); image and text features L2-normalised; score = their dot
product, the cosine, reported as is (about 0.2-0.35 for real images).

The image transform is the authors' evaluation transform (`light_augmentation=True`), not open_clip's default:
the image as a float tensor in [0, 1] (ToTensor), its longest side resized to 224 (torchvision bicubic on the
tensor, sizes rounded with Python's round), padded with zeros (black) to 224 x 224 centred (the extra pixel
right/bottom), then the OpenAI mean/std. torchvision >= 0.17 antialiases tensor resizes by default and that is
what the package does with today's torchvision; with torchvision < 0.17 it resized without antialiasing, which
changes scores of large images in the second decimal. Images are 8-bit RGB here (the package would keep an RGBA
image's alpha channel, which its model cannot take).
"""

from __future__ import annotations

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
from k3eval.metrics.weights import SYNTHETIC, SYNTHETIC_VERSION, weights_dir

HUB_REPO = "xswu/HPSv2"
HUB_FILE = "HPS_v2.1_compressed.pt"
ARCH = "ViT-H-14"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class HpsSettings(WeightsSettings):
    """`weights`: the checkpoint file (default HPS_v2.1_compressed.pt from xswu/HPSv2) or `synthetic`; `model`: its
    open_clip architecture (default ViT-H-14)."""

    model: str = ARCH


def synthetic_hps_checkpoint(seed: int = 1) -> Path:
    """A seeded checkpoint of the tiny open_clip model in the HPS file layout ({"state_dict": ...})."""
    import io

    from k3eval.metrics.clip import synthetic_open_clip_checkpoint
    from k3eval.utils import atomic_write_bytes, file_lock

    path = weights_dir() / f"synthetic-hps-{SYNTHETIC_VERSION}-seed{seed}.pt"
    if path.exists():
        return path
    import torch

    with file_lock(weights_dir() / ".hps.lock"):
        if not path.exists():
            state = torch.load(synthetic_open_clip_checkpoint(seed), map_location="cpu", weights_only=True)
            buf = io.BytesIO()
            torch.save({"state_dict": state}, buf)
            atomic_write_bytes(path, buf.getvalue())
    return path


def open_clip_config(arch: str) -> dict[str, Any]:
    """The model config of an open_clip architecture, read from open_clip's JSON files without importing it (a
    fully cached rescoring builds the extractor for its fingerprint only)."""
    import importlib.util
    import json

    from k3eval.errors import UserError
    from k3eval.metrics.clip import TINY_CLIP, TINY_CLIP_CONFIG

    if arch == TINY_CLIP:
        return TINY_CLIP_CONFIG
    spec = importlib.util.find_spec("open_clip")
    path = Path(next(iter(spec.submodule_search_locations))) / "model_configs" / f"{arch}.json"
    if not path.is_file():
        raise UserError(f"--set hpsv21.model: unknown open_clip architecture {arch!r}; HPS v2.1 is {ARCH}")
    return json.loads(path.read_text(encoding="utf-8"))


def hps_transform(image: np.ndarray, size: int):
    """The authors' evaluation transform of one H x W x 3 uint8 image -> 3 x size x size float tensor."""
    import torch
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255)
    h, w = x.shape[1:]
    scale = size / float(max(h, w))
    if scale != 1.0:
        nh, nw = round(h * scale), round(w * scale)
        x = TF.resize(x, [nh, nw], InterpolationMode.BICUBIC, antialias=True)
        ph, pw = size - nh, size - nw
        x = TF.pad(x, [pw // 2, ph // 2, pw - pw // 2, ph - ph // 2], fill=0)
    return TF.normalize(x, OPENAI_MEAN, OPENAI_STD)


class HpsImages(ImageExtractor):
    """HPS image features (raw) of one checkpoint."""

    def __init__(self, weights: str | None, model: str = ARCH, device: str = "cpu", batch_size: int = 32):
        from k3eval.metrics.clip import TINY_CLIP
        from k3eval.metrics.hub import file_sha256, hub_file, local_file

        synthetic = weights == SYNTHETIC
        if synthetic:
            self.arch, self.path = TINY_CLIP, synthetic_hps_checkpoint()
        else:
            self.arch = model
            self.path = hub_file(HUB_REPO, HUB_FILE, "--set hpsv21.weights") if weights is None \
                else local_file(weights, "--set hpsv21.weights", f"{HUB_FILE} (from the Hugging Face repo {HUB_REPO})")
        cfg = open_clip_config(self.arch)
        size = cfg["vision_cfg"]["image_size"]
        self.size = size if isinstance(size, int) else int(size[0])
        self.context_length = int(cfg.get("text_cfg", {}).get("context_length", 77))
        self.device = device
        self.batch_size = batch_size
        self._fp = {"extractor": "HPS image features", "model": self.arch,
                    "weights": weights_label(weights, f"{HUB_REPO}/{HUB_FILE}"), "sha256": file_sha256(self.path),
                    "resize": f"HPS eval: longest side to {self.size} (torchvision bicubic, antialias), zero pad, "
                              "OpenAI mean/std", "torchvision": package_version("torchvision"), "dtype": "float32",
                    "synthetic_weights": synthetic, "open_clip": package_version("open_clip_torch")}
        self._model = self._tokenizer = None

    @property
    def fingerprint(self) -> dict[str, Any]:
        return self._fp

    def model(self):
        if self._model is None:
            import open_clip
            import torch

            from k3eval.errors import UserError
            from k3eval.metrics.clip import _quiet_root_logger, register_tiny_config

            register_tiny_config()
            with _quiet_root_logger():
                net = open_clip.create_model(self.arch, pretrained=None)
            try:
                ckpt = torch.load(self.path, map_location="cpu", weights_only=True)
            except Exception as e:  # pickle, zip and runtime errors all mean "not a checkpoint"
                raise UserError(f"{self.path} is not a readable torch checkpoint ({type(e).__name__}: {e})") from None
            state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
            if not isinstance(state, dict):
                raise UserError(f"{self.path}: expected a checkpoint with a 'state_dict' (HPS layout)")
            state = {k.removeprefix("module."): v for k, v in state.items()}
            try:
                result = net.load_state_dict(state, strict=False)
            except RuntimeError as e:  # tensors of other shapes
                raise UserError(f"{self.path} does not fit open_clip {self.arch}: {str(e).splitlines()[-1].strip()}"
                                ) from None
            if result.missing_keys or result.unexpected_keys:
                raise UserError(f"{self.path} does not fit open_clip {self.arch}: {len(result.missing_keys)} missing "
                                f"keys (e.g. {', '.join(result.missing_keys[:3])}), {len(result.unexpected_keys)} "
                                f"unexpected (e.g. {', '.join(result.unexpected_keys[:3])})")
            self._model = net.float().to(self.device).eval()
        return self._model

    def tokenizer(self):
        if self._tokenizer is None:
            import open_clip

            from k3eval.metrics.clip import register_tiny_config

            register_tiny_config()
            self._tokenizer = open_clip.get_tokenizer(self.arch)
        return self._tokenizer

    def prepare(self, image: np.ndarray):
        return hps_transform(image, self.size)

    def run(self, batch: list) -> np.ndarray:
        import torch

        model = self.model()
        with torch.inference_mode():
            return model.encode_image(torch.stack(batch).to(self.device)).float().cpu().numpy()

    def token_counts(self, texts: list[str]) -> list[int]:
        """Tokens with start and end of text, before truncation."""
        return [len(self.tokenizer().encode(t)) + 2 for t in texts]


class HpsTexts(TextExtractor):
    """HPS text features (raw): open_clip tokenizer, end-of-text kept on truncation."""

    def __init__(self, images: HpsImages):
        self.images = images
        self.batch_size = images.batch_size

    @property
    def fingerprint(self) -> dict[str, Any]:
        return {**self.images.fingerprint, "extractor": "HPS text features",
                "tokenize": f"open_clip {self.images.arch} tokenizer, {self.images.context_length} tokens"}

    def run(self, batch: list[str]) -> np.ndarray:
        import torch

        model = self.images.model()
        with torch.inference_mode():
            ids = self.images.tokenizer()(batch).to(self.images.device)
            return model.encode_text(ids).float().cpu().numpy()


class HpsV21(PerImageMetric):
    name = "hpsv21"
    display_name = "HPS v2.1"
    higher_is_better = True
    Settings = HpsSettings

    def needs(self, ctx: ScoreContext) -> dict[str, Need]:
        s, o = self.settings, ctx.opts
        images = ctx.shared(HpsImages, s.weights, s.model, o.device, o.batch_size)
        return {"image": Need(images, desc="HPS v2.1"),
                "text": Need(ctx.shared(HpsTexts, images), text=required_prompt),
                "tokens": Need(ctx.shared(TokenCounts, images), text=required_prompt)}

    def per_image_scores(self, data: ScoreData) -> tuple[np.ndarray, MetricResult]:
        from k3eval.metrics import functional as F

        ext: HpsImages = data.extractors["image"]
        scores = F.clip_cosine(data["image"], data["text"])
        n_trunc = count_long(data.rows, data["tokens"], ext.context_length)
        proto = {**ext.fingerprint, "formula": "cos(image features, text features), as reported by the authors",
                 "truncation": f"{ext.context_length} tokens, end-of-text kept", "n_truncated": n_trunc,
                 "n": data.n, "seed": data.opts.seed}
        warn = weights_warning(ext.fingerprint, "HPS v2.1") + truncation_note(n_trunc, ext.context_length,
                                                                              "end-of-text token kept")
        return scores, MetricResult(proto, warnings=warn, extra={"n_truncated": n_trunc})

