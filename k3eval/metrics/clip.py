"""CLIP image and text encoders for CLIP score and CMMD: open_clip (any model and pretrained tag) and HF transformers.

Both backends tokenize so that the end-of-text token survives truncation (CLIP reads the text embedding at that
token): open_clip's tokenizer cuts long prompts and puts end-of-text last; the transformers backend tokenizes with
`truncation=True, max_length=77`, which keeps the special tokens. The number of truncated prompts is reported.

`synthetic` builds a small CLIP of the real classes with seeded weights (tests and the demo): for open_clip a model
config `k3eval-tiny-clip` registered with open_clip and a checkpoint file loaded through
`create_model_and_transforms(..., pretrained=PATH)`; for transformers a folder written with `save_pretrained`.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from k3eval.errors import UserError
from k3eval.metrics.weights import SYNTHETIC, SYNTHETIC_VERSION, weights_dir
from k3eval.utils import build_once, file_lock, sha256_file

TINY_CLIP = "k3eval-tiny-clip"
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
BACKENDS = ("open_clip", "transformers")


def _config_dir() -> Path:
    d = weights_dir() / "open_clip_configs"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{TINY_CLIP}.json"
    if not path.exists():
        path.write_text(json.dumps(TINY_CLIP_CONFIG, indent=2))
    return d


@contextlib.contextmanager
def _quiet_root_logger():
    """open_clip reports through the root logger (`logging.warning(...)`), which on first use also installs a stderr
    handler on the root logger for the whole process. Around its calls the root logger gets a silent handler and
    level ERROR, so its notes ("No pretrained weights loaded ... initialized randomly" when the synthetic checkpoint
    is built, which weights were loaded) stay out of k3eval's output; failures still raise."""
    root = logging.getLogger()
    added = None if root.handlers else logging.NullHandler()
    if added is not None:
        root.addHandler(added)
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
        if added is not None:
            root.removeHandler(added)


def register_tiny_config() -> None:
    """Make `k3eval-tiny-clip` a model name open_clip knows (its config file lives in the weights cache)."""
    import open_clip

    if TINY_CLIP not in open_clip.list_models():
        open_clip.add_model_config(_config_dir())


def _shared_direction(gen, width: int, embed: int):
    """A projection and a bias direction shared by the image and the text tower, so that random-weight embeddings
    point roughly the same way and cosines land in a realistic positive range instead of around zero."""
    import torch

    proj = torch.randn(width, embed, generator=gen) / width ** 0.5
    bias = torch.randn(width, generator=gen) * 0.4
    return proj, bias


def synthetic_open_clip_checkpoint(seed: int = 0) -> Path:
    """A seeded open_clip checkpoint of `k3eval-tiny-clip`, saved as a state dict the real loader reads."""
    import io

    path = weights_dir() / f"synthetic-open-clip-{SYNTHETIC_VERSION}-seed{seed}.pt"
    if path.exists():
        return path
    import open_clip
    import torch

    register_tiny_config()
    with file_lock(weights_dir() / ".open_clip.lock"):
        if not path.exists():
            with torch.random.fork_rng(), _quiet_root_logger():
                torch.manual_seed(seed)
                model = open_clip.create_model(TINY_CLIP, pretrained=None)
            gen = torch.Generator().manual_seed(seed + 1)
            proj, bias = _shared_direction(gen, TINY_CLIP_CONFIG["text_cfg"]["width"], TINY_CLIP_CONFIG["embed_dim"])
            with torch.no_grad():
                model.text_projection.copy_(proj)
                model.visual.proj.copy_(proj)
                model.ln_final.bias.copy_(bias)
                model.visual.ln_post.bias.copy_(bias)
            buf = io.BytesIO()
            torch.save(model.state_dict(), buf)
            from k3eval.utils import atomic_write_bytes

            atomic_write_bytes(path, buf.getvalue())
    return path


def _hf_tokenizer_files(folder: Path) -> None:
    """vocab.json and merges.txt of the OpenAI CLIP BPE, written from the vocabulary file open_clip ships."""
    from open_clip.tokenizer import SimpleTokenizer

    tok = SimpleTokenizer()
    vocab = dict(tok.encoder)
    renames = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {renames.get(k, k): v for k, v in vocab.items()}
    merges = sorted(tok.bpe_ranks.items(), key=lambda kv: kv[1])
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for (a, b), _ in merges) + "\n",
                                       encoding="utf-8")


def synthetic_transformers_clip(seed: int = 0) -> Path:
    """A seeded HF `CLIPModel` + `CLIPProcessor` folder (save_pretrained), with the real CLIP BPE tokenizer."""
    folder = weights_dir() / f"synthetic-hf-clip-{SYNTHETIC_VERSION}-seed{seed}"
    if (folder / ".complete").exists():
        return folder

    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    def build(tmp: Path) -> None:
        _hf_tokenizer_files(tmp)
        tokenizer = CLIPTokenizer(str(tmp / "vocab.json"), str(tmp / "merges.txt"))
        images = CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
        config = CLIPConfig(
            text_config={"vocab_size": 49408, "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
                         "num_attention_heads": 2, "max_position_embeddings": 77, "bos_token_id": 49406,
                         "eos_token_id": 49407, "pad_token_id": 49407},
            vision_config={"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
                           "num_attention_heads": 2, "image_size": 64, "patch_size": 16},
            projection_dim=32)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = CLIPModel(config)
        gen = torch.Generator().manual_seed(seed + 1)
        proj, bias = _shared_direction(gen, 64, 32)
        with torch.no_grad():
            model.text_projection.weight.copy_(proj.T)
            model.visual_projection.weight.copy_(proj.T)
            model.text_model.final_layer_norm.bias.copy_(bias)
            model.vision_model.post_layernorm.bias.copy_(bias)
        model.save_pretrained(tmp)
        CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(tmp)

    build_once(folder, weights_dir() / ".hf_clip.lock", build)
    return folder


@dataclass
class ClipEncoder:
    """A loaded CLIP: encode images (uint8 H x W x 3 arrays) and texts into raw embeddings (float32 rows)."""

    backend: str
    model_name: str
    pretrained: str
    fingerprint: dict[str, Any]
    context_length: int
    _model: Any = field(repr=False, default=None)
    _preprocess: Any = field(repr=False, default=None)
    _tokenizer: Any = field(repr=False, default=None)
    device: str = "cpu"

    @property
    def preprocess(self) -> Any:
        """The image preprocessing the model was loaded with (picklable: it is sent to the decoding workers)."""
        return self._preprocess

    def encode_images(self, images: list[np.ndarray]) -> np.ndarray:
        """Embeddings of uint8 H x W x 3 images: `clip_pixels` on each, then `encode_pixels`."""
        return self.encode_pixels([clip_pixels(self.backend, self._preprocess, a) for a in images])

    def encode_pixels(self, pixels: list) -> np.ndarray:
        """Embeddings of preprocessed images (3 x S x S tensors from `clip_pixels`)."""
        import torch

        x = torch.stack(pixels).to(self.device)
        with torch.inference_mode():
            if self.backend == "open_clip":
                out = self._model.encode_image(x)
            else:
                out = _features(self._model.get_image_features(pixel_values=x))
        return out.float().cpu().numpy()

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            if self.backend == "open_clip":
                out = self._model.encode_text(self._tokenizer(texts).to(self.device))
            else:
                tok = self._tokenizer(texts, padding=True, truncation=True, max_length=self.context_length,
                                      return_tensors="pt")
                out = _features(self._model.get_text_features(input_ids=tok["input_ids"].to(self.device),
                                                              attention_mask=tok["attention_mask"].to(self.device)))
        return out.float().cpu().numpy()

    def truncated(self, texts: list[str]) -> list[bool]:
        """Whether each prompt is longer than the context (start and end tokens included)."""
        return truncated_flags(self.backend, self._tokenizer, self.context_length, texts)


def clip_pixels(backend: str, preprocess: Any, image: np.ndarray):
    """One uint8 H x W x 3 image as the model's input (3 x S x S float tensor), by the model's own preprocessing:
    open_clip's transform on a PIL image, or the transformers image processor on the uint8 C x H x W tensor (as
    torchmetrics passes it: the processor's fast path, no PIL round trip)."""
    import torch

    if backend == "open_clip":
        from PIL import Image

        return preprocess(Image.fromarray(image))
    chw = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    return preprocess(images=[chw], return_tensors="pt")["pixel_values"][0]


def truncated_flags(backend: str, tokenizer: Any, context_length: int, texts: list[str]) -> list[bool]:
    """Whether each prompt is longer than `context_length` tokens (start and end tokens included)."""
    if backend == "open_clip":
        enc = getattr(tokenizer, "encode", None)
        if enc is None:  # HF-tokenizer models in open_clip: count with the wrapped tokenizer
            return [len(tokenizer.tokenizer(t)["input_ids"]) > context_length for t in texts]
        return [len(enc(t)) + 2 > context_length for t in texts]
    return [len(ids) > context_length for ids in tokenizer(texts)["input_ids"]]


def resolve_clip(backend: str, model: str, pretrained: str) -> tuple[str, str, dict[str, Any]]:
    """Resolve names without loading the network: (model, pretrained or source folder, fingerprint).

    The fingerprint (what a cached embedding depends on) names backend, model, weights and their sha256 when they
    are a file, and the library version.
    """
    if backend not in BACKENDS:
        raise UserError(f"--clip-backend: unknown value {backend!r}; accepted: {', '.join(BACKENDS)}")
    synthetic = pretrained == SYNTHETIC or model == SYNTHETIC
    if backend == "open_clip":
        # No open_clip import here: resolving must stay cheap when every embedding is already cached.
        if synthetic:
            model, pretrained = TINY_CLIP, str(synthetic_open_clip_checkpoint())
        fp: dict[str, Any] = {"extractor": f"open_clip {model}", "backend": backend, "model": model,
                              "synthetic_weights": synthetic, "standard_weights": not synthetic,
                              "resize": "open_clip preprocess_val of the model", "dtype": "float32",
                              "open_clip": metadata.version("open_clip_torch")}
        p = Path(pretrained).expanduser()
        if p.is_file():
            fp.update(pretrained=p.name, weights=p.name, sha256=sha256_file(p))
        else:
            fp.update(pretrained=pretrained, weights=pretrained)
        return model, pretrained, fp
    source = str(synthetic_transformers_clip()) if synthetic else model
    name = "synthetic" if synthetic else model
    fp = {"extractor": f"transformers CLIPModel {name}", "backend": backend, "model": name, "weights": name,
          "synthetic_weights": synthetic, "standard_weights": not synthetic,
          "resize": "CLIPImageProcessor of the model", "dtype": "float32",
          "transformers": metadata.version("transformers")}
    files = sorted(Path(source).glob("*.safetensors")) if Path(source).is_dir() else []
    if files:
        fp["sha256"] = sha256_file(files[0])
    return source, source, fp


def load_tokenizer(backend: str, model: str, source: str) -> tuple[Any, int]:
    """The tokenizer alone (cheap), to count truncated prompts without loading the network."""
    if backend == "open_clip":
        import open_clip

        register_tiny_config()
        tok = open_clip.get_tokenizer(model)
        return tok, int(getattr(tok, "context_length", 77) or 77)
    from transformers import CLIPConfig, CLIPTokenizer

    try:
        tok = CLIPTokenizer.from_pretrained(source)
        ctx = CLIPConfig.from_pretrained(source).text_config.max_position_embeddings
    except Exception as e:  # hub and file errors: the files are not available here
        raise UserError(f"--clip-model: cannot load transformers CLIP {source!r} ({type(e).__name__}: {e}); "
                        "offline, give a local folder saved with save_pretrained, or 'synthetic'") from None
    return tok, int(ctx)


def _features(out):
    # transformers >= 5 returns a model output whose pooler_output holds the projected features.
    return out if hasattr(out, "float") else out.pooler_output


def _open_clip_missing(model: str, pretrained: str, err: Exception) -> UserError:
    return UserError(f"--clip-pretrained: cannot load open_clip weights {model}/{pretrained} "
                     f"({type(err).__name__}: {err}). Offline, download them once on a connected machine into the "
                     "Hugging Face cache (~/.cache/huggingface/hub) or pass the checkpoint file as --clip-pretrained "
                     "PATH; 'synthetic' gives seeded random test weights")


def load_clip(backend: str = "open_clip", model: str = "ViT-L-14", pretrained: str = "openai",
              device: str = "cpu") -> ClipEncoder:
    """Load a CLIP for scoring. open_clip: `model` is an architecture name, `pretrained` a tag or a file;
    transformers: `model` is a hub id or a folder. `pretrained='synthetic'` (or model 'synthetic') gives the seeded
    test model of that backend."""
    if backend not in BACKENDS:
        raise UserError(f"--clip-backend: unknown value {backend!r}; accepted: {', '.join(BACKENDS)}")
    if backend == "open_clip":
        return _load_open_clip(model, pretrained, device)
    return _load_transformers(model, pretrained, device)


def _load_open_clip(model: str, pretrained: str, device: str) -> ClipEncoder:
    import open_clip

    register_tiny_config()
    synthetic = pretrained == SYNTHETIC or model == SYNTHETIC
    if synthetic:
        model, pretrained = TINY_CLIP, str(synthetic_open_clip_checkpoint())
    is_file = Path(pretrained).expanduser().is_file()
    if not is_file and pretrained not in open_clip.list_pretrained_tags_by_model(model) and not synthetic:
        if model not in open_clip.list_models():
            raise UserError(f"--clip-model: unknown open_clip model {model!r}; see open_clip.list_models()")
        raise UserError(f"--clip-pretrained: {pretrained!r} is neither a file nor a pretrained tag of {model} "
                        f"(tags: {', '.join(open_clip.list_pretrained_tags_by_model(model)) or 'none'})")
    try:
        with _quiet_root_logger():
            net, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=pretrained, device=device)
    except Exception as e:  # hub, network, file and state-dict errors all mean "these weights are not usable here"
        raise _open_clip_missing(model, pretrained, e) from None
    net.eval()
    tokenizer = open_clip.get_tokenizer(model)
    fp = {"backend": "open_clip", "model": model, "pretrained": Path(pretrained).name if is_file else pretrained,
          "synthetic_weights": synthetic, "open_clip": open_clip.__version__, "preprocess": _describe(preprocess)}
    if is_file:
        fp["sha256"] = sha256_file(pretrained)
    ctx = int(getattr(tokenizer, "context_length", 77) or 77)
    return ClipEncoder("open_clip", model, fp["pretrained"], fp, ctx, net, preprocess, tokenizer, device)


def _load_transformers(model: str, pretrained: str, device: str) -> ClipEncoder:
    import transformers
    from transformers import CLIPModel, CLIPProcessor

    synthetic = pretrained == SYNTHETIC or model == SYNTHETIC
    source = str(synthetic_transformers_clip()) if synthetic else model
    try:
        net = CLIPModel.from_pretrained(source).to(device).eval()
        processor = CLIPProcessor.from_pretrained(source)
    except Exception as e:  # hub and file errors: the weights are not available here
        raise UserError(f"--clip-model: cannot load transformers CLIP {source!r} ({type(e).__name__}: {e}); "
                        "offline, give a local folder saved with save_pretrained, or 'synthetic'") from None
    ctx = int(net.config.text_config.max_position_embeddings)
    fp = {"backend": "transformers", "model": "synthetic" if synthetic else model, "synthetic_weights": synthetic,
          "transformers": transformers.__version__, "preprocess": type(processor.image_processor).__name__}
    weights = sorted(Path(source).glob("*.safetensors")) if Path(source).is_dir() else []
    if weights:
        fp["sha256"] = sha256_file(weights[0])
    return ClipEncoder("transformers", fp["model"], fp["model"], fp, ctx, net, processor.image_processor,
                       processor.tokenizer, device)


def _describe(transform) -> str:
    return " ".join(str(transform).split())
