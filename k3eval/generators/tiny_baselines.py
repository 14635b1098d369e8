"""Offline counterparts of the baselines: each family's real pipeline classes at tiny sizes, seeded random weights.

Like `k3eval.generators.tiny`, each is built once into `$K3EVAL_CACHE/tiny/<name>-<version>` with `save_pretrained`
and loaded with `from_pretrained` through the same generator class as the real baseline, so tests cover the code
path of each family: `tiny-sdxl` (two text encoders, size/crop conditioning, the refiner split), `tiny-kandinsky22`
(prior + decoder), `tiny-pixart` (transformer + T5).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from k3eval.generators.baselines import Kandinsky22Generator, PixArtGenerator, SDXLGenerator
from k3eval.generators.tiny import TINY_VERSION, build_movq, build_t5_encoder, build_tokenizer, tiny_folder


def _seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def _clip_text_config(tokenizer, hidden: int, projection: int, layers: int = 2):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id, hidden_size=hidden, intermediate_size=2 * hidden,
                          num_attention_heads=4, num_hidden_layers=layers, vocab_size=len(tokenizer),
                          max_position_embeddings=77, projection_dim=projection)


def _small_vae(seed: int):
    from diffusers import AutoencoderKL

    _seed(seed)
    return AutoencoderKL(block_out_channels=(8, 16, 16, 16), in_channels=3, out_channels=3,
                         down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                         latent_channels=4, norm_num_groups=8, layers_per_block=1, sample_size=64).eval()


def _build_tiny_sdxl(folder: Path) -> None:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = build_tokenizer(77, bos=True)
    _seed(10)
    text_encoder = CLIPTextModel(_clip_text_config(tokenizer, 16, 16)).eval()
    _seed(11)
    text_encoder_2 = CLIPTextModelWithProjection(_clip_text_config(tokenizer, 32, 24)).eval()
    _seed(12)
    # SDXL's U-Net: cross-attention over both encoders' hidden states (16 + 32), added conditioning from the
    # pooled projection (24) and six size/crop numbers embedded with 8 channels each (6 * 8 + 24 = 72).
    unet = UNet2DConditionModel(block_out_channels=(16, 32), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=48,
                                norm_num_groups=8, attention_head_dim=(2, 4), use_linear_projection=True,
                                addition_embed_type="text_time", addition_time_embed_dim=8,
                                projection_class_embeddings_input_dim=72, transformer_layers_per_block=(1, 2)).eval()
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=_small_vae(13), text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler,
                                     force_zeros_for_empty_prompt=True)
    pipe.save_pretrained(folder)


def _build_tiny_kandinsky22(folder: Path) -> None:
    from diffusers import (
        DDPMScheduler,
        KandinskyV22Pipeline,
        KandinskyV22PriorPipeline,
        PriorTransformer,
        UnCLIPScheduler,
        UNet2DConditionModel,
    )
    from transformers import (
        CLIPImageProcessor,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    embed = 32  # CLIP image-embedding size: the prior's output, the decoder's condition
    tokenizer = build_tokenizer(77, bos=True)
    _seed(20)
    text_encoder = CLIPTextModelWithProjection(_clip_text_config(tokenizer, embed, embed)).eval()
    _seed(21)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=embed, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, image_size=32,
        patch_size=8, projection_dim=embed)).eval()
    _seed(22)
    prior = PriorTransformer(num_attention_heads=2, attention_head_dim=8, num_layers=1, embedding_dim=embed,
                             num_embeddings=77).eval()
    # Kandinsky 2.2 prior scheduler: UnCLIP, predicts the sample, clipped to +-10.
    prior_scheduler = UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample",
                                      num_train_timesteps=1000, clip_sample=True, clip_sample_range=10.0)
    processor = CLIPImageProcessor(crop_size=32, size={"shortest_edge": 32})
    KandinskyV22PriorPipeline(prior=prior, image_encoder=image_encoder, text_encoder=text_encoder,
                              tokenizer=tokenizer, scheduler=prior_scheduler,
                              image_processor=processor).save_pretrained(folder / "prior")
    _seed(23)
    # The decoder U-Net is conditioned on the image embedding only (no text): added to the time embedding and
    # projected into cross-attention tokens; it predicts noise and variance (8 output channels).
    unet = UNet2DConditionModel(in_channels=4, out_channels=8, addition_embed_type="image",
                                down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
                                up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
                                mid_block_type="UNetMidBlock2DSimpleCrossAttn", block_out_channels=(16, 32),
                                layers_per_block=1, encoder_hid_dim=embed, encoder_hid_dim_type="image_proj",
                                cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
                                resnet_time_scale_shift="scale_shift", class_embed_type=None).eval()
    scheduler = DDPMScheduler(beta_schedule="linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              num_train_timesteps=1000, prediction_type="epsilon", steps_offset=1,
                              variance_type="learned_range", thresholding=False)
    KandinskyV22Pipeline(unet=unet, scheduler=scheduler, movq=build_movq()).save_pretrained(folder / "decoder")


def _build_tiny_pixart(folder: Path) -> None:
    from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel

    text_dim = 32
    _seed(30)
    transformer = PixArtTransformer2DModel(sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8,
                                           num_attention_heads=3, caption_channels=text_dim, in_channels=4,
                                           cross_attention_dim=24, out_channels=8, attention_bias=True,
                                           activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
                                           norm_type="ada_norm_single", norm_elementwise_affine=False,
                                           norm_eps=1e-6).eval()
    scheduler = DPMSolverMultistepScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
                                            num_train_timesteps=1000, prediction_type="epsilon")
    pipe = PixArtAlphaPipeline(tokenizer=build_tokenizer(128), text_encoder=build_t5_encoder(d_model=text_dim),
                               vae=_small_vae(31), transformer=transformer, scheduler=scheduler)
    pipe.save_pretrained(folder)


TINY_BASELINE_BUILDERS: dict[str, Callable[[Path], None]] = {
    "tiny-sdxl": _build_tiny_sdxl,
    "tiny-kandinsky22": _build_tiny_kandinsky22,
    "tiny-pixart": _build_tiny_pixart,
}

_TINY = {"height": 64, "width": 64, "steps": 2, "tiny": None, "revision": None}


class _TinyMixin:
    """Resolve the model to the cached tiny folder (built on first use) instead of a hub id."""

    offline: ClassVar[bool] = True
    tiny_key: ClassVar[str] = ""
    params: dict[str, Any]

    def tiny_path(self) -> Path:
        key = self.params.get("tiny") or self.tiny_key
        return tiny_folder(key, TINY_BASELINE_BUILDERS[key])

    def model_path(self) -> str:
        return str(self.tiny_path())

    def weights_info(self) -> dict[str, Any]:
        return {"model": f"tiny:{self.params.get('tiny') or self.tiny_key}", "random_weights": True,
                "tiny_version": TINY_VERSION}


class TinySDXLGenerator(_TinyMixin, SDXLGenerator):
    """StableDiffusionXLPipeline on tiny components; `refiner: true` reloads the same folder as the img2img refiner
    (the real refiner is another model; the tiny one exercises the ensemble-of-experts split)."""

    tiny_key: ClassVar[str] = "tiny-sdxl"
    defaults: ClassVar[dict[str, Any]] = {**SDXLGenerator.defaults, **_TINY, "guidance": 5.0,
                                          "refiner_revision": None, "vae_revision": None}

    def refiner_path(self) -> str:
        return str(self.tiny_path())


class TinyKandinsky22Generator(_TinyMixin, Kandinsky22Generator):
    """KandinskyV22PriorPipeline + KandinskyV22Pipeline on tiny CLIP, PriorTransformer, U-Net and MoVQ."""

    tiny_key: ClassVar[str] = "tiny-kandinsky22"
    defaults: ClassVar[dict[str, Any]] = {**Kandinsky22Generator.defaults, **_TINY, "guidance": 4.0,
                                          "prior_revision": None, "prior_steps": 2}

    def model_path(self) -> str:
        return str(self.tiny_path() / "decoder")

    def prior_path(self) -> str:
        return str(self.tiny_path() / "prior")


class TinyPixArtGenerator(_TinyMixin, PixArtGenerator):
    """PixArtAlphaPipeline (or `pipeline_class: PixArtSigmaPipeline`) on a tiny PixArt transformer and T5."""

    tiny_key: ClassVar[str] = "tiny-pixart"
    defaults: ClassVar[dict[str, Any]] = {**PixArtGenerator.defaults, **_TINY, "guidance": 4.5}
