"""ImageReward v1.0 (Xu et al., 2023): a BLIP image-grounded text encoder with a reward head, trained on expert
rankings of generated images.

Scoring rule of the authors (`THUDM/ImageReward`, `ImageReward/ImageReward.py` `ImageReward.score`, with
`models/BLIP/blip_pretrain.py`, `blip.py`, `vit.py`, `med.py`; PyPI `image-reward`):
- weights `ImageReward.pt` and `med_config.json` from the Hugging Face repo `THUDM/ImageReward`; tokenizer
  `bert-base-uncased` with `[DEC]` (bos) and `[ENC]` added as special tokens;
- image: torchvision `Resize(224, BICUBIC)` on the PIL image (short side), `CenterCrop(224)`, ToTensor, OpenAI CLIP
  mean/std; BLIP ViT-L/16 (24 blocks, width 1024, LayerNorm eps 1e-6) gives the image embeddings (all tokens);
- prompt: `tokenizer(prompt, padding="max_length", truncation=True, max_length=35)` (so prompts are cut at 35
  tokens, [SEP] kept; the first token stays [CLS]);
- the BERT text encoder (`med_config.json`, cross-attention to all image tokens in every layer) reads the prompt;
  the hidden state of its first token goes through the reward MLP (Linear 768-1024-128-64-16-1; the dropouts are
  inactive at inference and there are no activations between the layers);
- reward = (MLP output - 0.16717362830052426) / 1.0333394966054072, the mean and standard deviation the authors
  hard-code, so rewards are roughly standardised (about -2 to 2).

The BLIP towers are transformers' `BlipVisionModel` and `BlipTextModel` (the port of BLIP's `vit.py` and `med.py`),
with the checkpoint's keys mapped onto them (`_VIT`); every key must be used and every module weight
found, so a wrong file is refused instead of scoring with random layers (the package loads with `strict=False`).
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from k3eval.errors import UserError
from k3eval.metrics.api import (
    ImageTextExtractor,
    MetricResult,
    Need,
    PerImageMetric,
    ScoreContext,
    ScoreData,
    weights_warning,
)
from k3eval.metrics.preference import (
    TokenCounts,
    count_long,
    package_version,
    required_prompt,
    truncation_note,
    weights_label,
)
from k3eval.metrics.weights import SYNTHETIC, SYNTHETIC_VERSION, weights_dir

HUB_REPO = "THUDM/ImageReward"
HUB_FILE = "ImageReward.pt"
MED_CONFIG = "med_config.json"
TOKENIZER_ID = "bert-base-uncased"
REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072
MAX_TOKENS = 35
IMAGE_SIZE = 224
VIT_HEAD_DIM = 64  # BLIP's ViT-B (768 / 12 heads) and ViT-L (1024 / 16 heads)
VIT_EPS = 1e-6
MLP_LAYERS = (0, 2, 4, 6, 7)  # the Linear layers of the reward head's nn.Sequential (dropouts in between)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ImageRewardSettings(BaseModel):
    """`weights`: ImageReward.pt (default: from THUDM/ImageReward) or `synthetic`; `med_config`: the text encoder's
    config (default: med_config.json next to the weights file, else from THUDM/ImageReward); `tokenizer`: a hub id or
    folder (default bert-base-uncased)."""

    model_config = ConfigDict(extra="forbid")
    weights: str | None = None
    med_config: str | None = None
    tokenizer: str | None = None


# BLIP `vit.py` names <-> transformers BlipVisionModel names ({i}: block index)
_VIT = [("cls_token", "embeddings.class_embedding"), ("pos_embed", "embeddings.position_embedding"),
        ("patch_embed.proj.", "embeddings.patch_embedding."), ("norm.", "post_layernorm."),
        ("blocks.{i}.norm1.", "encoder.layers.{i}.layer_norm1."),
        ("blocks.{i}.norm2.", "encoder.layers.{i}.layer_norm2."),
        ("blocks.{i}.attn.qkv.", "encoder.layers.{i}.self_attn.qkv."),
        ("blocks.{i}.attn.proj.", "encoder.layers.{i}.self_attn.projection."),
        ("blocks.{i}.mlp.", "encoder.layers.{i}.mlp.")]


def _rename(key: str, to_hf: bool) -> str | None:
    """A vision key in the other naming (None when no rule applies)."""
    for blip, hf in _VIT:
        src, dst = (blip, hf) if to_hf else (hf, blip)
        pat = "^" + re.escape(src).replace(re.escape("{i}"), r"(\d+)")
        new, n = re.subn(pat, dst.replace("{i}", r"\1"), key)
        if n:
            return new
    return None


def split_checkpoint(state: dict) -> tuple[dict, dict, dict, list[str]]:
    """(vision, text, head) state dicts in transformers / nn.Sequential names, and the keys no part takes."""
    vision, text, head, unused = {}, {}, {}, []
    for k, v in state.items():
        if k.startswith("blip.visual_encoder."):
            new = _rename(k[len("blip.visual_encoder."):], to_hf=True)
            (vision.__setitem__(new, v) if new else unused.append(k))
        elif k.startswith("blip.text_encoder."):
            rest = k[len("blip.text_encoder."):]
            if rest != "embeddings.position_ids":  # a buffer of BLIP's BertEmbeddings, rebuilt by the model
                text[rest] = v
        elif k.startswith("mlp.layers."):
            head[k[len("mlp.layers."):]] = v
        elif not k.startswith(("blip.vision_proj.", "blip.text_proj.")):  # BLIP's contrastive heads, unused
            unused.append(k)
    return vision, text, head, unused


class Blip:
    """The ImageReward networks built from a checkpoint: vision tower, text encoder and reward head."""

    def __init__(self, path: Path, med_config: dict[str, Any], device: str):
        import torch
        from transformers import BlipTextConfig, BlipVisionConfig
        from transformers.models.blip.modeling_blip import BlipVisionModel
        from transformers.models.blip.modeling_blip_text import BlipTextModel

        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle, zip and runtime errors all mean "not a checkpoint"
            raise UserError(f"{path} is not a readable torch checkpoint ({type(e).__name__}: {e})") from None
        if not isinstance(state, dict) or "blip.visual_encoder.cls_token" not in state:
            raise UserError(f"{path} is not an ImageReward checkpoint (no blip.visual_encoder.cls_token)")
        vision, text, head, unused = split_checkpoint(state)
        width = int(vision["embeddings.class_embedding"].shape[-1])
        patch = int(vision["embeddings.patch_embedding.weight"].shape[-1])
        n_pos = int(vision["embeddings.position_embedding"].shape[1])
        depth = 1 + max(int(k.split(".")[2]) for k in vision if k.startswith("encoder.layers."))
        vcfg = BlipVisionConfig(hidden_size=width, intermediate_size=int(vision["encoder.layers.0.mlp.fc1.weight"]
                                                                         .shape[0]),
                                num_hidden_layers=depth, num_attention_heads=max(1, width // VIT_HEAD_DIM),
                                patch_size=patch, image_size=int(round((n_pos - 1) ** 0.5)) * patch,
                                layer_norm_eps=VIT_EPS, hidden_act="gelu")
        m = med_config
        tcfg = BlipTextConfig(vocab_size=m["vocab_size"], hidden_size=m["hidden_size"],
                              encoder_hidden_size=width, intermediate_size=m["intermediate_size"],
                              num_hidden_layers=m["num_hidden_layers"], num_attention_heads=m["num_attention_heads"],
                              max_position_embeddings=m["max_position_embeddings"],
                              layer_norm_eps=m["layer_norm_eps"], hidden_act=m.get("hidden_act", "gelu"),
                              pad_token_id=m.get("pad_token_id", 0), bos_token_id=None, sep_token_id=None)
        self.vision = BlipVisionModel(vcfg)
        self.text = BlipTextModel(tcfg, add_pooling_layer=False)
        self.head = torch.nn.Sequential(*[torch.nn.Linear(head[f"{i}.weight"].shape[1], head[f"{i}.weight"].shape[0])
                                          for i in MLP_LAYERS])
        head = {f"{MLP_LAYERS.index(int(k.split('.')[0]))}.{k.split('.')[1]}": v for k, v in head.items()}
        problems = list(unused)
        for name, module, sd in (("visual encoder", self.vision, vision), ("text encoder", self.text, text),
                                 ("reward head", self.head, head)):
            try:
                res = module.load_state_dict(sd, strict=False)
            except RuntimeError as e:  # tensors of other shapes
                raise UserError(f"{path} does not fit the ImageReward {name} ({str(e).splitlines()[-1].strip()})"
                                ) from None
            problems += [f"{name}: missing {k}" for k in res.missing_keys]
            problems += [f"{name}: unexpected {k}" for k in res.unexpected_keys]
        if problems:
            raise UserError(f"{path} does not fit the ImageReward architecture ({len(problems)} problems, e.g. "
                            f"{'; '.join(problems[:3])})")
        self.vision.to(device).eval()
        self.text.to(device).eval()
        self.head.to(device).eval()
        self.device = device

    def rewards(self, pixels, input_ids, attention_mask) -> np.ndarray:
        """Raw reward head outputs (before the authors' normalisation), one per (image, prompt)."""
        import torch

        with torch.inference_mode():
            image = self.vision(pixel_values=pixels.to(self.device)).last_hidden_state
            atts = torch.ones(image.shape[:-1], dtype=torch.long, device=self.device)
            out = self.text(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
                            encoder_hidden_states=image, encoder_attention_mask=atts, is_decoder=False)
            return self.head(out.last_hidden_state[:, 0, :].float()).float().cpu().numpy()


def imagereward_transform(image: np.ndarray):
    """The authors' transform of one H x W x 3 uint8 image -> 3 x 224 x 224 float tensor."""
    import torchvision.transforms.functional as TF
    from PIL import Image
    from torchvision.transforms import InterpolationMode

    pil = TF.center_crop(TF.resize(Image.fromarray(image), IMAGE_SIZE, InterpolationMode.BICUBIC), IMAGE_SIZE)
    return TF.normalize(TF.to_tensor(pil), CLIP_MEAN, CLIP_STD)


def load_tokenizer(folder: Path):
    """BERT tokenizer with BLIP's two extra special tokens ([DEC] as bos, [ENC]), as `init_tokenizer` sets it up."""
    from transformers import BertTokenizer

    tok = BertTokenizer.from_pretrained(folder)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tok


class ImageRewardExtractor(ImageTextExtractor):
    """Raw ImageReward head output per (image, prompt)."""

    def __init__(self, weights: str | None, med_config: str | None, tokenizer: str | None, device: str = "cpu",
                 batch_size: int = 32):
        from k3eval.metrics.hub import file_sha256, folder_sha256, hub_file, hub_folder, local_file

        synthetic = weights == SYNTHETIC
        if synthetic:
            self.path, self.med_path, self.tok_dir = synthetic_imagereward()
        else:
            opt = "--set imagereward.weights"
            self.path = hub_file(HUB_REPO, HUB_FILE, opt) if weights is None \
                else local_file(weights, opt, f"{HUB_FILE} (from the Hugging Face repo {HUB_REPO})")
            if med_config is not None:
                self.med_path = local_file(med_config, "--set imagereward.med_config", f"{MED_CONFIG} of {HUB_REPO}")
            elif weights is not None and (self.path.parent / MED_CONFIG).is_file():
                self.med_path = self.path.parent / MED_CONFIG
            else:
                self.med_path = hub_file(HUB_REPO, MED_CONFIG, "--set imagereward.med_config")
            self.tok_dir = hub_folder(tokenizer or TOKENIZER_ID, "--set imagereward.tokenizer", weights=False)
        try:
            self.med_config = json.loads(Path(self.med_path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"--set imagereward.med_config: cannot read {self.med_path} as JSON ({e})") from None
        self.device = device
        self.batch_size = batch_size
        self._fp = {"extractor": "ImageReward raw reward", "weights": weights_label(weights, f"{HUB_REPO}/{HUB_FILE}"),
                    "sha256": file_sha256(self.path), "med_config_sha256": file_sha256(self.med_path),
                    "tokenizer": SYNTHETIC if synthetic else weights_label(tokenizer, TOKENIZER_ID),
                    "tokenizer_sha256": folder_sha256(self.tok_dir, weights=False),
                    "resize": "torchvision Resize(224, bicubic) on PIL, CenterCrop(224), CLIP mean/std",
                    "tokenize": f"padding=max_length, truncation=True, max_length={MAX_TOKENS}",
                    "torchvision": package_version("torchvision"), "transformers": package_version("transformers"),
                    "dtype": "float32", "synthetic_weights": synthetic}
        self._net = self._tok = None
        self._lock = threading.Lock()

    @property
    def fingerprint(self) -> dict[str, Any]:
        return self._fp

    def tokenizer(self):
        with self._lock:
            if self._tok is None:
                self._tok = load_tokenizer(self.tok_dir)
        return self._tok

    def prepare(self, image: np.ndarray, text: str):
        return imagereward_transform(image), text

    def run(self, batch: list) -> np.ndarray:
        import torch

        if self._net is None:
            self._net = Blip(self.path, self.med_config, self.device)
        tok = self.tokenizer()([t for _, t in batch], padding="max_length", truncation=True, max_length=MAX_TOKENS,
                               return_tensors="pt")
        return self._net.rewards(torch.stack([x for x, _ in batch]), tok["input_ids"], tok["attention_mask"])

    def token_counts(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer()(texts)["input_ids"]]


class ImageReward(PerImageMetric):
    name = "imagereward"
    display_name = "ImageReward"
    higher_is_better = True
    Settings = ImageRewardSettings

    def needs(self, ctx: ScoreContext) -> dict[str, Need]:
        s, o = self.settings, ctx.opts
        ext = ctx.shared(ImageRewardExtractor, s.weights, s.med_config, s.tokenizer, o.device, o.batch_size)
        return {"reward": Need(ext, text=required_prompt, desc="ImageReward"),
                "tokens": Need(ctx.shared(TokenCounts, ext), text=required_prompt)}

    def per_image_scores(self, data: ScoreData) -> tuple[np.ndarray, MetricResult]:
        ext: ImageRewardExtractor = data.extractors["reward"]
        raw = np.asarray(data["reward"], np.float64)[:, 0]
        scores = (raw - REWARD_MEAN) / REWARD_STD
        n_trunc = count_long(data.rows, data["tokens"], MAX_TOKENS)
        proto = {**ext.fingerprint, "formula": "(reward head output - mean) / std", "mean": REWARD_MEAN,
                 "std": REWARD_STD, "truncation": f"{MAX_TOKENS} BERT tokens, [SEP] kept", "n_truncated": n_trunc,
                 "n": data.n, "seed": data.opts.seed}
        warn = weights_warning(ext.fingerprint, "ImageReward") + truncation_note(n_trunc, MAX_TOKENS, "[SEP] kept")
        return scores, MetricResult(proto, warnings=warn, extra={"n_truncated": n_trunc})


# ---- synthetic weights ---------------------------------------------------------------------------------------------
_WORDS = ("a an the of on in with and at by to from for is are photo picture painting image drawing portrait "
          "cat dog bird horse car house tree flower table chair man woman person child city street sky sea water "
          "red green blue yellow black white orange purple brown pink small big large very long many two three "
          "colourful colorful objects about prompt thing number").split()


def _synthetic_vocab() -> list[str]:
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'\"-:;()&/")
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *[f"##{c}" for c in chars[:36]], *_WORDS]


def synthetic_imagereward(seed: int = 0) -> tuple[Path, Path, Path]:
    """(ImageReward.pt, med_config.json, tokenizer folder) of a small BLIP reward model with seeded weights, in the
    authors' file layout (the checkpoint's keys are BLIP's), built once into the weights cache."""

    folder = weights_dir() / f"synthetic-imagereward-{SYNTHETIC_VERSION}-seed{seed}"
    files = (folder / HUB_FILE, folder / MED_CONFIG, folder / "tokenizer")
    if (folder / ".complete").exists():
        return files
    import torch
    from transformers import BertTokenizer, BlipTextConfig, BlipVisionConfig
    from transformers.models.blip.modeling_blip import BlipVisionModel
    from transformers.models.blip.modeling_blip_text import BlipTextModel

    from k3eval.utils import build_once

    def build(tmp: Path) -> None:
        (tmp / "tokenizer").mkdir()
        vocab = _synthetic_vocab()
        (tmp / "tokenizer" / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
        BertTokenizer(str(tmp / "tokenizer" / "vocab.txt"), do_lower_case=True).save_pretrained(tmp / "tokenizer")
        med = {"architectures": ["BertModel"], "hidden_act": "gelu", "hidden_size": 32, "intermediate_size": 64,
               "layer_norm_eps": 1e-12, "max_position_embeddings": 64, "model_type": "bert",
               "num_attention_heads": 2, "num_hidden_layers": 2, "pad_token_id": 0, "type_vocab_size": 2,
               "vocab_size": len(vocab) + 2, "encoder_width": 128, "add_cross_attention": True}
        (tmp / MED_CONFIG).write_text(json.dumps(med, indent=2), encoding="utf-8")
        width = med["encoder_width"]
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            vision = BlipVisionModel(BlipVisionConfig(hidden_size=width, intermediate_size=4 * width,
                                                      num_hidden_layers=2, num_attention_heads=width // VIT_HEAD_DIM,
                                                      patch_size=16, image_size=IMAGE_SIZE, layer_norm_eps=VIT_EPS,
                                                      initializer_range=0.02))  # BLIP's default 1e-10: all zeros
            text = BlipTextModel(BlipTextConfig(vocab_size=med["vocab_size"], hidden_size=32, encoder_hidden_size=width,
                                                intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                                max_position_embeddings=64, bos_token_id=None, sep_token_id=None),
                                 add_pooling_layer=False)
            sizes = [32, 1024, 128, 64, 16, 1]
            head = [torch.nn.Linear(a, b) for a, b in zip(sizes, sizes[1:])]
            for lin in head:  # unit gain per layer, so that the (linear) head's output varies by about 1
                torch.nn.init.normal_(lin.weight, std=lin.in_features ** -0.5)
                torch.nn.init.zeros_(lin.bias)
            # random position embeddings are tiny at initialisation; scaled up so that images differ in reward
            vision.embeddings.position_embedding.data.normal_(0, 0.5)
            # the text's cross-attention output is scaled up so that rewards depend on the image clearly
            for layer in text.encoder.layer:
                layer.crossattention.output.dense.weight.data.mul_(10.0)
            # LayerNorms start as identities and biases as zeros, which would hide a swapped or misnamed tensor
            for name, p in [*vision.named_parameters(), *text.named_parameters()]:
                if "LayerNorm" in name or "layer_norm" in name or "layernorm" in name or name.endswith("bias"):
                    p.data.add_(torch.randn_like(p) * 0.1)
        state = {f"blip.visual_encoder.{_rename(k, to_hf=False)}": v for k, v in vision.state_dict().items()}
        state.update({f"blip.text_encoder.{k}": v for k, v in text.state_dict().items()})
        state["blip.text_encoder.embeddings.position_ids"] = torch.arange(64).expand((1, -1))
        state.update({f"mlp.layers.{MLP_LAYERS[i]}.{p}": getattr(lin, p).detach().clone()
                      for i, lin in enumerate(head) for p in ("weight", "bias")})
        state.update({"blip.vision_proj.weight": torch.zeros(16, width), "blip.vision_proj.bias": torch.zeros(16),
                      "blip.text_proj.weight": torch.zeros(16, 32), "blip.text_proj.bias": torch.zeros(16)})
        torch.save(state, tmp / HUB_FILE)

    build_once(folder, weights_dir() / ".imagereward.lock", build)
    return files

