"""Tiny offline pipelines: the real diffusers/transformers classes at small sizes with seeded random weights.

On first use each pipeline is built, saved with `save_pretrained` into `$K3EVAL_CACHE/tiny/<name>` and then loaded
back with `from_pretrained`, so tests and the demo run the real loading code without any download. The images are
noise-like (the weights are random) but every code path is the real one.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from tqdm.auto import tqdm

from k3eval.generators.diffusers_pipeline import DiffusersPipelineGenerator
from k3eval.utils import build_once, cache_dir

TINY_VERSION = "v2"  # bump when a builder changes, so stale cached folders are rebuilt


def tiny_folder(name: str, build: Callable[[Path], None]) -> Path:
    """The cached folder of tiny component `name`, built once (under a file lock, for parallel processes); the first
    build takes seconds (a tokenizer is trained, networks initialised and saved), so it says so on stderr."""
    root = cache_dir() / "tiny"

    def announced(tmp: Path) -> None:
        # tqdm.write: a generate progress bar may be on screen, and the line must not be glued to it
        tqdm.write(f"k3eval: building the offline model '{name}' in {root} (first use only)...", file=sys.stderr)
        t0 = time.perf_counter()
        build(tmp)
        tqdm.write(f"k3eval: built '{name}' in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    return build_once(root / f"{name}-{TINY_VERSION}", root / f".{name}.lock", announced)


def _corpus() -> list[str]:
    from k3eval.prompts.loaders import load_parti

    return [p.text for p in load_parti()]


def build_tokenizer(max_length: int, bos: bool = False):
    """A small BPE tokenizer trained locally on PartiPrompts with the `tokenizers` library."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["<pad>", "</s>", "<unk>", "<s>"]
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(_corpus(), trainer)
    eos = tok.token_to_id("</s>")
    if bos:
        bos_id = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", bos_id),
                                                                                                 ("</s>", eos)])
    else:
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", eos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   bos_token="<s>", model_max_length=max_length)


def _seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def build_t5_encoder(d_model: int = 32, vocab_size: int = 512):
    from transformers import T5Config, T5EncoderModel

    _seed(0)
    cfg = T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                   relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return T5EncoderModel(cfg).eval()


def build_movq():
    """A VQModel in Sber-MoVQGAN's layout (spatial-norm decoder, 4 latent channels) downsampling x8."""
    from diffusers import VQModel

    _seed(1)
    # SpatialNorm fixes 32 groups, so every level has 32 channels.
    return VQModel(block_out_channels=(32, 32, 32, 32),
                   down_block_types=["DownEncoderBlock2D"] * 3 + ["AttnDownEncoderBlock2D"],
                   up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
                   layers_per_block=1, latent_channels=4, num_vq_embeddings=64, norm_num_groups=8, vq_embed_dim=4,
                   norm_type="spatial", sample_size=64).eval()


def build_kandinsky3_unet(encoder_dim: int = 32):
    from diffusers import Kandinsky3UNet

    _seed(2)
    return Kandinsky3UNet(in_channels=4, time_embedding_dim=16, groups=4, attention_head_dim=8, layers_per_block=3,
                          block_out_channels=(16, 32), cross_attention_dim=32, encoder_hid_dim=encoder_dim).eval()


def _build_tiny_kandinsky3(folder: Path) -> None:
    from diffusers import DDPMScheduler, Kandinsky3Pipeline

    # The scheduler of diffusers' kandinsky-community/kandinsky-3 repo (squaredcos_cap_v2, leading spacing).
    scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=True, clip_sample_range=1.0,
                              thresholding=False, timestep_spacing="leading", steps_offset=1, num_train_timesteps=1000,
                              variance_type="fixed_small")
    pipe = Kandinsky3Pipeline(tokenizer=build_tokenizer(128), text_encoder=build_t5_encoder(),
                              unet=build_kandinsky3_unet(), scheduler=scheduler, movq=build_movq())
    pipe.save_pretrained(folder)


def _build_tiny_sd(folder: Path) -> None:
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_tokenizer(77, bos=True)
    _seed(3)
    unet = UNet2DConditionModel(block_out_channels=(16, 32), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                norm_num_groups=8, attention_head_dim=4).eval()
    _seed(4)
    vae = AutoencoderKL(block_out_channels=(8, 16, 16, 16), in_channels=3, out_channels=3,
                        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                        latent_channels=4, norm_num_groups=8, layers_per_block=1, sample_size=64).eval()
    _seed(5)
    text_cfg = CLIPTextConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id, hidden_size=32, intermediate_size=64,
                              num_attention_heads=4, num_hidden_layers=2, vocab_size=len(tokenizer),
                              max_position_embeddings=77, projection_dim=32)
    text_encoder = CLIPTextModel(text_cfg).eval()
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder)


TINY_BUILDERS: dict[str, Callable[[Path], None]] = {
    "tiny-kandinsky3": _build_tiny_kandinsky3,
    "tiny-sd": _build_tiny_sd,
}


class TinyPipelineGenerator(DiffusersPipelineGenerator):
    """A tiny pipeline from `TINY_BUILDERS`, built into the cache on first use and loaded with from_pretrained."""

    offline: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {**DiffusersPipelineGenerator.defaults, "revision": None, "height": 64,
                                          "width": 64, "steps": 2, "guidance": 3.0, "tiny": None}

    def model_path(self) -> str:
        key = self.params.get("tiny") or self.name
        return str(tiny_folder(key, TINY_BUILDERS[key]))

    def weights_info(self) -> dict[str, Any]:
        return {"model": f"tiny:{self.params.get('tiny') or self.name}", "random_weights": True,
                "tiny_version": TINY_VERSION}


class TinyKandinsky3Generator(TinyPipelineGenerator):
    """diffusers' Kandinsky3Pipeline (DDPM, static clipping) on tiny Kandinsky3UNet + MoVQ + T5 components."""

    defaults: ClassVar[dict[str, Any]] = {**TinyPipelineGenerator.defaults, "pipeline_class": "Kandinsky3Pipeline",
                                          "tiny": "tiny-kandinsky3"}
    # Kandinsky3Pipeline rounds height and width up to multiples of 64 itself: round first, so the size is recorded
    size_multiple: ClassVar[int] = 64
    rounds_size: ClassVar[bool] = True
    size_reason: ClassVar[str] = " (MoVQ x8, U-Net x8)"

    def latent_shape(self) -> tuple[int, ...]:
        return (4, int(self.params["height"]) // 8, int(self.params["width"]) // 8)

    def text_limits(self) -> list[tuple[Any, int]]:
        return [(self.pipe.tokenizer, 128)]  # Kandinsky3Pipeline encodes at most 128 tokens


class TinySDGenerator(TinyPipelineGenerator):
    """diffusers' StableDiffusionPipeline (DDIM) on tiny UNet2DConditionModel + AutoencoderKL + CLIP text."""

    defaults: ClassVar[dict[str, Any]] = {**TinyPipelineGenerator.defaults, "pipeline_class": "StableDiffusionPipeline",
                                          "tiny": "tiny-sd", "guidance": 7.5}
