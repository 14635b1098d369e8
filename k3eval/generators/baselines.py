"""Baselines the Kandinsky 3 report and its readers compare against, as diffusers pipelines.

The catalog (`catalog/baselines.yaml`) holds each model card's defaults (hub id, pipeline class, steps, guidance,
resolution, scheduler); the classes here add what a family needs beyond one pipeline call:

- Stable Diffusion 1.5 / 2.1: the safety checker is a parameter (its blacked-out images would count as `black`);
  SD 1.5 ships one, SD 2.1 does not (its `model_index.json` has none), and run.json says whether one ran.
- SDXL: the optional refiner as an ensemble of expert denoisers (the base denoises the first `high_noise_frac` of
  the schedule, the refiner the rest), and an optional replacement VAE (the stock VAE overflows in fp16).
- Kandinsky 2.2: a prior pipeline (text -> CLIP image embedding) and a decoder pipeline; both get CPU-seeded noise.
- PixArt-alpha / -sigma: a transformer on T5 features; caption cleaning and resolution binning are off so the
  prompt is used as written and images come at the requested size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from k3eval.errors import UserError
from k3eval.generators.base import BOUNDS, GenRequest, check_bounds, torch_dtype
from k3eval.generators.diffusers_pipeline import (
    DiffusersPipelineGenerator,
    dtype_kwarg,
    quiet_hub_logging,
    step_generators,
    weights_not_found,
)
from k3eval.generators.hub import DEFAULT_REVISION
from k3eval.seeds import cpu_noise

#: offset of the prior's initial-noise stream from the image seed (Kandinsky 2.2), so it differs from the decoder's
PRIOR_NOISE_OFFSET = 0x9819


class StableDiffusionGenerator(DiffusersPipelineGenerator):
    """Stable Diffusion 1.x / 2.x; `safety_checker: false` loads the pipeline without the NSFW filter."""

    defaults: ClassVar[dict[str, Any]] = {**DiffusersPipelineGenerator.defaults,
                                          "pipeline_class": "StableDiffusionPipeline", "safety_checker": True}

    def load_kwargs(self) -> dict[str, Any]:
        if self.params["safety_checker"]:
            return {}
        return {"safety_checker": None, "requires_safety_checker": False}

    def load(self) -> None:
        super().load()
        if self.params["safety_checker"] and self.pipe.safety_checker is None:
            self.warn(f"{self.name}: safety_checker=true, but {self.params['model']} ships no safety checker; none ran")

    def weights_info(self) -> dict[str, Any]:
        info = super().weights_info()
        if self.pipe is not None:
            info["safety_checker_ran"] = self.pipe.safety_checker is not None
        return info


class SDXLGenerator(DiffusersPipelineGenerator):
    """SDXL base, with the refiner when `refiner: true` (ensemble of experts, split at `high_noise_frac`)."""

    defaults: ClassVar[dict[str, Any]] = {**DiffusersPipelineGenerator.defaults,
                                          "pipeline_class": "StableDiffusionXLPipeline", "refiner": False,
                                          "refiner_model": "stabilityai/stable-diffusion-xl-refiner-1.0",
                                          "refiner_revision": DEFAULT_REVISION, "high_noise_frac": 0.8, "vae": None,
                                          "vae_revision": DEFAULT_REVISION}

    refiner: Any = None

    def __init__(self, name: str, params: dict[str, Any], device: str = "cpu", dtype: str | None = None):
        super().__init__(name, params, device=device, dtype=dtype)
        frac = float(self.params["high_noise_frac"])
        if not 0.0 < frac < 1.0:
            raise UserError(f"parameter 'high_noise_frac' of '{self.name}' must be between 0 and 1, got {frac}")

    def load_kwargs(self) -> dict[str, Any]:
        if not self.params.get("vae"):
            return {}
        from diffusers import AutoencoderKL

        vae, revision = str(self.params["vae"]), self.params.get("vae_revision")
        try:
            model = AutoencoderKL.from_pretrained(vae, revision=revision, **{dtype_kwarg(): torch_dtype(self.dtype)})
        except (OSError, ValueError) as e:
            raise weights_not_found(vae, e, revision, "vae") from None
        self.record_source("vae", vae, revision, "config.json")
        return {"vae": model}

    def refiner_path(self) -> str:
        return str(self.params["refiner_model"])

    def load(self) -> None:
        super().load()
        if not self.params["refiner"]:
            return
        from diffusers import StableDiffusionXLImg2ImgPipeline

        path, revision = self.refiner_path(), self.params.get("refiner_revision")
        try:
            # The refiner shares the base's second text encoder and VAE (as the model card loads it).
            refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(
                path, text_encoder_2=self.pipe.text_encoder_2, vae=self.pipe.vae, revision=revision,
                **{dtype_kwarg(): torch_dtype(self.dtype)}, **({"variant": self.params["variant"]}
                                                               if self.params.get("variant") else {}))
        except (OSError, ValueError) as e:
            raise weights_not_found(path, e, revision, "refiner_model") from None
        self.record_source("refiner", path, revision, "model_index.json")
        self.refiner = refiner.to(self.device)
        self.refiner.set_progress_bar_config(disable=True)

    def run_pipeline(self, requests: Sequence[GenRequest]) -> np.ndarray:
        if self.refiner is None:
            return super().run_pipeline(requests)
        frac = float(self.params["high_noise_frac"])
        kwargs = self.call_kwargs(requests)
        gens = step_generators(requests)
        latents = self.pipe(**{**kwargs, "output_type": "latent"}, denoising_end=frac,
                            latents=self.initial_latents(requests), generator=gens).images
        refine = {k: v for k, v in kwargs.items() if k in ("prompt", "negative_prompt", "num_inference_steps",
                                                           "guidance_scale", "output_type")}
        out = self.refiner(**refine, image=latents, denoising_start=frac, generator=gens)
        return np.asarray(out.images, dtype=np.float32)

    def weights_info(self) -> dict[str, Any]:
        info = super().weights_info()
        if self.params["refiner"]:
            info["refiner"] = self.refiner_path()
        if self.params.get("vae"):
            info["vae"] = self.params["vae"]
        return info

    def close(self) -> None:
        self.refiner = None
        super().close()


class Kandinsky22Generator(DiffusersPipelineGenerator):
    """Kandinsky 2.2: KandinskyV22PriorPipeline (`prior_model`) then KandinskyV22Pipeline (`model`).

    The prior's guidance is 1.0 as on the model card and in the diffusers docs (the prior pipeline's own default is
    4.0); at 1.0 the prior runs unguided. The decoder rounds height and width up to multiples of 64."""

    defaults: ClassVar[dict[str, Any]] = {**DiffusersPipelineGenerator.defaults,
                                          "pipeline_class": "KandinskyV22Pipeline",
                                          "prior_model": "kandinsky-community/kandinsky-2-2-prior",
                                          "prior_revision": DEFAULT_REVISION, "prior_steps": 25,
                                          "prior_guidance": 1.0}
    size_multiple: ClassVar[int] = 64
    rounds_size: ClassVar[bool] = True
    size_reason: ClassVar[str] = " (the MoVQ decoder works on multiples of 64)"

    prior: Any = None

    def __init__(self, name: str, params: dict[str, Any], device: str = "cpu", dtype: str | None = None):
        super().__init__(name, params, device=device, dtype=dtype)
        check_bounds(name, self.params, {"prior_steps": BOUNDS["steps"]})

    def prior_path(self) -> str:
        return str(self.params["prior_model"])

    def load(self) -> None:
        super().load()
        quiet_hub_logging()
        from diffusers import KandinskyV22PriorPipeline

        path, revision = self.prior_path(), self.params.get("prior_revision")
        try:
            prior = KandinskyV22PriorPipeline.from_pretrained(path, revision=revision,
                                                              **{dtype_kwarg(): torch_dtype(self.dtype)})
        except (OSError, ValueError) as e:
            raise weights_not_found(path, e, revision, "prior_model") from None
        self.record_source("prior", path, revision, "model_index.json")
        self.prior = prior.to(self.device)
        self.prior.set_progress_bar_config(disable=True)

    def text_limits(self) -> list[tuple[Any, int]]:
        # the prompt reaches only the prior's CLIP text encoder
        tok = self.prior.tokenizer
        return [(tok, int(tok.model_max_length))]

    def latent_shape(self) -> tuple[int, ...]:
        # Height and width are multiples of 64 (rounded in __init__); the decoder's latents are 8x smaller.
        factor = 2 ** (len(self.pipe.movq.config.block_out_channels) - 1)
        h, w = (int(self.params[k]) for k in ("height", "width"))
        return (self.pipe.unet.config.in_channels, h // factor, w // factor)

    def run_pipeline(self, requests: Sequence[GenRequest]) -> np.ndarray:
        import torch

        p = self.params
        negative = [r.negative_prompt or p.get("negative_prompt") for r in requests]
        prior_requests = list(requests)
        prior_kwargs: dict[str, Any] = {}
        if any(negative):
            # The prior embeds the negative prompts in the same batch, after the prompts: they get their own noise.
            prior_kwargs["negative_prompt"] = [n or "" for n in negative]
            prior_requests += [GenRequest(r.prompt_id, r.prompt, r.sample, (r.seed + 1) % 2**63) for r in requests]
        dim = self.prior.prior.config.embedding_dim
        prior_latents = torch.stack([cpu_noise((r.seed + PRIOR_NOISE_OFFSET) % 2**63, (dim,))
                                     for r in prior_requests]).to(self.device, torch_dtype(self.dtype))
        embeds = self.prior(prompt=[r.prompt for r in requests], num_inference_steps=int(p["prior_steps"]),
                            guidance_scale=float(p["prior_guidance"]), latents=prior_latents,
                            generator=step_generators(prior_requests), output_type="pt", **prior_kwargs)
        out = self.pipe(image_embeds=embeds.image_embeds, negative_image_embeds=embeds.negative_image_embeds,
                        height=int(p["height"]), width=int(p["width"]), num_inference_steps=int(p["steps"]),
                        guidance_scale=float(p["guidance"]), latents=self.initial_latents(requests),
                        generator=step_generators(requests), output_type="np")
        return np.asarray(out.images, dtype=np.float32)

    def weights_info(self) -> dict[str, Any]:
        return {**super().weights_info(), "prior": self.prior_path()}

    def close(self) -> None:
        self.prior = None
        super().close()


class PixArtGenerator(DiffusersPipelineGenerator):
    """PixArt-alpha / PixArt-sigma (set `pipeline_class`); T5 features up to `max_sequence_length` tokens."""

    defaults: ClassVar[dict[str, Any]] = {**DiffusersPipelineGenerator.defaults,
                                          "pipeline_class": "PixArtAlphaPipeline", "max_sequence_length": 120}
    #: the T5 tokenizers' own limit; the context (and attention memory) grows with it
    MAX_SEQUENCE_LENGTH = 512

    def __init__(self, name: str, params: dict[str, Any], device: str = "cpu", dtype: str | None = None):
        super().__init__(name, params, device=device, dtype=dtype)
        check_bounds(name, self.params, {"max_sequence_length": (1, self.MAX_SEQUENCE_LENGTH)})

    def text_limits(self) -> list[tuple[Any, int]]:
        return [(self.pipe.tokenizer, int(self.params["max_sequence_length"]))]

    def call_kwargs(self, requests: Sequence[GenRequest]) -> dict[str, Any]:
        # Caption cleaning needs extra packages and changes the prompt; binning would change the output size.
        return {**super().call_kwargs(requests), "clean_caption": False, "use_resolution_binning": False,
                "max_sequence_length": int(self.params["max_sequence_length"])}
